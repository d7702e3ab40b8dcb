#!/usr/bin/env bash
# The cell, training and instrument benchmarks on a GPU, as one script of under five minutes.
# Run from the repository root with a CUDA build of JAX installed (pip install -e ".[cuda]").
# Each benchmark prints ratios against baselines measured in the same run; the output of this
# script is what benchmarks/README.md records beside the CPU figures.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several processes share the card in turn

"$PY" - <<'PY'
import jax
devs = jax.devices()
print("devices:", devs)
if devs[0].platform != "gpu":
    raise SystemExit("benchmarks/gpu.sh: no GPU visible to JAX (install gatezoo[cuda])")
PY

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

t0=$SECONDS
echo "== cells: one jitted train step, gatezoo vs Flax's own cells (T = 100, 1000) =="
timeout 120 "$PY" benchmarks/cells.py --no-torch --rounds 7
echo "== training: vmapped seeds vs one seed; compiled K-step loop vs Python loop =="
timeout 90 "$PY" benchmarks/training.py --seeds 1,8,32,128 --repeats 3
echo "== instruments: overhead ratios at the paper's sizes and hidden 128, T = 1000 =="
timeout 90 "$PY" benchmarks/instruments.py --repeats 5
echo "== total: $((SECONDS - t0)) s =="

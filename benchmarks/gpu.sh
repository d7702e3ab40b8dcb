#!/usr/bin/env bash
# The reproduction, instrument, training and cell benchmarks on a GPU, as one script of under
# ten minutes (one device call).
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

# One device call may run 10 minutes: the parts run in order of the goals they check, each
# under its own timeout; a part that runs out is reported and the script goes on.
part() {  # part SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo "== $title =="
  timeout "$limit" "$@" || echo "== $title: stopped (exit $?, limit ${limit} s) =="
}
t0=$SECONDS
part 330 "reproduce all --seeds 20 (goal: <= 5 min)" "$PY" benchmarks/reproduce.py --seeds 20
part 75 "instruments at the paper's sizes (goal: expansion within 1.15x of its floor)" \
  "$PY" benchmarks/instruments.py --cells vector,scalar,gru,lstm --sizes 64x80,64x120 --no-probes
part 60 "training: 32 seeds side by side (goal: >= 8x the per-seed throughput of one)" \
  "$PY" benchmarks/training.py --seeds 1,8,32,128 --repeats 3
part 45 "cells and scans: gatezoo vs Flax; associative vs sequential at T = 1024, 4096" \
  "$PY" benchmarks/cells.py --no-torch --rounds 5
echo "== total: $((SECONDS - t0)) s =="

#!/usr/bin/env bash
# Build the documentation site offline, warnings as errors:  bash docs/build.sh
# Uses $PYTHON if set, else the python on PATH. Extra arguments go to sphinx-build.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
cd "$HERE/.."
rm -rf docs/_build docs/jupyter_execute
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
"$PY" -m sphinx -W --keep-going -b html docs docs/_build/html "$@"

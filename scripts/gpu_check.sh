#!/usr/bin/env bash
# One-GPU check of sharded training (FSDP2, bf16-mixed) on the tiny model. The fits take ~10 s on
# a 2-core CPU (dry run); on a GPU expect well under a minute plus imports and CUDA start-up (not
# yet measured). Prints one PASS/FAIL line per property; the exit status is 0 iff every property
# passed. Arguments go to scripts/gpu_check.py, e.g.
#   bash scripts/gpu_check.sh                                  # the GPU check
#   bash scripts/gpu_check.sh --accelerator cpu --devices 1    # dry run of the same logic on CPU
# Python: $PYTHON if set; else the first of .venv/bin/python, python3, python whose torch sees a
# CUDA device; else the first of them that has torch (enough for the CPU dry run).
# Installs the package (pip install -e .) only if it cannot be imported; torch is never
# installed or upgraded here (pinned to the installed version while pip runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
else
  PY=""
  for candidate in .venv/bin/python python3 python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
      PY=$candidate; break
    fi
    if [ -z "$PY" ] && "$candidate" -c "import torch" >/dev/null 2>&1; then PY=$candidate; fi
  done
  PY=${PY:-python3}
fi

if ! TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "gpu_check: torch is not installed for $PY. Install a CUDA build of torch first" \
       "(the Makefile's TORCH_SPEC: make setup TORCH_SPEC=\"torch==... --index-url ...\")." >&2
  exit 2
fi
"$PY" -c "import torch; print(f'gpu_check: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"

# run from the repository root, so that an uninstalled source tree imports too
if ! "$PY" -c "import lit_scsdpo" >/dev/null 2>&1; then
  echo "gpu_check: lit_scsdpo does not import; installing it (pip install -e ., torch==$TORCH_VERSION kept)"
  CONSTRAINTS=$(mktemp)
  trap 'rm -f "$CONSTRAINTS"' EXIT
  echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
  "$PY" -m pip install --quiet -c "$CONSTRAINTS" -e .
fi

start=$SECONDS
status=0
"$PY" scripts/gpu_check.py "$@" || status=$?
echo "gpu_check: exit status $status after $((SECONDS - start)) s"
exit $status

#!/usr/bin/env bash
# Table I, CIFAR-10, paper profile, on one CUDA GPU in a fixed slot (default 9 minutes).
#
#   HASHCONDENSE_DATA=/path/to/datasets bash benchmarks/gpu_table1.sh OUT_DIR [MINUTES] [WHEELS]
#
# Runs `hashcondense bench table1 --profile paper --datasets cifar10` (every condenser, ipc
# 1/10/50, 32 and 64 bits, seed 0) from this checkout without installing it (PYTHONPATH=src).
# The paper's condensation budgets take hours even on a GPU, so each condensation is capped at
# CAP seconds (env, default 15); the cap is part of every cell's budget. The grid is resumable:
# rerun with the same OUT_DIR (and CAP) to continue where the slot ended. Needs torch with CUDA plus numpy,
# pillow, safetensors, tqdm and pyyaml; a machine without network can install them from a
# folder of wheels (third argument). Results: OUT_DIR/results.jsonl, run.json, report.md/html.
set -euo pipefail
out=${1:?usage: gpu_table1.sh OUT_DIR [MINUTES] [WHEELS_DIR]}
minutes=${2:-9}
wheels=${3:-}
here="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
missing=$(python3 - <<'PY'
import importlib.util
mods = {"numpy": "numpy", "PIL": "pillow", "safetensors": "safetensors", "tqdm": "tqdm",
        "yaml": "pyyaml", "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -n "$wheels" ]; then
    python3 -m pip install -q --no-index --find-links "$wheels" $missing
  else
    echo "gpu_table1.sh: missing python packages: $missing (pass a wheels folder)" >&2
    [[ "$missing" == "matplotlib" ]] || exit 2   # the report's figures are optional
  fi
fi
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_table1.sh: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
[ "$minutes" -ge 3 ] || { echo "gpu_table1.sh: MINUTES must be >= 3" >&2; exit 2; }
slot=$((minutes * 60))
# A fixed cap (not derived from the slot) keeps every cell's identity the same across slots of
# any length, so reruns with the same OUT_DIR resume instead of starting a new grid.
cap=${CAP:-15}
start=$(date +%s)
rc=0
timeout -k 30 --signal=INT $((slot - 30)) python3 -m hashcondense -v bench table1 \
  --profile paper --datasets cifar10 --max-condense-seconds "$cap" --out "$out" \
  --cache-dir "$out/synthetic" --quiet --no-report || rc=$?
case $rc in
  0) ;;
  124|130|137) echo "gpu_table1.sh: stopped at the slot's end; rerun with the same OUT_DIR to resume" ;;
  *) echo "gpu_table1.sh: the grid failed (exit $rc)" >&2; exit "$rc" ;;
esac
python3 -m hashcondense report "$out" || true
echo "gpu_table1.sh: $(( $(date +%s) - start )) s; results in $out"

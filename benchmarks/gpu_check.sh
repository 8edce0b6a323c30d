#!/usr/bin/env bash
# The GPU checks in one call (a lent GPU machine's time is short): the CUDA tests, the MNIST
# time-to-accuracy sweep and the Fashion-MNIST `--preset best` wall time. Results go to $OUT
# (default /tmp/gpu-check): logs, JSON, and BENCHMARKS.md with the new sections written in.
# STEPS=hanzi (not in the default steps: it needs a call of its own, up to HANZI_TIMEOUT s)
# runs benchmarks/hanzi.py there: the default `imrec train hanzi` timed as a whole process
# (issue 13's goal: <= 3 min on one GPU), its zero-shot Chinese MNIST and the fine-tuning.
#
# Usage: IMREC_DATA_MIRROR=/path/to/data [STEPS="tests sweep"] bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export IMREC_DATA_MIRROR=${IMREC_DATA_MIRROR:-$PWD/../shared/data}
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/gpu.txt"
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
STEPS=${STEPS:-tests sweep fashion}
[[ $STEPS == *tests* ]] && timeout "${TEST_TIMEOUT:-180}" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/pytest.log"
[[ $STEPS == *sweep* ]] && timeout "${SWEEP_TIMEOUT:-300}" "$PY" benchmarks/time_to_accuracy.py --plan gpu --device cuda \
  --budget "${SWEEP_BUDGET:-150}" --json "$OUT/tta_gpu.json" --md "$OUT/BENCHMARKS.md" 2>&1 | tee "$OUT/tta_gpu.log"
[[ $STEPS == *fashion* ]] && timeout "${FASHION_TIMEOUT:-150}" "$PY" benchmarks/time_to_accuracy.py --plan fashion --device cuda \
  --budget "${FASHION_BUDGET:-40}" --json "$OUT/tta_fashion.json" --md "$OUT/BENCHMARKS.md" 2>&1 | tee "$OUT/fashion.log"
if [[ $STEPS == *hanzi* ]]; then
  # The default run, zero-shot Chinese MNIST and the README's fine-tuning, each a whole
  # process on the GPU (benchmarks/hanzi.py; held-out fonts and the export are CPU matters).
  timeout "${HANZI_TIMEOUT:-480}" "$PY" benchmarks/hanzi.py --work "${HANZI_WORK:-$OUT/hanzi}" \
    --skip "${HANZI_SKIP:-held-out,export}" > "$OUT/hanzi.log" 2>&1
  echo "benchmarks/hanzi.py on the GPU: exit $?" | tee -a "$OUT/hanzi.log"
fi

#!/usr/bin/env bash
# The issue-9 GPU check: a preset on MNIST with the probe, for as long as one device lease allows (15 minutes of
# device time, one call of at most 10 minutes). Run from the repository root with the MNIST and Fashion-MNIST .gz
# files under ./data; writes what comes back into $OUT (at most 8 files).
#   usage: OUT=<folder> bash results/gpu/run.sh [training minutes] [device] [preset] [more cebm.py flags]
#   e.g.   OUT=out bash results/gpu/run.sh 7 cuda                              (--preset paper, Appendix D)
#          OUT=out bash results/gpu/run.sh 2.5 cuda cpu-long --arch code       (the CPU recipe, as results/long)
set -u
export PYTHONUNBUFFERED=1
MIN=${1:-7}
DEV=${2:-cuda}
PRESET=${3:-paper}
RUN=runs/gpu_${PRESET}_mnist
mkdir -p "$OUT"
LOG="$OUT/train.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  lscpu | grep 'Model name'; nproc
  python3 -c "import sys, torch, torchvision, sklearn; print('python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'sklearn', sklearn.__version__)"
  echo "flags: --preset $PRESET --max-minutes $MIN ${*:4}"
} > "$LOG" 2>&1
start=$(date +%s)
timeout 520 python3 cebm.py --dataset mnist --preset "$PRESET" --probe-every 250 --max-minutes "$MIN" \
    --data-dir data --device "$DEV" --no-progress --out-dir "$RUN" "${@:4}" >> "$LOG" 2>&1
echo "training rc=$? wall=$(( $(date +%s) - start )) s" >> "$LOG"
cp "$RUN"/probe.csv "$RUN"/probe.png "$RUN"/metrics.csv "$RUN"/config.json "$OUT"/ 2>> "$LOG"
[ "$PRESET" = paper ] || cp "$RUN"/best.pt "$OUT"/ 2>> "$LOG"   # the probe's pick (weights only)
timeout 25 python3 cebm.py --out-dir "$RUN" --export "$OUT/weights.pt" >> "$LOG" 2>&1
timeout 30 python3 cebm.py --out-dir "$RUN" --sample --device "$DEV" >> "$LOG" 2>&1 && cp "$RUN"/samples_500steps.png "$OUT"/
echo "done wall=$(( $(date +%s) - start )) s" >> "$LOG"
tail -n 25 "$LOG"

#!/usr/bin/env bash
# Copy what results/long ships out of each finished run folder: weights only (no optimizer or buffer),
# probe.csv/png, metrics.csv, config.json, and a 500-step --sample grid of each energy model; then evaluate.
#   bash results/long/ship.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data}
for run in runs/long/*/; do
  name=$(basename "$run"); dest=results/long/$name
  [ -f "$run/ckpt.pt" ] || continue
  mkdir -p "$dest"
  python cebm.py --export "$dest/weights.pt" --out-dir "$run"
  cp "$run"/{probe.csv,probe.png,metrics.csv,config.json} "$dest/"
  [ -f "$run/best.pt" ] && cp "$run/best.pt" "$dest/best.pt"   # the probe's best model (weights only)
  case $name in
    cebm-*) python cebm.py --sample --out-dir "$dest" ;;
    igebm_*) python baselines.py --model igebm --sample --out-dir "$dest" ;;
  esac
done
python evaluate.py results/long/*/weights.pt --data-dir "$data" --out-dir results/long/eval --no-progress \
  --ood-k 16 --command "bash results/long/ship.sh $data"

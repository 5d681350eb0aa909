#!/usr/bin/env bash
# Copy what results/long ships out of each finished run folder: weights only (no optimizer or buffer),
# probe.csv/png, metrics.csv, config.json, the probe's best model (best.pt, weights only) and a 500-step --sample
# grid of each energy model's final weights; then evaluate.py on each run's best.pt (the model the probe chose on
# held-out *training* images; no test image chose it): full test sets for few-shot and 1-NN, 2,000 images per
# OOD set (the VAE's importance-sampled scores cost ~0.1 s per image here). Few-shot at 1, 10 and 100 labels per
# class in the report; the 'full' column (liblinear one-vs-rest on all 60,000 training images) had not finished
# its first fit, the raw pixels, after 10 CPU minutes here, so full_column.py fits it on the models' latents only
# (under a minute each) into eval/full_<dataset>.md.
#   bash results/long/ship.sh [DATA_DIR [DATASET]]     (default: ../shared/data, both; one report per dataset)
#   SKIP_COPY=1 bash results/long/ship.sh ...           (only the evaluation, of what is already copied)
#   SKIP_EVAL=1 bash results/long/ship.sh ...           (only the copy: a continued run whose best.pt is unchanged)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data}
datasets=${2:-"fashionmnist mnist"}
for ds in $datasets; do
[ "${SKIP_COPY:-0}" = 1 ] || for run in runs/long/*_$ds/; do
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
[ "${SKIP_EVAL:-0}" = 1 ] && continue
python evaluate.py results/long/*_$ds/best.pt --data-dir "$data" --out-dir results/long/eval/$ds --no-progress \
  --shots 1,10,100 --ood-n 2000 --ood-k 16 --command "bash results/long/ship.sh $data $ds"
python results/long/full_column.py results/long/*_$ds/best.pt --data-dir "$data" --out results/long/eval/full_$ds.md
done

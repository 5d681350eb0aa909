#!/bin/bash
# The thirteenth session's screen for the early catch on the energy L2's bound (results/recipe/README.md):
# seeds 4 and 6 of the MNIST recipe (--arch code --energy-reg 0.2 --lr-half-life 5000 --ema 0.999), 400
# iterations each, no probe, with the flags given after the name. Prints E_data - E_model every 100 iterations
# and copies metrics.csv here as <name>_s<seed>.csv.  Usage: bash results/recipe/screen_catch/run.sh <name> [flags]
# (SEEDS="4 6 11" bash ... for other seeds)
# e.g.  bash results/recipe/screen_catch/run.sh reg0.1 --energy-reg 0.1
set -e
name=$1; shift
here=$(dirname "$0")
mkdir -p runs/screen
for s in ${SEEDS:-4 6}; do
  out=runs/screen/${name}_s$s
  OMP_NUM_THREADS=1 python cebm.py --dataset mnist --data-dir ../shared/data --preset cpu-long --arch code \
    --energy-reg 0.2 --lr-half-life 5000 --ema 0.999 --seed $s --probe-every 0 --iters 400 --max-minutes 0 \
    --no-stop-at-paper "$@" --out-dir $out --no-progress > $out.log 2>&1
  cp $out/metrics.csv "$here/${name}_s$s.csv"
  echo "$name s$s $(awk -F, 'NR>1 && $1%100==0{printf "%s:%.2f ", $1,$4}' $out/metrics.csv)"
done

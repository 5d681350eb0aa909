#!/usr/bin/env bash
# The long CPU runs of results/long, one after another, each resumable (re-run this script to continue).
#   bash results/long/train.sh [DATA_DIR [MINUTES]]     (defaults ../shared/data, 180)
# CEBMs: --preset cpu-long (the Gaussian ones with --arch code and a stronger energy L2, see results/recipe), i.e. until the probe meets the
# paper's Table 1 row or MINUTES of training (the preset's 180 unless given; a later call with a larger MINUTES
# continues a run that stopped on it).
# VAEs and the IGEBM: the same preset with the wall-clock budget the Gaussian CEBM of their dataset used.
# Fashion-MNIST first: it carries the OOD comparison (CEBM, IGEBM and VAE against MNIST).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data}
minutes=${2:-180}
common=(--data-dir "$data" --preset cpu-long --resume --no-progress)
for ds in fashionmnist mnist; do
  for bias in gaussian gmm; do
    # The Gaussian CEBMs: the code's widths (faster; the GMM failed with them) and the study's energy L2 per dataset
    # (0.2 on MNIST, 0.3 on Fashion-MNIST; results/recipe, ninth session); the GMM-CEBMs: Table 2's widths, the paper's L2.
    arch=code; reg=0.2; [ $ds = fashionmnist ] && reg=0.3
    if [ $bias = gmm ]; then arch=paper; reg=0.1; fi
    python cebm.py --dataset $ds --bias $bias --arch $arch --energy-reg $reg "${common[@]}" --max-minutes "$minutes" \
      --out-dir runs/long/cebm-${bias}_$ds
  done
  # The CEBM's training minutes on this dataset are the baselines' budget.
  cebm_minutes=$(python -c "import cebm; print(cebm.load_checkpoint('runs/long/cebm-gaussian_$ds')['seconds'] / 60)")
  models="vae"; [ $ds = fashionmnist ] && models="vae igebm"
  for model in $models; do
    python baselines.py --model $model --dataset $ds "${common[@]}" --no-stop-at-paper --max-minutes "$cebm_minutes" \
      --probe-every 2000 --out-dir runs/long/${model}_$ds   # their iterations are cheap: probe less often
  done
done

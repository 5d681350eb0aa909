#!/usr/bin/env bash
# Train every model on every dataset and seed, then build the paper's tables with evaluate.py.
#
#   bash run_all.sh                                      # the paper's settings, four datasets (one GPU, weeks)
#   bash run_all.sh --quick --data-dir ../shared/data    # CPU preset, MNIST + Fashion-MNIST (~1.5 h, 2 cores)
#
# Options: --quick, --data-dir DIR, --seeds "0 1 2", --runs-dir DIR, --out-dir DIR (default: runs/report_quick
# or runs/report_paper; the shipped results/ are never overwritten unless named), --device DEV.
# Re-running skips finished runs and resumes interrupted ones (every run is started with --resume). A run that
# fails does not stop the others; the failures are listed at the end and the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")"

quick=0
data_dir=./data
seeds="0"
runs_dir=runs
out=""
device=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift; continue ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --data-dir|--seeds|--runs-dir|--out|--out-dir|--device)
      if [ $# -lt 2 ] || [ -z "$2" ]; then echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; fi ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  case "$1" in
    --data-dir) data_dir="$2" ;;
    --seeds) seeds="$2" ;;
    --runs-dir) runs_dir="$2" ;;
    --out|--out-dir) out="$2" ;;
    --device) device=(--device "$2") ;;
  esac
  shift 2
done

if [ "$quick" = 1 ]; then
  preset=cpu; datasets="mnist fashionmnist"; out=${out:-runs/report_quick}
  eval_flags=(--ood-n 2000 --ood-k 16)
else
  preset=paper; datasets="mnist fashionmnist cifar10 svhn"; out=${out:-runs/report_paper}
  eval_flags=()
fi
python=${PYTHON:-python}
models="cebm-gaussian cebm-gmm vae gmmvae igebm bigan"
n_total=$(( $(echo $datasets | wc -w) * $(echo $models | wc -w) * $(echo $seeds | wc -w) ))
start=$(date +%s)
n=0
run_dirs=()
failed=()
for dataset in $datasets; do
  for seed in $seeds; do
    for model in $models; do
      n=$((n + 1))
      dir="$runs_dir/${model}_${dataset}_${preset}_s${seed}"
      common=(--dataset "$dataset" --data-dir "$data_dir" --preset "$preset" --seed "$seed"
              --out-dir "$dir" --resume --no-progress "${device[@]}")
      echo "[$n/$n_total] $model on $dataset (seed $seed) -> $dir  ($(( ($(date +%s) - start) / 60 )) min so far)"
      case "$model" in
        cebm-gaussian) cmd=("$python" cebm.py --bias gaussian "${common[@]}") ;;
        cebm-gmm) cmd=("$python" cebm.py --bias gmm "${common[@]}") ;;
        *) cmd=("$python" baselines.py --model "$model" "${common[@]}") ;;
      esac
      if "${cmd[@]}"; then run_dirs+=("$dir"); else failed+=("$model on $dataset (seed $seed): ${cmd[*]}"); fi
    done
  done
done
echo "training done in $(( ($(date +%s) - start) / 60 )) min; evaluating ${#run_dirs[@]} runs -> $out"
record="bash run_all.sh $( [ "$quick" = 1 ] && echo --quick ) --data-dir $data_dir --seeds \"$seeds\" --out-dir $out"
if [ ${#run_dirs[@]} -gt 0 ]; then
  "$python" evaluate.py "${run_dirs[@]}" --data-dir "$data_dir" --out-dir "$out" "${device[@]}" "${eval_flags[@]}" \
    --command "$record" || failed+=("evaluate.py")
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_all.sh: ${#failed[@]} step(s) failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all done in $(( ($(date +%s) - start) / 60 )) min: $out/report.md"

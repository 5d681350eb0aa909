#!/usr/bin/env bash
# run_all.sh --launcher slurm on the one-node cluster of setup.sh: a tiny digits grid (the --quick grid's six
# models, 20 iterations each), then a two-cell grid whose IGEBM cell fails on purpose. Writes what
# results/slurm/ ships: submit*.txt, squeue*.txt, sacct*.txt, eval*.txt and the grid's report.md.
#   bash results/slurm/setup.sh && bash results/slurm/demo.sh [grid] [fail]   (from the repository, venv active)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=results/slurm
slurm=(--launcher slurm --partition debug --time 30 --gpus-per-job 0 --cpus-per-job 1 --array-parallelism 2)

follow() {  # follow NAME: wait for the jobs that submit_NAME.txt names, keeping squeue snapshots, then sacct
  local ids; ids=$(sed -n 's/^watch: squeue -j \([0-9,]*\);.*/\1/p' "$here/submit_$1.txt")
  : > "$here/squeue_$1.txt"
  while squeue -h -j "$ids" 2>/dev/null | grep -q .; do
    { echo "--- $(date -u +%T)"; squeue -j "$ids"; } >> "$here/squeue_$1.txt"; sleep 10
  done
  sacct -j "$ids" --format=JobID%10,JobName,Partition,AllocCPUS,State,ExitCode,Elapsed > "$here/sacct_$1.txt"
  # the evaluation job's own output: evaluate.py's lines, and the failed cells if any
  cat "$2"/logs/submitit/"${ids#*,}"/*_log.out "$2"/logs/submitit/"${ids#*,}"/*_log.err \
    | grep -v '^submitit ' > "$here/eval_$1.txt"
}

parts=${*:-grid fail}

if [[ " $parts " == *" grid "* ]]; then
runs=runs/slurm_grid
rm -rf "$runs"
bash run_all.sh --quick --datasets digits --iters 20 --runs-dir "$runs" --out-dir "$runs/report" \
  --eval-args "--ood-k 4 --no-progress" "${slurm[@]}" | tee "$here/submit_grid.txt"
follow grid "$runs"
cp "$runs/report/report.md" "$here/report.md"
fi

# A cell that fails: the others are evaluated, the evaluation job lists it and exits 1.
if [[ " $parts " == *" fail "* ]]; then
runs=runs/slurm_fail
rm -rf "$runs"
fake=$(mktemp)
printf '#!/bin/sh\ncase "$*" in *"--model igebm"*) echo "this cell fails on purpose" >&2; exit 3 ;; esac\nexec python "$@"\n' \
  > "$fake"
chmod +x "$fake"
PYTHON=$fake bash run_all.sh --quick --datasets digits --models "cebm-gaussian igebm" --iters 2 --runs-dir "$runs" \
  --out-dir "$runs/report" --eval-args "--skip ood --draws 1 --no-progress" "${slurm[@]}" | tee "$here/submit_fail.txt"
follow fail "$runs"
rm -f "$fake"
fi

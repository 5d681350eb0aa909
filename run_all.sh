#!/usr/bin/env bash
# Train every model on every dataset and seed, then build the paper's tables with evaluate.py.
#
#   bash run_all.sh                                      # the paper's settings, four datasets (one GPU, weeks)
#   bash run_all.sh --quick --data-dir ../shared/data    # CPU preset, MNIST + Fashion-MNIST (~50 min, 2 cores)
#   bash run_all.sh --launcher local --gpus 0,1,2,3      # four cells at a time, one GPU each (needs submitit)
#   bash run_all.sh --launcher slurm --partition gpu --time 1440 --dry-run   # a Slurm job array; show it first
#
# The grid: --quick, --data-dir DIR, --seeds "0 1 2", --datasets "mnist svhn", --models "cebm-gaussian vae",
#   --iters N (every run), --runs-dir DIR, --device DEV, --eval-args "ARGS" (more evaluate.py flags), --out-dir DIR
#   (default: runs/report_quick or runs/report_paper; the shipped results/ are never overwritten unless named).
# Launchers (default: one run after another, here): --launcher local with --gpus 0,1 or --jobs N (on a CPU the
#   cores are split between the N runs); --launcher slurm with --partition P, --time MIN (per job), --gpus-per-job
#   G, --cpus-per-job C, --array-parallelism N. --dry-run prints what would run where. Logs: RUNS_DIR/logs/.
# Re-running skips finished runs and resumes interrupted ones (every run is started with --resume). A run that
# fails does not stop the others; the failures are listed at the end and the exit status is then 1.
set -euo pipefail
cd "$(dirname "$0")"
invocation="bash run_all.sh"   # and its arguments: recorded in the report as the command that made it
[ $# -eq 0 ] || invocation+=$(printf ' %q' "$@")

quick=0
data_dir=./data
seeds="0"
datasets=""
models="cebm-gaussian cebm-gmm vae gmmvae igebm bigan"
iters=()
eval_args=""
runs_dir=runs
out=""
device=()
launcher=sequential
launch_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift; continue ;;
    --dry-run) launch_flags+=(--dry-run); shift; continue ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --data-dir|--seeds|--datasets|--models|--iters|--eval-args|--runs-dir|--out|--out-dir|--device|--launcher|--jobs|--gpus|\
    --partition|--time|--gpus-per-job|--cpus-per-job|--array-parallelism)
      if [ $# -lt 2 ] || [ -z "$2" ]; then echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; fi ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  case "$1" in
    --data-dir) data_dir="$2" ;;
    --seeds) seeds="$2" ;;
    --datasets) datasets="$2" ;;
    --models) models="$2" ;;
    --iters) iters=(--iters "$2") ;;
    --eval-args) eval_args="$2" ;;
    --runs-dir) runs_dir="$2" ;;
    --out|--out-dir) out="$2" ;;
    --device) device=(--device "$2") ;;
    --launcher) launcher="$2" ;;
    *) launch_flags+=("$1" "$2") ;;   # the launcher's own flags, checked by it
  esac
  shift 2
done
case "$launcher" in
  sequential|local|slurm) ;;
  *) echo "run_all.sh: --launcher must be local or slurm, not '$launcher'" >&2; exit 2 ;;
esac
if [ "$launcher" = sequential ] && [ ${#launch_flags[@]} -gt 0 ]; then
  echo "run_all.sh: ${launch_flags[0]} needs --launcher local or slurm" >&2; exit 2
fi

if [ "$quick" = 1 ]; then
  preset=cpu; datasets=${datasets:-"mnist fashionmnist"}; out=${out:-runs/report_quick}
  # 'full' few-shot is left out: the paper's liblinear fit on all 60,000 raw-pixel training images had not
  # finished in 10 CPU minutes here (evaluate.py --shots 1,10,100,full measures it where time allows).
  eval_flags=(--ood-n 2000 --ood-k 16 --shots 1,10,100)
else
  preset=paper; datasets=${datasets:-"mnist fashionmnist cifar10 svhn"}; out=${out:-runs/report_paper}
  eval_flags=()
fi
python=${PYTHON:-python}
read -r -a more <<< "$eval_args"
eval_cmd=("$python" evaluate.py --data-dir "$data_dir" --out-dir "$out" "${device[@]}" "${eval_flags[@]}" "${more[@]}"
          --command "$invocation")   # the finished run folders go after evaluate.py

# The grid, built once for every launcher: one cell per (dataset, seed, model).
cell() {  # cell DATASET SEED MODEL: sets dir and cmd
  dir="$runs_dir/${3}_${1}_${preset}_s${2}"
  local common=(--dataset "$1" --data-dir "$data_dir" --preset "$preset" --seed "$2" "${iters[@]}"
                --out-dir "$dir" --resume --no-progress "${device[@]}")
  case "$3" in
    cebm-gaussian) cmd=("$python" cebm.py --bias gaussian "${common[@]}") ;;
    cebm-gmm) cmd=("$python" cebm.py --bias gmm "${common[@]}") ;;
    *) cmd=("$python" baselines.py --model "$3" "${common[@]}") ;;
  esac
}
grid=()
for dataset in $datasets; do
  for seed in $seeds; do
    for model in $models; do grid+=("$dataset $seed $model"); done
  done
done

if [ "$launcher" != sequential ]; then
  # One cell per line (run folder, then the command, shell-quoted) for the submitit launcher below.
  cells=$(mktemp)
  for c in "${grid[@]}"; do cell $c; printf '%s\t%s\n' "$dir" "$(printf '%q ' "${cmd[@]}")"; done > "$cells"
  exec "$python" - --launcher "$launcher" --cells "$cells" --logs "$runs_dir/logs" --evaluate "$(printf '%q ' "${eval_cmd[@]}")" \
    "${launch_flags[@]}" <<'PYTHON'
"""run_all.sh's parallel launchers, built on submitit: every grid cell is one job (its command started with
--resume, so a requeued job continues from its checkpoint); then evaluate.py on the cells that finished.
A cell's output goes to RUNS_DIR/logs/<run>.log and its exit status to RUNS_DIR/logs/<run>.status."""
import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


def fail(message, code=2):
    print(f"run_all.sh: {message}", file=sys.stderr)
    sys.exit(code)


class Cell:
    """One grid cell: runs its command, appending the output to its log, and records the exit status."""

    def __init__(self, run_dir, command, logs, threads=0):
        self.run_dir, self.command, self.threads = run_dir, command, threads
        self.log = Path(logs) / f"{Path(run_dir).name}.log"
        self.status_file = self.log.with_suffix(".status")

    def __call__(self):
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}))
        with open(self.log, "a") as log:
            rc = subprocess.run(self.command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        self.status_file.write_text(f"{rc}\n")
        if rc:
            raise RuntimeError(f"{self.run_dir} exited with status {rc}; see {self.log}")
        return self.run_dir

    def checkpoint(self, *args, **kwargs):
        # Preempted or out of time: submitit requeues the same cell, and --resume continues the run.
        import submitit
        return submitit.helpers.DelayedSubmission(self)

    def status(self):
        """The exit status, or None while the cell has not finished (or never started)."""
        return int(self.status_file.read_text()) if self.status_file.exists() else None


class Evaluation:
    """evaluate.py on every cell that finished; the others are listed, and then the exit status is 1."""

    def __init__(self, command, cells):
        self.command, self.cells = command, cells

    def __call__(self):
        done = [c for c in self.cells if c.status() == 0]
        failed = [c for c in self.cells if c.status() != 0]
        problems = [f"{c.run_dir}: " + ("did not finish" if c.status() is None else f"exit status {c.status()}")
                    + f" (log: {c.log})" for c in failed]
        if done:
            cmd = self.command[:2] + [c.run_dir for c in done] + self.command[2:]
            if subprocess.run(cmd).returncode:
                problems.append("evaluate.py failed")
        else:
            problems.append("no run finished: nothing to evaluate")
        if problems:
            print(f"run_all.sh: {len(problems)} step(s) failed:", *problems, sep="\n  ", file=sys.stderr)
            sys.exit(1)
        print(f"all {len(done)} runs finished and evaluated")


def import_submitit():
    try:
        import submitit
    except ImportError:
        fail("--launcher needs submitit: pip install submitit")
    return submitit


def launch_local(cells, evaluation, args):
    """N cells at a time on this machine, each on its own GPU, or with its share of the CPU cores."""
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else []
    slots = len(gpus) or args.jobs
    threads = 0 if gpus else max(1, (os.cpu_count() or 1) // slots)
    where = [f"GPU {g}" for g in gpus] or [f"CPU slot {k} ({threads} thread{'s' * (threads > 1)})" for k in range(slots)]
    if args.dry_run:
        print(f"local: {slots} cells at a time; each takes the next free one of: {', '.join(where)}")
        for i, c in enumerate(cells):
            print(f"  [{i + 1}/{len(cells)}] {shlex.join(c.command)}  > {c.log}")
        print(f"  then: {shlex.join(evaluation.command)} <finished run folders>")
        return
    submitit = import_submitit()
    executor = submitit.LocalExecutor(folder=Path(args.logs) / "submitit")
    pending, running = list(cells), {}
    while pending or running:
        for slot in [s for s in range(slots) if s not in running][:len(pending)]:
            cell = pending.pop(0)
            cell.threads = threads
            executor.update_parameters(timeout_min=args.time, gpus_per_node=1 if gpus else 0,
                                       visible_gpus=[gpus[slot]] if gpus else ())
            running[slot] = (cell, executor.submit(cell))
            print(f"started {cell.run_dir} on {where[slot]} (log: {cell.log})", flush=True)
        time.sleep(1)
        for slot, (cell, job) in list(running.items()):
            if job.done():
                del running[slot]
                print(f"{'finished' if cell.status() == 0 else 'FAILED'} {cell.run_dir}", flush=True)
    evaluation()


def launch_slurm(cells, evaluation, args):
    """A Slurm job array, one task per cell, and the evaluation as a job that waits for the whole array."""
    params = dict(timeout_min=args.time, gpus_per_node=args.gpus_per_job, cpus_per_task=args.cpus_per_job,
                  slurm_array_parallelism=args.array_parallelism, name="cebm-grid",
                  **({"slurm_partition": args.partition} if args.partition else {}))
    if args.dry_run:
        print("slurm: " + ", ".join(f"{k}={v}" for k, v in params.items()))
        for i, c in enumerate(cells):
            print(f"  array task {i}: {shlex.join(c.command)}  > {c.log}")
        print(f"  then, after the whole array (afterany): {shlex.join(evaluation.command)} <finished run folders>")
        return
    submitit = import_submitit()
    for c in cells:
        c.threads = args.cpus_per_job  # the job's share of its node
    executor = submitit.AutoExecutor(folder=Path(args.logs) / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(**params)
    with executor.batch():
        jobs = [executor.submit(c) for c in cells]
    array = jobs[0].job_id.split("_")[0]
    # afterany, not afterok: the evaluation runs on whatever finished and lists the cells that did not.
    executor.update_parameters(name="cebm-eval", slurm_additional_parameters={"dependency": f"afterany:{array}"})
    job = executor.submit(evaluation)
    print(f"submitted array {array} ({len(cells)} cells) and evaluation job {job.job_id} (after the array)")
    print(f"watch: squeue -j {array},{job.job_id}; cell logs in {args.logs}/; the evaluation's in "
          f"{args.logs}/submitit/{job.job_id}/")


def main(argv):
    p = argparse.ArgumentParser(prog="run_all.sh", allow_abbrev=False)
    p.add_argument("--launcher", choices=["local", "slurm"], required=True)
    p.add_argument("--cells", required=True)
    p.add_argument("--logs", required=True)
    p.add_argument("--evaluate", required=True)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--gpus", default="")
    p.add_argument("--partition", default="")
    p.add_argument("--time", type=int, default=1440)
    p.add_argument("--gpus-per-job", type=int, default=1)
    p.add_argument("--cpus-per-job", type=int, default=8)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if args.gpus and not all(g.strip().isdigit() for g in args.gpus.split(",")):
        fail(f"--gpus takes GPU numbers such as 0,1,2,3, not '{args.gpus}'")
    for name in ("jobs", "time", "cpus_per_job", "array_parallelism"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    if args.launcher == "slurm" and (args.jobs != 1 or args.gpus):
        fail("--jobs and --gpus are for --launcher local; Slurm takes --gpus-per-job and --array-parallelism")
    if not args.dry_run:
        import_submitit()  # before anything is written
    with open(args.cells) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    os.unlink(args.cells)  # a temporary file from run_all.sh
    cells = [Cell(run_dir, shlex.split(command), args.logs) for run_dir, command in rows]
    if not args.dry_run:
        os.makedirs(args.logs, exist_ok=True)
        for c in cells:  # a status left by an earlier launch says nothing about this one
            c.status_file.unlink(missing_ok=True)
    evaluation = Evaluation(shlex.split(args.evaluate), cells)
    (launch_local if args.launcher == "local" else launch_slurm)(cells, evaluation, args)


main(sys.argv[1:])
PYTHON
fi

# Sequential: one run after another, here.
start=$(date +%s)
run_dirs=()
failed=()
n=0
for c in "${grid[@]}"; do
  n=$((n + 1)); cell $c; set -- $c
  echo "[$n/${#grid[@]}] $3 on $1 (seed $2) -> $dir  ($(( ($(date +%s) - start) / 60 )) min so far)"
  if "${cmd[@]}"; then run_dirs+=("$dir"); else failed+=("$3 on $1 (seed $2): ${cmd[*]}"); fi
done
echo "training done in $(( ($(date +%s) - start) / 60 )) min; evaluating ${#run_dirs[@]} runs -> $out"
if [ ${#run_dirs[@]} -gt 0 ]; then
  "${eval_cmd[@]:0:2}" "${run_dirs[@]}" "${eval_cmd[@]:2}" || failed+=("evaluate.py")
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_all.sh: ${#failed[@]} step(s) failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "all done in $(( ($(date +%s) - start) / 60 )) min: $out/report.md"

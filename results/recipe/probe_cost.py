"""Seconds per probe measurement (the probe_seconds column) for a few numbers of draws, alternated, in one process.

The full probe (few-shot and, on the MNIST family, OOD) on each snapshot given, with each --draws value in turn,
--repeat times; run with OMP_NUM_THREADS=1 to match a one-core training run.

    OMP_NUM_THREADS=1 python results/recipe/probe_cost.py <snapshot.pt> ... --draws 3,10 --data-dir ../shared/data
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("snapshots", nargs="+", help="weights files of runs (snapshots/it<N>.pt, best.pt)")
    p.add_argument("--draws", default="3,10", help="comma-separated numbers of draws per shot")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--data-dir", default="./data")
    args = p.parse_args()
    for snap in args.snapshots:
        ckpt = cebm.load_checkpoint(snap)
        model, _ = cebm.load_model(snap)
        base = {**ckpt["config"], "data_dir": args.data_dir}
        images, labels = cebm.load_dataset(base["dataset"], args.data_dir, train=True)
        for _ in range(args.repeat):
            for draws in map(int, args.draws.split(",")):
                with tempfile.TemporaryDirectory() as scratch:
                    probe = cebm.Probe(argparse.Namespace(**{**base, "probe_draws": draws}), images, labels, scratch)
                    row = probe(model, ckpt["iteration"], 0.0)
                print(f"{base['dataset']} {Path(snap).name}: {draws} draws, {row['probe_seconds']} s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

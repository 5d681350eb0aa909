"""Re-measure a run's snapshots with the probe's few-shot part and another number of draws than the probe's.

The probe (cebm.Probe) averages --probe-draws fixed draws of labelled training images per shot, 3 unless
given. At 1 label per class one draw's accuracy spreads by ±4-8 points (the std over 10 draws in the test
reports), so 3 draws leave the probe's 1-label value a few points off the mean over draws, and a row picked
by a maximum over many probes favours a lucky value. This script runs the same few-shot measure (same
validation subset, same labelled pool, the paper's protocol) on every snapshots/it<N>.pt of a run trained
with --snapshots, with --draws seeded draws per shot (the first of them the probe's), and writes iteration,
acc1, acc10, acc100 to a CSV. Only training images are read; no test image. --probe-n takes a larger
validation subset (the first n of the probe's own permutation; the pool is the rest), whose reading of each
model spreads less (at 2,000 images one accuracy near 80 % has a sampling error of ~0.9 points).

    python results/recipe/reprobe.py runs/recipe/<run> --draws 10 --data-dir ../shared/data --out <csv> \
        [--probe-n 10000] [--from 5000] [--every 4]
"""
import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def make_probe(config, data_dir, draws, out, probe_n=None):
    """A cebm.Probe over the run's own validation subset and pool (or the first probe_n images of the same
    permutation, the rest the pool), with `draws` draws per shot, no OOD sets."""
    cfg = argparse.Namespace(**{**config, "data_dir": data_dir, "probe_draws": draws,
                                **({"probe_n": probe_n} if probe_n else {})})
    images, labels = cebm.load_dataset(cfg.dataset, data_dir, train=True)
    probe = cebm.Probe(cfg, images, labels, out)
    probe.ood = {}  # few-shot only: the OOD part does not depend on the draws
    return probe


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder trained with --snapshots")
    p.add_argument("--draws", type=int, default=10, help="seeded draws per shot (the probe's default is 3)")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--out", required=True, help="CSV to write (iteration, acc1, acc10, acc100)")
    p.add_argument("--probe-n", type=int, help="validation images (the run's own --probe-n unless given): a larger "
                   "subset reads each model's accuracy with less sampling noise")
    p.add_argument("--from", dest="start", type=int, default=0, help="only snapshots from this iteration on")
    p.add_argument("--every", type=int, default=1, help="only every k-th of those snapshots (and the last)")
    args = p.parse_args()
    if args.every < 1 or (args.probe_n is not None and args.probe_n < 1):
        p.error("--every and --probe-n must be at least 1")
    snaps = sorted((Path(args.run) / "snapshots").glob("it*.pt"))
    snaps = [s for s in snaps if int(s.stem[2:]) >= args.start]
    snaps = sorted(set(snaps[::args.every] + snaps[-1:]))
    if not snaps:
        sys.exit(f"error: no snapshots/it<N>.pt from iteration {args.start} on in {args.run} (train with --snapshots)")
    config = cebm.load_checkpoint(snaps[0])["config"]
    scratch = Path(args.out).with_suffix(".probe")  # the probe appends its rows and plot here; removed at the end
    scratch.mkdir(parents=True, exist_ok=True)
    probe = make_probe(config, args.data_dir, args.draws, scratch, args.probe_n)
    rows = []
    for snap in snaps:
        model, _ = cebm.load_model(snap)
        row = probe(model, cebm.load_checkpoint(snap)["iteration"], 0.0)
        rows.append({k: row[k] for k in ("iteration", "acc1", "acc10", "acc100") if k in row})
        print(", ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

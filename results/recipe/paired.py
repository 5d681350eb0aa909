"""Paired probe differences between two runs that follow the same training trajectory (e.g. the same
seed and preset with and without --ema, which never feeds back into training): at every iteration both
probed, B - A for each measure, and their mean and range from --from on.

    python results/recipe/paired.py results/recipe/mnist_long_reinit0.01 results/recipe/mnist_long_ema0.999
"""
import argparse
import csv
from pathlib import Path


def rows(folder):
    with open(Path(folder) / "probe.csv") as f:
        return {int(float(r["iteration"])): r for r in csv.DictReader(f)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="run folder (or copy) holding probe.csv: the reference")
    p.add_argument("b", help="run folder holding probe.csv: the variant")
    p.add_argument("--from", dest="start", type=int, default=1000, help="first iteration of the summary")
    args = p.parse_args()
    a, b = rows(args.a), rows(args.b)
    shared = sorted(i for i in a.keys() & b.keys() if i >= args.start)
    measures = [k for k in a[shared[0]] if k.startswith(("acc", "auroc_grad")) and k in b[shared[0]]]
    print(f"{Path(args.b).name} - {Path(args.a).name}, iterations {shared[0]}-{shared[-1]} ({len(shared)} probes)")
    print("| iteration | " + " | ".join(measures) + " |")
    print("|---" * (len(measures) + 1) + "|")
    diffs = {m: [] for m in measures}
    for i in shared:
        for m in measures:
            diffs[m].append(float(b[i][m]) - float(a[i][m]))
        print(f"| {i} | " + " | ".join(f"{diffs[m][-1]:+.1f}" for m in measures) + " |")
    print("| mean (min, max) | " + " | ".join(
        f"{sum(d) / len(d):+.2f} ({min(d):+.1f}, {max(d):+.1f})" for d in diffs.values()) + " |")


if __name__ == "__main__":
    main()

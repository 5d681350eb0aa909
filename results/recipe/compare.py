"""Overlay the probe curves of the recipe study and tabulate them.

    python results/recipe/compare.py results/recipe/mnist_*        # -> results/recipe/compare.{png,md}
    python results/recipe/compare.py --out results/recipe/compare_gmm results/recipe/gmm_*
    python results/recipe/compare.py --x iteration ...   # runs that shared the CPU differently: per iteration

Each argument is a folder holding a probe.csv (a run folder, or its copy under results/recipe/), or a probe CSV.
"""
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402

KEYS = ["acc1", "acc10", "acc100", "auroc_grad_fashionmnist", "auroc_grad_mnist"]


def main(folders, out=Path(__file__).parent / "compare", x="minutes"):
    csvs = [Path(f) if Path(f).is_file() else Path(f) / "probe.csv" for f in folders]
    runs = {(c.parent.name if c.name == "probe.csv" else f"{c.parent.name}/{c.stem}"): cebm.read_metrics(c)
            for c in csvs}
    keys = [k for k in KEYS if any(k in rows[0] for rows in runs.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in runs.items():
            if key in rows[0]:
                xs = [r["seconds"] / 60 if x == "minutes" else r["iteration"] for r in rows]
                ax.plot(xs, [r[key] for r in rows], "o-", ms=2, label=name)
        ax.set_title(key)
        ax.set_xlabel("training minutes" if x == "minutes" else "iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out.parent / (out.name + ".png"), dpi=110)
    lines = ["| run | iterations | training min | " + " | ".join(f"{k} last (best)" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, rows in runs.items():
        last = rows[-1]
        cells = [f"{last.get(k, float('nan')):.1f} ({max(r.get(k, 0) for r in rows):.1f})" for k in keys]
        lines.append(f"| {name} | {last['iteration']:.0f} | {last['seconds'] / 60:.1f} | " + " | ".join(cells) + " |")
    (out.parent / (out.name + ".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "compare", help="path without suffix")
    p.add_argument("--x", choices=["minutes", "iteration"], default="minutes", help="the curves' x axis")
    args = p.parse_args()
    main(args.folders, args.out, args.x)

"""Choose a model from a run's probe.csv by the paper's row instead of best.pt's rule.

best.pt is the probe row with the largest *mean* of the 1 / 10 / 100-label accuracies, which favours the
early 1-label peak. This script also names the row with the largest *smallest margin to the paper's row*
(min over the measures of ours - paper's): the model closest to holding every cell at once. With
--grad, the gradient-score AUROC against the other MNIST-family set joins the measures (Table 5).
Only validation (training) images are read; the test set is for the chosen model afterwards.

    python results/recipe/pick.py runs/recipe/mnist_long_archcode_reg0.3_hl5000 [--grad] [--from 1000] [--csv <file>]

A run trained with --snapshots keeps every probed model: the script prints the chosen one's file.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def measures(config, columns, grad):
    """{probe column: the paper's value} for the few-shot columns, and with grad the probed gradient scores
    against the other MNIST-family set (not against constant images)."""
    targets = cebm.paper_targets(config["dataset"], config["model"])
    keys = ["acc1", "acc10", "acc100"] + [k for k in targets if grad and k.startswith("auroc_grad_")
                                          and k != "auroc_grad_constant"]
    return {k: targets[k] for k in keys if k in targets and k in columns}


def pick(folder, grad=False, start=1, name="probe.csv"):
    """(paper's values, best.pt's rule's row, the closest row, its margin) from folder/name, or None without rows
    from start on."""
    folder = Path(folder)
    for path in (folder / "config.json", folder / name):
        if not path.exists():
            sys.exit(f"error: no {path}")
    config = json.loads((folder / "config.json").read_text())
    rows = [r for r in cebm.read_metrics(folder / name) if r["iteration"] >= start]
    if not rows:
        return None
    paper = measures(config, rows[0].keys(), grad)
    margin = {r["iteration"]: min(r[k] - v for k, v in paper.items()) for r in rows}
    by_mean = max(rows, key=cebm.Probe.score)  # the first of equals, as best.pt keeps
    by_row = max(rows, key=lambda r: margin[r["iteration"]])
    return paper, by_mean, by_row, margin[by_row["iteration"]]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="run folders (or copies) holding probe.csv and config.json")
    p.add_argument("--grad", action="store_true", help="the gradient-score AUROC (Table 5) is a measure too")
    p.add_argument("--from", dest="start", type=int, default=1, help="first iteration considered")
    p.add_argument("--csv", default="probe.csv",
                   help="the rows to read in each folder (a name, or a path), e.g. a re-probe's (reprobe.py)")
    args = p.parse_args()
    for folder in args.folders:
        picked = pick(folder, args.grad, args.start, args.csv)
        if picked is None:
            print(f"{Path(folder).name}: no probe rows from iteration {args.start} on")
            continue
        paper, by_mean, by_row, m = picked
        show = lambda r: " / ".join(f"{r[k]:.1f}" for k in paper)  # noqa: E731
        snap = Path(folder) / "snapshots" / f"it{int(by_row['iteration']):06d}.pt"
        print(f"{Path(folder).name}: paper {' / '.join(str(v) for v in paper.values())} ({', '.join(paper)})\n"
              f"  mean pick (best.pt's rule) it {int(by_mean['iteration']):>6}: {show(by_mean)}\n"
              f"  row pick (margin {m:+.1f})     it {int(by_row['iteration']):>6}: {show(by_row)}"
              + (f"  -> {snap}" if snap.exists() else ""))


if __name__ == "__main__":
    main()

"""The probe's few-shot values beside a re-probe's (reprobe.py) and the test set's, for evaluated snapshots.

Each MODEL is RUN:ITERATION:REPORT: a run folder holding probe.csv and reprobe<N>.csv, the probed iteration,
and the evaluate.py report.md of that model (one CEBM in it). Prints a markdown table (probe / re-probe / test
set at 1, 10 and 100 labels) and the range and mean of probe - test and re-probe - test at 1 label.

    python results/recipe/probe_vs_test.py --reprobe reprobe10.csv \
        results/recipe/<run>:3500:results/recipe/eval_<name>/report.md ...
"""
import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402

SHOTS = ("acc1", "acc10", "acc100")


def row_at(path, iteration):
    rows = [r for r in cebm.read_metrics(path) if int(r["iteration"]) == iteration]
    if not rows:
        sys.exit(f"error: no row for iteration {iteration} in {path}")
    return rows[0]


def test_accs(report):
    """The 1 / 10 / 100-label means of the report's CEBM row under the paper's protocol."""
    for line in Path(report).read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 4 and "CEBM" in cells[0] and cells[1] == "paper" and "±" in cells[2]:
            return dict(zip(SHOTS, (float(re.match(r"[\d.]+", c).group()) for c in cells[2:5])))
    sys.exit(f"error: no CEBM few-shot row in {report}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="RUN:ITERATION:REPORT")
    p.add_argument("--reprobe", default="reprobe10.csv", help="the re-probe's file name in each run folder")
    args = p.parse_args()
    print("| run, iteration | " + " | ".join(f"{s[3:]} label(s): probe / re-probe / test" for s in SHOTS) + " |")
    print("|---" * (len(SHOTS) + 1) + "|")
    gaps = {"probe": [], "re-probe": []}
    for spec in args.models:
        run, iteration, report = spec.split(":", 2)
        probe, again = (row_at(Path(run) / f, int(iteration)) for f in ("probe.csv", args.reprobe))
        test = test_accs(report)
        cells = [f"{probe[s]:.1f} / {again[s]:.1f} / {test[s]:.1f}" for s in SHOTS]
        print(f"| {Path(run).name}, {int(iteration):,} | " + " | ".join(cells) + " |")
        gaps["probe"].append(probe["acc1"] - test["acc1"])
        gaps["re-probe"].append(again["acc1"] - test["acc1"])
    for name, g in gaps.items():
        print(f"1 label, {name} - test: {min(g):+.1f} to {max(g):+.1f}, mean {sum(g) / len(g):+.2f} ({len(g)} models)")


if __name__ == "__main__":
    main()

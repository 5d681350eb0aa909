"""Mean (min-max) and std of probe measures over spans of iterations, for the tables of the recipe study.

    python results/recipe/spans.py runs/recipe/fmnist_long_archcode_reg0.3_hl5000 --spans 2000-4000,4000-7000,7000-10000

Each span lo-hi holds the probe rows with lo <= iteration < hi. Measures: the few-shot accuracies and every
gradient-score and log p(x) AUROC the probe wrote (or --measures acc1,auroc_grad_mnist).
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def summary(values):
    return (f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f}, "
            f"std {statistics.pstdev(values):.1f}, n {len(values)})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="run folders (or copies) holding probe.csv")
    p.add_argument("--spans", required=True, help="comma-separated lo-hi iteration spans")
    p.add_argument("--measures", help="comma-separated probe columns (default: accuracies and AUROCs)")
    args = p.parse_args()
    spans = [tuple(int(x) for x in s.split("-")) for s in args.spans.split(",")]
    for folder in args.folders:
        rows = cebm.read_metrics(Path(folder) / "probe.csv")
        keys = args.measures.split(",") if args.measures else [
            k for k in rows[0] if k.startswith(("acc", "auroc_grad_", "auroc_logp_"))]
        print(Path(folder).name)
        for lo, hi in spans:
            span = [r for r in rows if lo <= r["iteration"] < hi]
            if span:
                print(f"  {lo}-{hi}: " + "; ".join(f"{k} {summary([r[k] for r in span])}" for k in keys))


if __name__ == "__main__":
    main()

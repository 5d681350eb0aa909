"""When did each run's probe first reach the paper's value of each measure? A Markdown table from probe.csv.

    python results/long/reached.py results/long/*/        # folders holding probe.csv and config.json

The probe measures on 2,000 held-out *training* images (3 draws per shot count); the paper's cells are test-set
numbers, so a reached cell is confirmed only by evaluate.py on the test set (results/long/eval). The untrained
network (iteration 0) does not count: some paper cells are below chance (log p(x) AUROC 37 %), and a random
network can be above them.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def rows_for(folder):
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    probe = cebm.read_metrics(folder / "probe.csv")
    out = []
    for key, target in cebm.paper_targets(cfg["dataset"], cfg["model"]).items():
        if key not in probe[0]:
            continue
        trained = [r for r in probe if r["iteration"] > 0]
        hit = next((r for r in trained if r[key] >= target), None)
        best = max(trained, key=lambda r: r[key])
        when = (f"{hit['seconds'] / 60:.0f} min (iteration {hit['iteration']:.0f})" if hit else
                f"not reached; best {best[key]:.1f} at {best['seconds'] / 60:.0f} min")
        out.append([folder.name, key, target, f"{probe[-1][key]:.1f}", when])
    last = probe[-1]
    return out, f"{folder.name}: {last['iteration']:.0f} iterations, {last['seconds'] / 60:.0f} training minutes"


if __name__ == "__main__":
    lines = ["| run | measure | paper | ours (last probe) | first reached |", "|---|---|---|---|---|"]
    notes = []
    for f in sys.argv[1:]:
        if not (Path(f) / "probe.csv").exists():  # e.g. results/long/eval/, matched by results/long/*/
            continue
        rows, note = rows_for(f)
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
        notes.append(note)
    print("\n".join(lines + [""] + [f"- {n}" for n in notes]))

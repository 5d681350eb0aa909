"""How long a run's E_data - E_model sat at the energy L2's bound, from its metrics.csv.

The loss of pcd_step (cebm.py) is smallest at E_data - E_model = -1/reg: a run whose chains are lost sits
there (MNIST seeds 4, 6 and 11 of the thirteenth session, from iteration ~250-300). This script prints, for each run
folder, the longest stretch of logged iterations with E_data - E_model <= -FRAC/reg (reg as the run had it
at that iteration, --energy-reg then --energy-reg-late) and the iteration at which that stretch first
spanned --span iterations, to ask whether such a rule could warn of a lost run early.

    python results/recipe/bound_streak.py runs/recipe/*/ [--frac 0.8] [--span 250]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402


def streak(folder, frac, span):
    """(longest stretch in iterations, first iteration at which a stretch reached span or None, last
    iteration), or None for a folder without an energy model's config.json and metrics.csv."""
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "metrics.csv").exists():
        return None
    config = json.loads((folder / "config.json").read_text())
    if "energy_reg" not in config or config.get("model", "").startswith("vae"):
        return None
    config = {**cebm.OLDER_DEFAULTS, **config}
    cfg = argparse.Namespace(**config)
    rows = [r for r in cebm.read_metrics(folder / "metrics.csv") if "E_diff" in r]
    longest, since, warned = 0, None, None
    for r in rows:
        reg = cebm.energy_reg_at(cfg, r["iteration"] - 1)
        if reg and r["E_diff"] <= -frac / reg:
            since = r["iteration"] if since is None else since
            longest = max(longest, r["iteration"] - since)
            if warned is None and r["iteration"] - since >= span:
                warned = r["iteration"]
        else:
            since = None
    return int(longest), warned and int(warned), int(rows[-1]["iteration"]) if rows else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--frac", type=float, default=0.8, help="the fraction of the bound -1/reg")
    parser.add_argument("--span", type=int, default=250, help="iterations a stretch must last")
    args = parser.parse_args()
    print(f"| run | energy L2 | longest stretch at <= {args.frac:g} of the bound | reached {args.span} "
          f"iterations at | last iteration |\n|---|---|---|---|---|")
    for folder in args.folders:
        found = streak(folder, args.frac, args.span)
        if found and found[0] > 0:
            config = json.loads((Path(folder) / "config.json").read_text())
            reg = config["energy_reg"] if config.get("energy_reg_late") is None else \
                f"{config['energy_reg']} then {config['energy_reg_late']}"
            print(f"| {Path(folder).name} | {reg} | {found[0]} | {found[1] or '-'} | {found[2]} |")


if __name__ == "__main__":
    main()

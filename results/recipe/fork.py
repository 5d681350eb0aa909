"""Fork a run at its checkpoint with some training settings changed, for the recipe study: does a lever
help a model that has already plateaued? The fork continues the original's model, optimizer, replay buffer,
RNG state, clock and logs exactly; only the named settings differ from there on. `cebm.py --resume` refuses
such changes on purpose (a resumed run is the same experiment), so the study forks instead.

    python results/recipe/fork.py runs/long/cebm-gaussian_mnist_v2 runs/recipe/mnist_fork_s20 sgld_steps=20
    python cebm.py --dataset mnist --data-dir ../shared/data --preset cpu-long --sgld-steps 20 \\
        --out-dir runs/recipe/mnist_fork_s20 --resume --max-minutes 40
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("src", help="run folder with ckpt.pt")
p.add_argument("dst", help="new run folder (must not exist)")
p.add_argument("changes", nargs="*", help="config key=value; the value is read as JSON (20, 1e-3, true)")
args = p.parse_args()
src, dst = Path(args.src), Path(args.dst)
if dst.exists():
    sys.exit(f"fork.py: {dst} exists")
try:
    ckpt = cebm.load_checkpoint(src / "ckpt.pt")
except cebm.CEBMError as e:
    sys.exit(f"fork.py: {e}")
for change in args.changes:
    key, _, value = change.partition("=")
    if key not in ckpt["config"]:
        sys.exit(f"fork.py: no setting '{key}' in the checkpoint's config")
    try:
        ckpt["config"][key] = json.loads(value)
    except json.JSONDecodeError:
        sys.exit(f"fork.py: '{change}': the value must be JSON, e.g. sgld_steps=20, lr=1e-3, eager=true")
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ckpt.pt", "samples"))
ckpt["config"]["out_dir"] = str(dst)
(dst / "config.json").write_text(json.dumps(ckpt["config"], indent=2) + "\n")
(dst / "forked_from.txt").write_text(f"{src} at iteration {ckpt['iteration']} ({ckpt['seconds'] / 60:.1f} "
                                     f"training min), changed: {' '.join(args.changes) or 'nothing'}\n")
cebm.atomic_save(ckpt, dst / "ckpt.pt")
print(f"forked {src} at iteration {ckpt['iteration']} into {dst}: {' '.join(args.changes) or 'no change'}")

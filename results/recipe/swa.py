"""Average a run's snapshot weights over a window of iterations and measure the average with the probe.

A stochastic weight average (Izmailov et al., 2018) taken after training: the mean of the weights saved in
snapshots/it<N>.pt (every --probe-every iterations with --snapshots; for an --ema run those are already
averaged weights, so this widens the average's window) for N in [start, end]. Each window's average is
measured with the probe's few-shot part (same validation subset and labelled pool as the run's probe, the
paper's protocol, --draws seeded draws), beside the window's last snapshot measured the same way. Only
training images are read; no test image. --save writes the average of the last window as a weights file
that evaluate.py and --sample accept. --gmm-latent map measures a GMM-CEBM with the official code's latent
(the mean of the most probable component) instead of the run's own.

    python results/recipe/swa.py runs/recipe/<run> --windows 1000-2500,1500-2500 --draws 10 \
        --data-dir ../shared/data [--save <weights.pt>]
"""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]
import cebm  # noqa: E402
from reprobe import make_probe  # noqa: E402


def average_states(paths):
    """The mean of the snapshots' model states (float tensors; any other entry from the last snapshot)."""
    states = [cebm.delivered_weights(cebm.load_checkpoint(p)) for p in paths]
    avg = {}
    for key, last in states[-1].items():
        avg[key] = torch.stack([s[key] for s in states]).mean(0) if last.is_floating_point() else last
    return avg


def measure(probe, config, state, iteration):
    model = cebm.build_model(config)  # config["gmm_latent"] may be overridden by --gmm-latent
    cebm.load_weights(model, state, "average")
    row = probe(model.eval(), iteration, 0.0)
    return [row.get(k, float("nan")) for k in ("acc1", "acc10", "acc100")]  # no 100 labels on small sets


def parse_windows(text, snaps):
    """[(start, end)] -> the snapshot iterations of each window; one line and exit on a malformed or empty one."""
    windows = []
    for w in text.split(","):
        try:
            start, end = (int(v) for v in w.split("-"))
        except ValueError:
            sys.exit(f"error: --windows takes start-end pairs separated by commas, got {w!r}")
        its = sorted(i for i in snaps if start <= i <= end)
        if not its:
            sys.exit(f"error: no snapshot in {start}-{end}")
        windows.append(its)
    return windows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder trained with --snapshots")
    p.add_argument("--windows", required=True, help="iteration windows start-end, comma-separated")
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--save", help="write the last window's average here as a weights file")
    p.add_argument("--gmm-latent", choices=["mean", "map"], help="measure a GMM-CEBM with this latent(x) instead")
    args = p.parse_args()
    snaps = {int(s.stem[2:]): s for s in (Path(args.run) / "snapshots").glob("it*.pt")}
    if not snaps:
        sys.exit(f"error: no snapshots/it<N>.pt in {args.run} (train with --snapshots)")
    windows = parse_windows(args.windows, snaps)
    first = cebm.load_checkpoint(snaps[min(snaps)])
    config = {**first["config"], **({"gmm_latent": args.gmm_latent} if args.gmm_latent else {})}
    print(f"{args.run}, {args.draws} draws; window: average 1 / 10 / 100 | its last snapshot")
    print("| window | snapshots | average, 1 / 10 / 100 | last snapshot alone |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:  # the probe appends its rows and plot there
        probe = make_probe(config, args.data_dir, args.draws, scratch)
        for its in windows:
            avg = average_states([snaps[i] for i in its])
            a = measure(probe, config, avg, its[-1])
            b = measure(probe, config, cebm.delivered_weights(cebm.load_checkpoint(snaps[its[-1]])), its[-1])
            print(f"| {its[0]}-{its[-1]} | {len(its)} | {a[0]:.1f} / {a[1]:.1f} / {a[2]:.1f} "
                  f"| {b[0]:.1f} / {b[1]:.1f} / {b[2]:.1f} |", flush=True)
    if args.save:
        ckpt = cebm.load_checkpoint(snaps[its[-1]])
        cebm.atomic_save(cebm.weights_only(config, its[-1], ckpt["seconds"], avg), args.save)
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()

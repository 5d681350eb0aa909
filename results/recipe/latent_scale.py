"""Why the paper's few-shot protocol rewards latent scale: the same latents, multiplied by 1, 10 and 100,
fitted with the paper protocol (one-vs-rest liblinear, C=1, raw features) and with standardised features.

    python results/recipe/latent_scale.py runs/recipe/lr5e-4 [more runs or checkpoints] --data-dir ../shared/data

It also prints what sets the latent's size: E[z | x] = λ̃₁ / (-2 λ̃₂), so a larger posterior precision
-2 λ̃₂ = 1/σ² + 2·softplus(h) shrinks the latent, and the energy E(x) on the same images; for a GMM-CEBM also how
much of the mixture p(y | x) uses and the prior's median σ.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("runs", nargs="+")
p.add_argument("--data-dir", default="./data")
args = p.parse_args()


def report(run):
    model, cfg = cebm.load_model(run)
    x, y = cebm.load_dataset(cfg["dataset"], args.data_dir, train=True)
    idx = np.random.RandomState(0).permutation(len(y))[:6000]
    f, y = cebm.encode(model.latent, x[idx], "cpu"), y.numpy()[idx]
    val, pool = slice(0, 2000), np.arange(2000, 6000)
    draws = cebm.few_shot_draws(y, ["1", "10", "100"], 3, pool)
    print(f"{run} (iteration {cebm.load_checkpoint(run)['iteration']}): latent |mean| {np.abs(f).mean():.3f}, "
          f"mean per-dimension std {f.std(0).mean():.3f}; training images 2000-5999 of a fixed permutation labelled, "
          "0-1999 scored; 3 draws")
    # The posterior precision (-2 λ̃₂, every component for the GMM bias) and the energy, images 0-1999
    precision = cebm.encode(lambda v: -2 * model.posterior_natural(v)[1].flatten(1), x[idx[:2000]], "cpu")
    energy = cebm.encode(lambda v: model.energy(v)[:, None], x[idx[:2000]], "cpu")
    print(f"  posterior precision: mean {precision.mean():.3f}, median {np.median(precision):.3f}; "
          f"E(x) mean {energy.mean():.3f} (images 0-1999, no data noise)")
    if hasattr(model, "log_weights"):  # GMM bias: how much of the mixture the latent uses
        y_probs = cebm.encode(lambda v: model.posterior(v)["y_probs"], x[idx[:2000]], "cpu")
        print(f"  mean max_l p(y=l | x) {y_probs.max(1).mean():.3f} (1/L = {1 / y_probs.shape[1]:.3f}); "
              f"prior σ median {model.log_stds.exp().median().item():.3f}")
    for name, feats, protocol in [("paper, x1", f, "paper"), ("paper, x10", 10 * f, "paper"),
                                  ("paper, x100", 100 * f, "paper"), ("standardized", f, "standardized")]:
        res = cebm.few_shot(feats, y, feats[val], y[val], draws, protocol)
        print(f"  {name:13s} " + "  ".join(f"{s}-shot {100 * np.mean(a):.1f}" for s, a in res.items()))


for run in args.runs:
    report(run)

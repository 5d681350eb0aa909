"""How much a GMM-CEBM uses its mixture, and what its encoder knows apart from the latent's readout.

For each checkpoint: the mean of max_l p(y=l | x) (1/L when the mixture is unused, 1 when every image
belongs to one component), how many components are the argmax of some image, and few-shot accuracy
(the paper's protocol, 3 draws, on 2,000 held-out training images) of three readouts of the same
encoder: the latent E[z | x] ('mean', what every table uses), the code's 'map' latent, and t1(x) alone.

    python results/recipe/gmm_diag.py <ckpt.pt or weights.pt> ... --data-dir ../shared/data
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import cebm  # noqa: E402


def readouts(model):
    def latent_as(mode):
        def fn(x):
            model.latent_mode = mode  # GMMCEBM.latent's own two readouts
            return model.latent(x)
        return fn
    return {"mean": latent_as("mean"), "map": latent_as("map"), "t1": lambda x: model.statistics(x)[0],
            "y_probs": lambda x: model.posterior(x)["y_probs"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("paths", nargs="+")
    p.add_argument("--data-dir", default="./data")
    args = p.parse_args()
    for path in args.paths:
        model, cfg = cebm.load_model(path)
        model.eval()
        x, y = cebm.load_dataset(cfg["dataset"], args.data_dir, train=True)
        y = np.asarray(y)
        perm = np.random.RandomState(0).permutation(len(y))
        pool, val = perm[:20_000], perm[20_000:22_000]
        draws = cebm.few_shot_draws(y[pool], [1, 10, 100], 3)
        feats = {k: cebm.encode(fn, x[np.r_[pool, val]], "cpu") for k, fn in readouts(model).items()}
        resp = feats.pop("y_probs")
        print(f"{path}: mean max p(y|x) {resp.max(1).mean():.3f} (1/L = {1 / resp.shape[1]:.3f}), "
              f"argmax components {len(np.unique(resp.argmax(1)))} of {resp.shape[1]}")
        for name, f in feats.items():
            acc = cebm.few_shot(f[:len(pool)], y[pool], f[len(pool):], y[val], draws)
            print(f"  {name:5s} 1 / 10 / 100 labels: " + " / ".join(f"{100 * np.mean(a):.1f}" for a in acc.values())
                  + f"   mean |feature| {np.abs(f).mean():.2f}")


if __name__ == "__main__":
    main()

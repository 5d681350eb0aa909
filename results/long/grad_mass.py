"""Where the gradient score's mass sits: ‖∇x E(x)‖ of a Fashion-MNIST model on 1,000 test images of Fashion-MNIST
and of MNIST (with the model's training data noise, as evaluate.py scores them), split into background pixels
(value < -0.9 in [-1, 1], near black) and the rest.

    python results/long/grad_mass.py results/long/cebm-gaussian_fashionmnist/best.pt --data-dir ../shared/data
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm

p = argparse.ArgumentParser()
p.add_argument("weights")
p.add_argument("--data-dir", default="./data")
p.add_argument("--n", type=int, default=1000)
args = p.parse_args()
model, cfg = cebm.load_model(args.weights)
g = torch.Generator().manual_seed(0)
for ds in (cfg["dataset"], "mnist" if cfg["dataset"] != "mnist" else "fashionmnist"):
    x = cebm.to_model_range(cebm.load_dataset(ds, args.data_dir, train=False)[0][:args.n])
    noisy = (x + cfg["data_noise"] * torch.randn(x.shape, generator=g)).requires_grad_(True)
    grad, = torch.autograd.grad(model.energy(noisy).sum(), noisy)
    bg, sq = x < -0.9, grad.pow(2)
    total = sq.flatten(1).sum(1)
    print(f"{ds}: median ‖∇x E‖ {total.sqrt().median():.3f}; background: {bg.float().mean():.0%} of the pixels, "
          f"{(sq * bg).flatten(1).sum(1).div(total).mean():.0%} of the squared gradient; per-pixel rms gradient "
          f"{sq[bg].mean().sqrt():.4f} on background, {sq[~bg].mean().sqrt():.4f} on the rest")

"""Conjugate Energy-Based Models (Wu, Esmaeili, Wick, Tristan, van de Meent; ICML 2021), in one file.

A CEBM couples an encoder t_θ(x) with an exponential-family bias over latents z (Eq. 5-7):

    E(x, z) = -(λ + t_θ(x))ᵀ η(z) + A(λ)

so the posterior is conjugate, p(z | x) = p(z | λ + t_θ(x)), and the marginal is an EBM (Eq. 9):

    log p(x) = A(λ + t_θ(x)) - A(λ) - log Z_θ

trained by persistent contrastive divergence with SGLD (Eq. 1-2, Appendix D/E).

Read top to bottom: config/CLI -> data -> encoder -> conjugate biases -> SGLD sampler and replay buffer
-> PCD training (and VERA, the official code's alternative for the GMM-CEBM) -> sampling -> benchmark -> main.

    python cebm.py --dataset mnist --bias gaussian             # the paper's settings (GPU, days)
    python cebm.py --dataset mnist --preset cpu                # minutes on a laptop CPU
    python cebm.py --dataset mnist --preset cpu --resume       # continue a stopped run
    python cebm.py --sample --out-dir runs/cebm-gaussian_mnist_cpu_s0   # 500-step SGLD samples
"""
import argparse
import contextlib
import copy
import csv
import ctypes
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm


class CEBMError(Exception):
    """An error with a one-line explanation for the user (bad input, missing data, corrupt checkpoint)."""


class Diverged(CEBMError):
    """Training produced non-finite or exploding values."""


# --------------------------------------------------------------------------------------------------
# 1. Config / CLI
# --------------------------------------------------------------------------------------------------

# Budgets. "paper" is Appendix D; "cpu" is sized for a 2-core CPU (~5 min on MNIST). Any flag given
# explicitly overrides its preset value.
PRESETS = {
    "paper": dict(iters=90_000, batch_size=128, sgld_steps=60, lr=1e-4, lr_half_life=0, buffer_size=5000,
                  sgld_noise=0.0075, warmup=0, reinit=0.05, ema=0, log_every=100, ckpt_every=1000, sample_every=1000,
                  probe_every=1000, max_minutes=0, stop_at_paper=False),
    # The recipe study (results/recipe/README.md): 10 SGLD steps at lr 1e-3 learn more per iteration than
    # 20 steps at 5e-4 (the preset before it) on MNIST, Fashion-MNIST and the GMM bias, at half the cost.
    "cpu": dict(iters=600, batch_size=64, sgld_steps=10, lr=1e-3, lr_half_life=0, buffer_size=5000,
                sgld_noise=0.0075, warmup=0, reinit=0.05, ema=0, log_every=10, ckpt_every=50, sample_every=100,
                probe_every=200, max_minutes=0, stop_at_paper=False),
    # The fastest recipe of the probe study (results/recipe/README.md): 10 SGLD steps and lr 1e-3, halved
    # every 2k iterations (with 10k, the first long run peaked at 3k iterations and then degraded while
    # E_data - E_model kept growing) and twice the official code's SGLD noise (MNIST test set, seed 0: +3.2 /
    # +1.6 / +0.6 points at 1 / 10 / 100 labels). A 500-iteration warm-up of the learning rate: without it,
    # seeds 1 and 2 lost their chains in the first 200 iterations (results/recipe, "Seeds"). 1 % restarts, not
    # the paper's 5 %: chains that live longer keep E_data - E_model at -1.1 to -4.6 instead of -8 and lift the
    # MNIST test set by 2.4-6.0 / 1.0-3.5 / 0.4-1.3 points over three seeds. Runs until the probe reaches the paper's
    # Table 1 row or 3 hours.
    "cpu-long": dict(iters=60_000, batch_size=64, sgld_steps=10, lr=1e-3, lr_half_life=2_000, buffer_size=5000,
                     sgld_noise=0.015, warmup=500, reinit=0.01, ema=0,
                     log_every=50, ckpt_every=250, sample_every=1000,
                     probe_every=500, max_minutes=180, stop_at_paper=True),
}

# Flags that may change when a run is resumed; every other setting must match the checkpoint.
RESUMABLE_CHANGES = {"iters", "device", "resume", "out_dir", "data_dir", "log_every", "ckpt_every",
                     "sample_every", "eager", "channels_last", "keep_heap", "no_progress", "sample",
                     "sample_steps", "n_samples", "benchmark", "bench_iters", "bench_mode", "export",
                     "max_minutes", "stop_at_paper",
                     "probe_every", "probe_n", "snapshots"}

# Settings added after runs were saved without them, with the value those runs had.
OLDER_DEFAULTS = {"arch": "paper", "gmm_prior": "learned", "gmm_init_std": 1.0, "adam_beta1": 0.9,
                  "energy_reg_late": None, "energy_reg_from": 1500, "probe_draws": 3, "trainer": "pcd",
                  "gen_lr": 2e-4, "xi_lr": 1e-3, "entropy_weight": 1.0, "grad_penalty": 0.1, "is_samples": 20}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the module docstring's layout and shows every flag's default (unless its help
    already names it, or it has none)."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported in one line (not the whole usage block) and no abbreviations."""

    def __init__(self, description):
        super().__init__(description=description, allow_abbrev=False, formatter_class=HelpFormatter)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(description=__doc__, benchmark=True):
    """The flags shared by cebm.py and baselines.py (data, budget, PCD/SGLD, bookkeeping)."""
    p = Parser(description)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(DATASETS),
                   help="training set (default: mnist); 'digits' is scikit-learn's bundled 8x8 digits "
                        "resized to 28x28 (works offline anywhere)")
    g.add_argument("--data-dir", default="./data",
                   help="torchvision root; datasets are downloaded here when missing (default: ./data)")
    g.add_argument("--data-noise", type=float, default=0.03,
                   help="std of Gaussian noise added to data images before encoding (App. D; the paper "
                        "writes sigma^2=0.03, its code uses std 0.03)")
    g = p.add_argument_group("budget (defaults: --preset)")
    g.add_argument("--preset", default="paper", choices=sorted(PRESETS),
                   help="paper: Appendix D (90k iters, batch 128, 60 SGLD steps, lr 1e-4). cpu: a demo, 600 "
                        "iters, batch 64, 10 SGLD steps, lr 1e-3, minutes on a 2-core CPU. cpu-long: the "
                        "study's recipe (10 SGLD steps, lr 1e-3 warmed up over 500 iters and halved every 2k, "
                        "SGLD noise 0.015) until the probe meets the paper's Table 1 row or 3 hours of training")
    g.add_argument("--iters", type=int, help="training iterations (gradient steps)")
    g.add_argument("--batch-size", type=int, help="data and model samples per iteration")
    g.add_argument("--lr", type=float, help="Adam learning rate (App. D: 1e-4)")
    g.add_argument("--warmup", type=int, help="iterations of linear learning-rate warm-up from 0; 0 = none")
    g.add_argument("--adam-beta1", type=float, default=0.9,
                   help="Adam's first-moment decay beta1 (the official code: torch's default, 0.9; Du & Mordatch's "
                        "IGEBM code: 0). The BiGAN keeps its own 0.5")
    g.add_argument("--lr-half-life", type=int,
                   help="halve the learning rate every this many iterations, smoothly; 0 = constant")
    g.add_argument("--seed", type=int, default=0, help="seed for torch's RNGs")
    g.add_argument("--ema", type=float,
                   help="decay of an exponential moving average of the weights, updated after every step and "
                        "never fed back into training; the probe, best.pt, --export, --sample and evaluate.py "
                        "use the average. 0 = off (the paper)")
    g = p.add_argument_group("PCD / SGLD (Appendix D, E)")
    g.add_argument("--sgld-steps", type=int, help="SGLD steps per iteration")
    g.add_argument("--sgld-step-size", type=float, default=1.0,
                   help="gradient step: x <- x - step * dE/dx + noise * N(0, 1). The paper's alpha=0.075 "
                        "means step=alpha/2=0.0375; the official code uses 1.0 (see README)")
    g.add_argument("--sgld-noise", type=float,
                   help="std of the SGLD noise. The paper's alpha=0.075 means sqrt(alpha)=0.27; the official "
                        "code uses 0.0075 (see README)")
    g.add_argument("--buffer-size", type=int, help="replay buffer size (paper: 5000)")
    g.add_argument("--reinit", type=float,
                   help="fraction of chains restarted from uniform noise each iteration (paper: 0.05)")
    g.add_argument("--energy-reg", type=float, default=0.1,
                   help="coefficient of the L2 penalty on energies (App. D, from Du & Mordatch 2019)")
    g.add_argument("--energy-reg-late", type=float,
                   help="the energy L2 coefficient from iteration --energy-reg-from on (default: --energy-reg "
                        "throughout); a recipe-study lever: an L2 of reg bounds E_data - E_model at -1/reg, a "
                        "bound that a run whose chains still lag the model early in training can sit on")
    g.add_argument("--energy-reg-from", type=int, default=1500,
                   help="the iteration at which --energy-reg-late takes over")
    g = p.add_argument_group("run")
    g.add_argument("--out-dir", help="run folder (default: runs/<model>_<dataset>_<preset>_s<seed>)")
    g.add_argument("--resume", action="store_true",
                   help="continue from <out-dir>/ckpt.pt if it exists (starts fresh otherwise)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when present)")
    g.add_argument("--log-every", type=int, help="iterations between metric rows (and host syncs)")
    g.add_argument("--ckpt-every", type=int, help="iterations between checkpoints")
    g.add_argument("--sample-every", type=int, help="iterations between sample grids")
    g.add_argument("--probe-every", type=int,
                   help="iterations between probe measurements (few-shot accuracy, OOD AUROC on a validation "
                        "subset of the training set) written to probe.csv / probe.png; 0 = off")
    g.add_argument("--probe-n", type=int, default=2000,
                   help="training images held out (from the probe's labelled draws only) as its validation set")
    g.add_argument("--probe-draws", type=int, default=3,
                   help="seeded draws of labelled images per shot that each few-shot value of the probe averages: "
                        "3 in every run shipped here, whose 1-label value read 1.3-6.2 points above the test set's "
                        "over 14 models, where 10 read -0.7 to +1.9 (results/recipe, twelfth session)")
    g.add_argument("--snapshots", action="store_true",
                   help="keep the weights of every probed model as <out-dir>/snapshots/it<N>.pt (weights only, "
                        "~1.3 MB each; evaluate.py and --sample take them), to choose a model from probe.csv "
                        "afterwards by another rule than best.pt's")
    g.add_argument("--max-minutes", type=float,
                   help="stop (with a checkpoint) after this much training time, probe time excluded; 0 = no "
                        "limit. A resumed run counts the time already spent")
    g.add_argument("--stop-at-paper", action=argparse.BooleanOptionalAction,
                   help="stop when the probe's few-shot accuracies reach the paper's Table 1 row for this "
                        "model and dataset (1, 10 and 100 labels per class)")
    g.add_argument("--diverge-at", type=float, default=1e6,
                   help="stop when a logged quantity is non-finite or its magnitude exceeds this")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar (for log files)")
    g = p.add_argument_group("speed (see README 'Speed')")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory layout for the convolutions (measured 1.1-1.4x on CPU)")
    g.add_argument("--keep-heap", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU/glibc: keep freed memory in the process heap instead of returning it to the OS "
                        "after every SGLD step (measured 1.3-1.4x on CPU)")
    g.add_argument("--eager", action="store_true",
                   help="the plain loop of the paper's code, for comparison: no channels-last, no heap "
                        "tuning, parameters left requiring gradients during SGLD")
    p.set_defaults(benchmark=False, bench_iters=5, bench_mode=None)
    if benchmark:  # cebm.py only: it times CEBM iterations
        g.add_argument("--benchmark", action="store_true",
                       help="time training iterations at this config, eager vs fast, and exit "
                            "(default: both image sizes unless --dataset is given)")
        g.add_argument("--bench-iters", type=int, default=5, help="timed iterations per mode for --benchmark")
        g.add_argument("--bench-mode", choices=["eager", "fast"], help=argparse.SUPPRESS)  # child processes
    g = p.add_argument_group("using a trained model")
    g.add_argument("--sample", action="store_true",
                   help="load <out-dir>/ckpt.pt (or weights.pt) of an energy model and draw samples from "
                        "uniform noise into <out-dir>/samples_<steps>steps.png, then exit")
    g.add_argument("--sample-steps", type=int, default=500, help="SGLD steps for --sample (paper Fig. 2)")
    g.add_argument("--n-samples", type=int, default=100, help="images drawn by --sample")
    g.add_argument("--export", metavar="PATH",
                   help="write the model weights and config of <out-dir>'s checkpoint (no optimizer or buffer) "
                        "to PATH, a file that evaluate.py and --sample accept as weights.pt of a folder; exit")
    p.set_defaults(**PRESETS["paper"])
    for action in p._actions:  # each budget flag's help lists its value in every preset
        if action.dest in PRESETS["paper"]:
            values = ", ".join(f"{name} {preset[action.dest]}" for name, preset in PRESETS.items())
            action.help = f"{action.help or ''} [presets: {values}]"
    return p


def cebm_parser():
    p = build_parser()
    g = p.add_argument_group("model")
    g.add_argument("--bias", default="gaussian", choices=["gaussian", "gmm"],
                   help="inductive bias: spherical Gaussian (App. A.1) or mixture of Gaussians (App. A.2)")
    g.add_argument("--latent-dim", type=int, default=128, help="dimension K of z (App. D: 128)")
    g.add_argument("--components", type=int, default=50, help="mixture components L for --bias gmm")
    g.add_argument("--gmm-latent", default="mean", choices=["mean", "map"],
                   help="latent(x) for --bias gmm: posterior mean E[z|x] over all components (default), "
                        "or the mean of the most probable component (the official code)")
    g.add_argument("--gmm-prior", default="learned", choices=["learned", "learned-unit", "fixed"],
                   help="λ_l for --bias gmm: learned from means 0.31·N(0, 1) and σ in [1, 6] (default), "
                        "learned from the same means and σ = 1 (learned-unit: each component starts as the "
                        "Gaussian bias, shifted), or fixed at means ~ N(0, 1), σ = 1 (the official CEBM-GMM "
                        "without --optimize_ib)")
    g.add_argument("--gmm-init-std", type=float, default=1.0,
                   help="the σ every component starts at with --gmm-prior learned-unit; a wider prior is a "
                        "larger latent z for the same p(x) (see GMMCEBM)")
    g.add_argument("--act", default="silu", choices=["silu", "leakyrelu"],
                   help="encoder activation: silu (official code, smooth dE/dx for SGLD) or leakyrelu "
                        "(paper's Table 2)")
    g.add_argument("--arch", default="paper", choices=["paper", "code"],
                   help="encoder widths: paper (Table 2: convs 64-64-32-32, FC 128 on 28x28) or code (the "
                        "official code's: 32-32-64-64, FC 256; 64-128-256-512, FC 1024 on 32x32)")
    g = p.add_argument_group("VERA (--trainer vera: the official code's GMM-CEBM training, not the paper's)")
    g.add_argument("--trainer", default="pcd", choices=["pcd", "vera"],
                   help="pcd: persistent contrastive divergence with SGLD (the paper, Algorithm 1); vera: a "
                        "generator q(x) trained to low energy and high entropy replaces the chains (Grathwohl et "
                        "al. 2021; camera-ready train_vera.py, whose EBM runs at lr 5e-5, batch 128, with no energy "
                        "L2: give --energy-reg 0 for it). The SGLD, buffer and --adam-beta1 flags are then unused "
                        "(Adam betas (0, 0.9), the code's)")
    g.add_argument("--gen-lr", type=float, default=2e-4, help="VERA generator's Adam learning rate (the code's)")
    g.add_argument("--xi-lr", type=float, default=1e-3,
                   help="learning rate of VERA's proposal scale s (the code's MNIST/Fashion-MNIST script)")
    g.add_argument("--entropy-weight", type=float, default=1.0,
                   help="λ of the generator's loss E(x) - λ·H(q) (the code's lambda_ent). The code's continuous-"
                        "Bernoulli branch flips the sign of its entropy gradient: -1 reproduces it (README)")
    g.add_argument("--grad-penalty", type=float, default=0.1,
                   help="γ of the EBM's penalty γ/2·||dE/dx_data||² on [0, 1] images (the code's gamma)")
    g.add_argument("--is-samples", type=int, default=20,
                   help="importance samples of the entropy-gradient estimate (the code's sample_size)")
    return p


def parse_args(parser, argv=None, model_name=None):
    """Parse twice: once to find --preset, then with that preset's values as defaults."""
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[known.preset])
    cfg = parser.parse_args(argv)
    cfg._dataset_given = cfg.dataset is not None
    cfg.dataset = cfg.dataset or "mnist"
    if cfg.eager:
        cfg.channels_last = cfg.keep_heap = False
    cfg.model = model_name or f"cebm-{cfg.bias}"
    if cfg.out_dir is None:
        cfg.out_dir = f"runs/{cfg.model}_{cfg.dataset}_{cfg.preset}_s{cfg.seed}"
    for name in ("iters", "batch_size", "sgld_steps", "buffer_size", "log_every", "ckpt_every",
                 "sample_every", "probe_n", "probe_draws"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.probe_every < 0 or cfg.warmup < 0 or cfg.lr_half_life < 0:
        parser.error("--probe-every, --warmup and --lr-half-life must be 0 (off) or more")
    if getattr(cfg, "is_samples", 1) < 1:
        parser.error("--is-samples must be at least 1")
    penalty = getattr(cfg, "grad_penalty", 0.0)
    if not math.isfinite(getattr(cfg, "entropy_weight", 0.0)) or not (math.isfinite(penalty) and penalty >= 0):
        parser.error("--entropy-weight must be a finite number and --grad-penalty a number >= 0")
    for name in ("lr", "gan_lr", "gen_lr", "xi_lr"):
        value = getattr(cfg, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, not {value}")
    for name in ("sgld_step_size", "sgld_noise", "data_noise", "energy_reg", "energy_reg_late", "energy_reg_from",
                 "max_minutes"):
        value = getattr(cfg, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            parser.error(f"--{name.replace('_', '-')} must be a number >= 0, not {value}")
    init_std = getattr(cfg, "gmm_init_std", 1.0)
    if not (math.isfinite(init_std) and init_std > 0):
        parser.error(f"--gmm-init-std must be a positive number, not {init_std}")
    if init_std != 1.0 and (getattr(cfg, "bias", None), getattr(cfg, "gmm_prior", None)) != ("gmm", "learned-unit"):
        parser.error("--gmm-init-std applies to --bias gmm --gmm-prior learned-unit only")
    if not 0 <= cfg.adam_beta1 < 1:
        parser.error(f"--adam-beta1 is a decay between 0 and 1 (exclusive), not {cfg.adam_beta1}")
    if not 0 <= cfg.ema < 1:
        parser.error(f"--ema is a decay between 0 (off) and 1 (exclusive), not {cfg.ema}")
    if not 0 <= cfg.reinit <= 1:
        parser.error(f"--reinit is a fraction between 0 and 1, not {cfg.reinit}")
    if cfg.buffer_size < cfg.batch_size:
        parser.error(f"--buffer-size ({cfg.buffer_size}) must be at least --batch-size ({cfg.batch_size}): "
                     "each iteration draws a batch of distinct chains from the buffer")
    check_device(parser, cfg.device)
    return cfg


def check_device(parser, name):
    """One line, not a traceback, for a device torch does not know or this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name} is not a torch device (e.g. cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: this machine has no CUDA device; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        parser.error(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {name}: only cpu and cuda are supported")


# --------------------------------------------------------------------------------------------------
# 2. Data: each set is held as one uint8 tensor [N, C, H, W] and scaled to [-1, 1] per batch.
# --------------------------------------------------------------------------------------------------

# name: (channels, image size, what torchvision expects under --data-dir)
DATASETS = {
    "mnist": (1, 28, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    "fashionmnist": (1, 28, "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"),
    "cifar10": (3, 32, "cifar-10-batches-py/ (or cifar-10-python.tar.gz)"),
    "svhn": (3, 32, "train_32x32.mat and test_32x32.mat"),
    "digits": (1, 28, "nothing (bundled with scikit-learn)"),
}


def load_dataset(name, data_dir, train=True):
    """Return (images uint8 [N, C, H, W], labels int64 [N]) for a train or test split."""
    if name not in DATASETS:
        raise CEBMError(f"unknown dataset '{name}'; choose one of {', '.join(sorted(DATASETS))}")
    if name == "digits":
        return _load_digits(train)
    import torchvision.datasets as tvd
    try:
        with data_lock(data_dir):
            return _load_torchvision(tvd, name, data_dir, train)
    except OSError as e:  # URLError included
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return _load_from_local_copy(name, data_dir, train)
        error = e
    except RuntimeError as e:
        error = e
    raise CEBMError(f"{name}: data not found in '{data_dir}' and could not be downloaded ({reason(error)}). "
                    f"Put {DATASETS[name][2]} under '{data_dir}', or run once with internet access.")


def data_lock_path(data_dir):
    key = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"cebm-data-{os.getuid()}-{key}.lock"


@contextlib.contextmanager
def data_lock(data_dir):
    """One process at a time finds, downloads or extracts the files of a data folder: runs started side by
    side (run_all.sh's cells, a run and its probe's OOD set in another) would otherwise read a file that
    another process is still writing. A lock file per folder and user in the temp folder (POSIX only)."""
    try:
        import fcntl
        f = open(data_lock_path(data_dir), "a")  # noqa: SIM115
    except (ImportError, OSError):  # no fcntl (Windows) or no writable temp folder: go on unlocked
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _load_from_local_copy(name, data_dir, train):
    """A read-only --data-dir (e.g. a shared copy of the .gz files): extract from a copy in ./data."""
    local = Path("data")
    if Path(data_dir).resolve() == local.resolve():
        raise CEBMError(f"{name}: cannot write to {data_dir} to extract the data files")
    sub = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}.get(name)
    if sub is None:
        raise CEBMError(f"{name}: {data_dir} is read-only; copy it to a writable folder")
    print(f"note: {data_dir} is read-only; copying {sub}/raw to {local}/{sub}/raw", file=sys.stderr)
    with data_lock(local):
        shutil.copytree(Path(data_dir) / sub / "raw", local / sub / "raw", dirs_exist_ok=True)
        os.chmod(local / sub / "raw", 0o755)
        for f in (local / sub / "raw").iterdir():
            os.chmod(f, 0o644)
    return load_dataset(name, local, train)


def reason(e):
    """What went wrong, in words, for a one-line message (not the exception's class name)."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return f"no network: {e.reason}"
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return (text.strip().splitlines() or ["unknown error"])[0][:160]


def _load_torchvision(tvd, name, root, train):
    if name in ("mnist", "fashionmnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(root, train=train, download=True)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    if name == "cifar10":
        ds = tvd.CIFAR10(root, train=train, download=True)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
        return images, torch.tensor(ds.targets, dtype=torch.long)
    ds = tvd.SVHN(root, split="train" if train else "test", download=True)  # labels: '10' -> 0
    return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels).long()


def _load_digits(train):
    """scikit-learn's 8x8 digits (1797 images, values 0-16), resized to 28x28, fixed 80/20 split."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(d.target).long()
    perm = torch.from_numpy(np.random.RandomState(0).permutation(len(labels)))
    cut = int(0.8 * len(labels))
    keep = perm[:cut] if train else perm[cut:]
    return images[keep], labels[keep]


def to_model_range(images_uint8):
    """uint8 [0, 255] -> float [-1, 1], the range of the data and of the uniform SGLD initialisation."""
    return images_uint8.float() / 127.5 - 1.0


def uniform_noise(shape, device):
    """The SGLD initial distribution U(-1, 1) (Algorithm 1)."""
    return torch.rand(shape, device=device) * 2 - 1


# --------------------------------------------------------------------------------------------------
# 3. Encoder t_θ(x): Appendix C, Table 2 (also the trunk of the VAE, IGEBM and BiGAN baselines)
# --------------------------------------------------------------------------------------------------

def activation(name):
    return nn.SiLU() if name == "silu" else nn.LeakyReLU(0.2)


# Conv widths and hidden FC size per (--arch, image size). "paper" is Table 2; "code" is what the official
# code trains by default (camera-ready train_ebm.py and its training scripts).
ENCODER_SIZES = {("paper", 28): ((64, 64, 32, 32), 128), ("paper", 32): ((64, 128, 256, 512), 128),
                 ("code", 28): ((32, 32, 64, 64), 256), ("code", 32): ((64, 128, 256, 512), 1024)}


class Encoder(nn.Module):
    """3x3 conv (stride 1), three 4x4 stride-2 convs, FC hidden, FC out_dim (Table 2).

    With arch="paper", 28x28x1 inputs use widths 64-64-32-32 and reach a 3x3 map; 32x32x3 inputs use
    64-128-256-512 and reach a 4x4 map; the hidden FC has 128 units (ENCODER_SIZES has "code").
    """

    def __init__(self, channels, image_size, out_dim, act="silu", hidden_act=None, arch="paper"):
        super().__init__()
        w, hidden = ENCODER_SIZES[(arch, 28 if image_size == 28 else 32)]
        side = image_size // 8  # 28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4
        self.conv = nn.Sequential(
            nn.Conv2d(channels, w[0], 3, stride=1, padding=1), activation(act),
            nn.Conv2d(w[0], w[1], 4, stride=2, padding=1), activation(act),
            nn.Conv2d(w[1], w[2], 4, stride=2, padding=1), activation(act),
            nn.Conv2d(w[2], w[3], 4, stride=2, padding=1), activation(act),
            nn.Flatten(),
        )
        self.hidden = nn.Sequential(nn.Linear(w[3] * side * side, hidden), hidden_act or activation(act))
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x):
        return self.out(self.hidden(self.conv(x)))


# --------------------------------------------------------------------------------------------------
# 4. Conjugate biases: log-partition A, energy, posterior (Section 3, Appendix A)
# --------------------------------------------------------------------------------------------------
# Per latent dimension, η(z) = (z, z²) and λ = (λ1, λ2) with λ2 < 0. With base measure h(z) = π^(-1/2),
# p(z | λ) = h(z) exp(λ1 z + λ2 z² - A(λ)) is the Gaussian N(-λ1 / 2λ2, -1 / 2λ2).

def gaussian_log_partition(nat1, nat2):
    """A(λ) = -λ1² / (4 λ2) - ½ log(-λ2)   (Appendix A.1)."""
    return -nat1 ** 2 / (4 * nat2) - 0.5 * torch.log(-nat2)


def natural_to_mean_var(nat1, nat2):
    """Mean and variance of the Gaussian with natural parameters (λ1, λ2)."""
    return -nat1 / (2 * nat2), -1 / (2 * nat2)


def mean_std_to_natural(mean, std):
    """λ = (μ / σ², -1 / (2σ²))   (Eq. 10)."""
    return mean / std ** 2, -0.5 / std ** 2


class CEBM(nn.Module):
    """Shared part of both biases: the encoder's neural sufficient statistics t_θ(x) (Eq. 5)."""

    def __init__(self, channels, image_size, latent_dim=128, act="silu", arch="paper"):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(channels, image_size, 2 * latent_dim, act, arch=arch)
        # Start t2 = -softplus(-5) ≈ -0.007, so E(x) ≈ 0 at initialisation, where the energy L2
        # penalty is smallest; from softplus(0) = 0.69 a CPU-sized run spends its budget shrinking it.
        with torch.no_grad():
            self.encoder.out.bias[latent_dim:].fill_(-5.0)

    def statistics(self, x):
        """t_θ(x) = (t1, t2), each [B, K]. t2 = -softplus(.) <= 0, so λ2 + t2 < 0 for any valid bias:
        like a real Gaussian likelihood, an observation can only add precision to the posterior."""
        t1, t2 = self.encoder(x).chunk(2, dim=-1)
        return t1, -F.softplus(t2)


class GaussianCEBM(CEBM):
    """CEBM with a spherical Gaussian bias, λ = (0, -½) per dimension (Appendix A.1)."""

    def __init__(self, channels, image_size, latent_dim=128, act="silu", arch="paper"):
        super().__init__(channels, image_size, latent_dim, act, arch)
        nat1, nat2 = mean_std_to_natural(torch.zeros(latent_dim), torch.ones(latent_dim))  # Eq. 10
        self.register_buffer("prior_nat1", nat1)
        self.register_buffer("prior_nat2", nat2)

    def posterior_natural(self, x):
        """λ̃ = λ + t_θ(x)   (Eq. 9)."""
        t1, t2 = self.statistics(x)
        return self.prior_nat1 + t1, self.prior_nat2 + t2

    def energy(self, x):
        """E(x) = -Σ_k [A(λ̃_k) - A(λ_k)]: minus the unnormalised log marginal (Eq. 9, 11)."""
        nat1, nat2 = self.posterior_natural(x)
        log_ratio = gaussian_log_partition(nat1, nat2) - gaussian_log_partition(self.prior_nat1, self.prior_nat2)
        return -log_ratio.sum(-1)

    def joint_energy(self, x, z):
        """E(x, z) = -(λ + t_θ(x))ᵀ η(z) + A(λ)   (Eq. 7). z: [..., B, K] -> [..., B]."""
        nat1, nat2 = self.posterior_natural(x)
        a_prior = gaussian_log_partition(self.prior_nat1, self.prior_nat2)
        return -(nat1 * z + nat2 * z ** 2 - a_prior).sum(-1)

    def posterior(self, x):
        """p(z | x) = N(mean, var) with natural parameters λ + t_θ(x)   (Eq. 9)."""
        mean, var = natural_to_mean_var(*self.posterior_natural(x))
        return {"mean": mean, "var": var}

    def latent(self, x):
        """The representation for downstream tasks: the posterior mean E[z | x]."""
        return self.posterior(x)["mean"]


class GMMCEBM(CEBM):
    """CEBM with a mixture-of-Gaussians bias over (y, z), uniform weights (Appendix A.2); λ_l learned
    (prior="learned", or "learned-unit", which starts every σ at init_std, default 1) or fixed at the official code's
    default (prior="fixed").

    As in the official code, all L components share the same t_θ(x); the paper's t_{θ,l,k}
    notation would allow one per component.
    """

    def __init__(self, channels, image_size, latent_dim=128, components=50, act="silu", latent_mode="mean",
                 arch="paper", prior="learned", init_std=1.0):
        super().__init__(channels, image_size, latent_dim, act, arch)
        self.latent_mode = latent_mode
        if prior in ("learned", "learned-unit"):
            # The official GMM-VAE's initialisation: means near 0, standard deviations in [1, 6], learned.
            # learned-unit starts every σ at 1: a wide component (σ = 6, precision 1/36) makes A(λ_l + t_θ(x))
            # 36x more sensitive to t1 than the Gaussian bias, the direction in which GMM runs diverged.
            self.means = nn.Parameter(0.31 * torch.randn(components, latent_dim))
            log_stds = torch.log(1 + 5 * torch.rand(components, latent_dim))
            # With means s·μ and statistics (t1 / s, t2 / s²), a σ = s prior is the σ = 1 model in z / s: the same
            # p(x), a latent s times larger (tested). The means are not rescaled here, so training differs.
            unit = torch.full_like(log_stds, math.log(init_std))
            self.log_stds = nn.Parameter(log_stds if prior == "learned" else unit)
        else:
            # The official CEBM-GMM's default: means ~ N(0, 1), σ = 1, never learned (buffers, same keys).
            self.register_buffer("means", torch.randn(components, latent_dim))
            self.register_buffer("log_stds", torch.zeros(components, latent_dim))
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))

    def prior_natural(self):
        """λ_l for every component, each [L, K]   (Eq. 10 per component)."""
        return mean_std_to_natural(self.means, self.log_stds.exp())

    def posterior_natural(self, x):
        """λ̃_l = λ_l + t_θ(x), each [B, L, K]."""
        t1, t2 = self.statistics(x)
        nat1, nat2 = self.prior_natural()
        return nat1 + t1[:, None], nat2 + t2[:, None]

    def log_joint_xy(self, x):
        """log p(x, y=l) + log Z_θ = Σ_k [A(λ̃_lk) - A(λ_lk)] + log π_l, [B, L]   (Appendix A.2)."""
        post1, post2 = self.posterior_natural(x)
        log_ratio = gaussian_log_partition(post1, post2) - gaussian_log_partition(*self.prior_natural())
        return log_ratio.sum(-1) + self.log_weights

    def energy(self, x):
        """E(x) = -log Σ_l exp(Σ_k [A(λ̃_lk) - A(λ_lk)] + log π_l)   (Eq. 12)."""
        return -torch.logsumexp(self.log_joint_xy(x), dim=-1)

    def joint_energy(self, x, z):
        """E(x, z) = -log Σ_l exp(-E(x, y=l, z)), E(x, y, z) from Appendix A.2 plus -log π_l.
        z: [..., B, K] -> [..., B]."""
        post1, post2 = self.posterior_natural(x)                      # [B, L, K]
        a_prior = gaussian_log_partition(*self.prior_natural())      # [L, K]
        z = z.unsqueeze(-2)                                          # [..., B, 1, K]
        neg_e_y = (post1 * z + post2 * z ** 2 - a_prior).sum(-1) + self.log_weights  # [..., B, L]
        return -torch.logsumexp(neg_e_y, dim=-1)

    def posterior(self, x):
        """p(y | x) ∝ exp(log_joint_xy) and p(z | x, y=l) = N(λ̃_l)   (Appendix A.2)."""
        y_probs = torch.softmax(self.log_joint_xy(x), dim=-1)
        mean, var = natural_to_mean_var(*self.posterior_natural(x))
        return {"y_probs": y_probs, "mean": mean, "var": var}

    def latent(self, x):
        """mode 'mean': E[z | x] = Σ_l p(y=l | x) E[z | x, y=l], the posterior mean of the mixture
        (continuous in x, so nearest neighbours and linear probes see no jumps).
        mode 'map': the mean of the most probable component (the official code)."""
        post = self.posterior(x)
        if self.latent_mode == "map":
            best = post["y_probs"].argmax(-1)
            return post["mean"][torch.arange(len(best), device=best.device), best]
        return (post["y_probs"].unsqueeze(-1) * post["mean"]).sum(1)


def build_model(cfg):
    """The CEBM a config describes (cfg: argparse.Namespace or the dict saved in a checkpoint)."""
    c = vars(cfg) if isinstance(cfg, argparse.Namespace) else cfg
    channels, size, _ = DATASETS[c["dataset"]]
    arch = c.get("arch", OLDER_DEFAULTS["arch"])
    if c["bias"] == "gmm":
        return GMMCEBM(channels, size, c["latent_dim"], c["components"], c["act"], c["gmm_latent"], arch,
                       c.get("gmm_prior", OLDER_DEFAULTS["gmm_prior"]),
                       c.get("gmm_init_std", OLDER_DEFAULTS["gmm_init_std"]))
    return GaussianCEBM(channels, size, c["latent_dim"], c["act"], arch)


# --------------------------------------------------------------------------------------------------
# 5. SGLD sampler and replay buffer (Section 2.1, Appendix D/E)
# --------------------------------------------------------------------------------------------------

def sgld(energy, x, steps, step_size, noise_std):
    """x ← x - step_size · ∂E/∂x + noise_std · ε,  ε ~ N(0, I)   (Eq. 2's SGLD update; Algorithm 1).

    The paper's form is step_size = α/2 and noise_std = √α. No host sync happens in this loop.
    """
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        grad, = torch.autograd.grad(energy(x).sum(), x)
        # randn(shape), not randn_like(x): the noise is then laid out by index, so a channels-last chain
        # gets the same noise on the same pixels as a contiguous one.
        x = x - step_size * grad + noise_std * torch.randn(x.shape, device=x.device, dtype=x.dtype)
    return x.detach()


class ReplayBuffer:
    """Persistent SGLD chains on the device: each draw continues a stored chain, or with probability
    `reinit` restarts it from U(-1, 1) (Appendix D: 95 % / 5 %)."""

    def __init__(self, size, shape, device, reinit=0.05):
        self.images = uniform_noise((size, *shape), device)
        self.reinit = reinit

    def sample(self, n):
        # Distinct chains (no replacement): with duplicates, which copy update() keeps is undefined.
        idx = torch.randperm(len(self.images), device=self.images.device)[:n]
        x = self.images[idx]
        restart = torch.rand(n, device=x.device) < self.reinit
        x = torch.where(restart[:, None, None, None], uniform_noise(x.shape, x.device), x)
        return x, idx

    def update(self, idx, x):
        self.images[idx] = x


def memory_format(cfg):
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def make_adam(cfg, params):
    """Adam at --lr and --adam-beta1 (β₂ stays torch's 0.999), for every model trained at --lr."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.adam_beta1, 0.999))


def make_sampler(cfg, model):
    """The SGLD sampler of a run: x_init -> x after cfg.sgld_steps steps.

    Outside --eager, the weights stop requiring gradients while the chain runs (it needs ∂E/∂x only)
    and the chain lives in the model's memory format.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    fmt = memory_format(cfg)

    def sampler(x):
        if cfg.eager:
            return sgld(model.energy, x, cfg.sgld_steps, cfg.sgld_step_size, cfg.sgld_noise)
        for p in trainable:
            p.requires_grad_(False)
        x = sgld(model.energy, x.contiguous(memory_format=fmt), cfg.sgld_steps, cfg.sgld_step_size,
                 cfg.sgld_noise)
        for p in trainable:
            p.requires_grad_(True)
        return x
    return sampler


# --------------------------------------------------------------------------------------------------
# 6. PCD training (Algorithm 1) and the run bookkeeping every model shares
# --------------------------------------------------------------------------------------------------

def energy_reg_at(cfg, iteration):
    """The energy L2 coefficient at an iteration (--energy-reg, then --energy-reg-late if given)."""
    late = cfg.energy_reg_late
    return late if late is not None and iteration >= cfg.energy_reg_from else cfg.energy_reg


def pcd_step(cfg, model, optimizer, buffer, sampler):
    """One iteration of Algorithm 1 as a function of a data batch x (already scaled to [-1, 1]).

    loss = mean E(x_data) - mean E(x_model) + reg · (mean E(x_data)² + mean E(x_model)²):
    its gradient is the contrastive estimate of -∇θ log p(x) (Eq. 1-2) plus the energy L2 penalty.
    The loss is smallest at E_data = -1/(2 reg), E_model = 1/(2 reg): reg bounds E_data - E_model at -1/reg.
    """
    def step(x, it=0):
        reg = energy_reg_at(cfg, it)
        x_data = (x + cfg.data_noise * torch.randn_like(x)).contiguous(memory_format=memory_format(cfg))
        x_init, idx = buffer.sample(len(x))
        x_model = sampler(x_init)
        buffer.update(idx, x_model)
        e_data, e_model = model.energy(x_data), model.energy(x_model)
        loss = e_data.mean() - e_model.mean() + reg * (e_data.pow(2).mean() + e_model.pow(2).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        metrics = {"E_data": e_data.mean().detach(), "E_model": e_model.mean().detach()}
        metrics["E_diff"] = metrics["E_data"] - metrics["E_model"]
        return metrics, x_model
    return step


class WeightAverage:
    """--ema: θ_avg <- d·θ_avg + (1 - d)·θ after every optimizer step (Polyak averaging). It reads the
    model and never writes to it, so training follows the same trajectory with or without it; it only
    smooths the step-to-step noise of the weights that the probe, best.pt and the exported weights see."""

    def __init__(self, model, decay):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    def decay_at(self, iteration):
        """d grows as (1 + t) / (10 + t) up to --ema, so the average spans about the last t / 9 steps until
        then: a fixed 0.999 would still give the random initial weights 22 % after 1,500 steps."""
        return min(self.decay, (1 + iteration) / (10 + iteration))

    @torch.no_grad()
    def update(self, model, iteration):
        d = self.decay_at(iteration)
        for avg, now in zip(self.model.parameters(), model.parameters()):
            avg.lerp_(now, 1 - d)
        for avg, now in zip(self.model.buffers(), model.buffers()):  # BatchNorm statistics, priors: copied
            avg.copy_(now)


def config_dict(cfg):
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path):
    """torch.save to a temp file, then rename: a reader never sees half a file, a crash never loses the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path, model, optimizers, buffer, iteration, seconds, config, reached_paper=None, ema=None,
                    aux=None):
    """Everything a run needs to continue exactly, written atomically (aux: VERA's generator)."""
    atomic_save({
        "aux": None if aux is None else aux.state_dict(),
        "config": config, "iteration": iteration, "seconds": seconds, "reached_paper": reached_paper,
        "model": model.state_dict(), "ema": None if ema is None else ema.model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "buffer": None if buffer is None else buffer.images,
        "rng": rng_state(),
    }, path)


def load_checkpoint(path):
    """Load a checkpoint dict onto the CPU, with a one-line error for missing or corrupt files."""
    path = Path(path)
    if path.is_dir():  # a run folder, or a folder of shipped weights
        path = path / "ckpt.pt" if (path / "ckpt.pt").exists() or not (path / "weights.pt").exists() \
            else path / "weights.pt"
    if not path.exists():
        raise CEBMError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, wrong file type...
        raise CEBMError(f"checkpoint {path} is corrupt or not a checkpoint ({reason(e)})") from None
    if not isinstance(ckpt, dict) or not {"config", "model", "iteration"} <= ckpt.keys():
        raise CEBMError(f"checkpoint {path} is not a checkpoint written by this code")
    return ckpt


def weights_only(config, iteration, seconds, state_dict):
    """What evaluate.py and --sample need (weights, config, iteration, training seconds), without optimizer,
    buffer or RNG: a fraction of a checkpoint's size."""
    return {"config": config, "iteration": iteration, "seconds": seconds,
            "model": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}


def delivered_weights(ckpt):
    """The weights a run delivers: the --ema average when the run kept one, else the trained weights."""
    return ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]


def export_weights(run, dest):
    """--export: the weights of a run folder's checkpoint (or of a best.pt/weights.pt file) as a weights file."""
    ckpt = load_checkpoint(run)
    atomic_save(weights_only(ckpt["config"], ckpt["iteration"], ckpt["seconds"], delivered_weights(ckpt)), dest)
    print(f"wrote {dest} ({Path(dest).stat().st_size / 2 ** 20:.2f} MB, iteration {ckpt['iteration']})")


def load_weights(model, state, path):
    """load_state_dict with one line instead of a key list when the code's model has changed."""
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CEBMError(f"checkpoint {path} does not fit this code's {type(model).__name__} (written by an "
                        f"older version?); retrain it into a fresh --out-dir") from None


def load_model(path, device="cpu"):
    """(model in eval mode, config) from a run folder or a ckpt.pt of cebm.py."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"])
    load_weights(model, delivered_weights(ckpt), path)
    return model.to(device).eval(), ckpt["config"]


def check_resumable(saved, cfg):
    """A resumed run must be the same experiment; only budget and bookkeeping flags may change."""
    now = config_dict(cfg)

    def setting(config, key):
        return config.get(key, OLDER_DEFAULTS.get(key))
    # A flag newer than the checkpoint (absent from it) is no change while it is off (0, False, None).
    diff = [k for k in sorted(set(saved) | set(now)) if k not in RESUMABLE_CHANGES
            and setting(saved, k) != setting(now, k) and not (k not in saved and not now.get(k))]
    if diff:
        pairs = ", ".join(f"{k}: {setting(saved, k)!r} -> {setting(now, k)!r}" for k in diff)
        raise CEBMError(f"cannot resume {cfg.out_dir}: settings differ from its checkpoint ({pairs}); "
                        f"use the same flags or another --out-dir")


def read_metrics(path):
    """The metrics.csv of a run as a list of dicts of floats."""
    with open(path) as f:
        return [{k: float(v) if v else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def _trim_metrics(path, iteration):
    """Drop log rows written after the checkpoint a run resumes from."""
    if not path.exists():
        return
    with open(path) as f:
        rows = list(csv.reader(f))
    if not rows:  # empty: a run that failed before its first row
        path.unlink()
        return
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= iteration]
    if len(kept) == len(rows):  # nothing to drop: leave the file untouched (a finished run may be read-only)
        return
    tmp = path.with_name(path.name + ".tmp")  # temp file + rename: a failed write never truncates the log
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    os.replace(tmp, path)


def restore(cfg, ckpt_path, model, optimizers, buffer, ema=None, aux=None):
    """Load a run's checkpoint into model, optimizers, buffer and weight average, and the RNG state, for --resume.
    Returns (iteration, training seconds, iteration the paper's row was reached or None)."""
    if not ckpt_path.exists():
        if cfg.resume:
            print(f"note: --resume: no checkpoint in {ckpt_path.parent} yet; starting a new run", file=sys.stderr)
        return 0, 0.0, None
    if not cfg.resume:
        raise CEBMError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out-dir")
    ckpt = load_checkpoint(ckpt_path)
    check_resumable(ckpt["config"], cfg)
    load_weights(model, ckpt["model"], ckpt_path)
    if ema is not None:
        load_weights(ema.model, ckpt["ema"], ckpt_path)
    if aux is not None:
        load_weights(aux, ckpt["aux"], ckpt_path)
    for name, opt in optimizers.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    if buffer is not None:
        buffer.images = ckpt["buffer"].to(buffer.images.device)
    set_rng_state(ckpt["rng"])
    return ckpt["iteration"], ckpt["seconds"], ckpt.get("reached_paper")


def prepare_run_folder(out, config, start):
    """Create the run folder and its config.json; drop log rows written after the checkpoint (all rows of
    a run that starts afresh), so metrics.csv and probe.csv continue where the checkpoint is."""
    try:
        (out / "samples").mkdir(parents=True, exist_ok=True)
        tmp = out / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2) + "\n")
        os.replace(tmp, out / "config.json")
    except OSError as e:
        raise CEBMError(f"cannot write the run folder {out} ({reason(e)}); choose another --out-dir") from None
    trim_logs(out, start if start else -1)


def trim_logs(out, iteration):
    for name in ("metrics.csv", "probe.csv"):
        _trim_metrics(out / name, iteration)


def lr_factor(cfg, iteration):
    """Learning-rate multiplier at an iteration: linear warm-up, then exponential decay. A function of
    the iteration alone, so a resumed run follows the same schedule."""
    warm = min(1.0, (iteration + 1) / cfg.warmup) if cfg.warmup else 1.0
    return warm * (0.5 ** (iteration / cfg.lr_half_life) if cfg.lr_half_life else 1.0)


def set_lr(cfg, optimizers, iteration):
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])  # saved with the optimizer, so resume keeps it
            group["lr"] = group["initial_lr"] * lr_factor(cfg, iteration)


def train(cfg, model, step, optimizers, buffer=None, aux=None):
    """The loop shared by every model: batches from the on-device training set, a metrics log,
    sample grids, atomic checkpoints, exact resume, and a stop with a clear message on divergence.

    step(x, it) runs iteration it on a batch x in [-1, 1] and returns (metrics: dict of 0-d tensors,
    images to show). Metrics stay on the device; they are read (one host sync) every log_every steps.
    aux: a module trained beside the model (VERA's generator), checkpointed but not delivered.
    """
    device = torch.device(cfg.device)
    out = Path(cfg.out_dir)
    ckpt_path, log_path = out / "ckpt.pt", out / "metrics.csv"
    images, labels = load_dataset(cfg.dataset, cfg.data_dir, train=True)  # before anything is written
    images = images.to(device)
    ema = WeightAverage(model, cfg.ema) if cfg.ema else None
    start, seconds_before, reached_paper = restore(cfg, ckpt_path, model, optimizers, buffer, ema, aux)
    delivered = ema.model if ema else model  # what the probe measures and best.pt holds
    done_why = stop_reason(cfg, start, seconds_before, reached_paper)
    if done_why:
        with contextlib.suppress(OSError):  # rows of a longer try that was killed; read-only folders stay as they are
            trim_logs(out, start)
        print(f"{out} already finished ({start} iterations; {done_why})", file=sys.stderr)
        return
    if start:
        print(f"resuming {out} from iteration {start}", file=sys.stderr)
    config = config_dict(cfg)
    prepare_run_folder(out, config, start)
    probe = Probe(cfg, images, labels, out) if cfg.probe_every else None
    probe_time = 0.0  # excluded from the run's seconds: they count training only

    def elapsed():
        return seconds_before + time.time() - t0 - probe_time

    def save(done):
        save_checkpoint(ckpt_path, model, optimizers, buffer, done, elapsed(), config, reached_paper, ema, aux)

    def measure(done):
        nonlocal probe_time, reached_paper
        row = probe(delivered, done, elapsed())
        best = probe.is_best(row)  # the probe's best model so far (chosen on training images)
        if best or cfg.snapshots:
            weights = weights_only(config, done, elapsed(), delivered.state_dict())
            if best:
                atomic_save(weights, out / "best.pt")
            if cfg.snapshots:
                atomic_save(weights, out / "snapshots" / f"it{done:06d}.pt")
        probe_time += row["probe_seconds"]
        if reached_paper is None and probe.reached_paper(row):
            reached_paper = done

    log = MetricsLog(log_path, device, cfg.diverge_at)
    bar = tqdm(total=cfg.iters, initial=start, disable=cfg.no_progress, dynamic_ncols=True)
    t0 = time.time()
    last_good = start
    try:
        if probe and start == 0:
            measure(0)
        for it in range(start, cfg.iters):
            x = to_model_range(images[torch.randint(len(images), (cfg.batch_size,), device=device)])
            if cfg.warmup or cfg.lr_half_life:
                set_lr(cfg, optimizers, it)
            metrics, shown = step(x, it)
            if ema:
                ema.update(model, it)
            log.add(metrics)
            done = it + 1
            bar.update(1)
            finished = stop_reason(cfg, done, elapsed(), reached_paper) is not None
            if done % cfg.log_every == 0 or finished or done % cfg.ckpt_every == 0:
                if not log.write(done, elapsed()):
                    raise Diverged(f"training diverged by iteration {done} ({log.describe()}); the last good "
                                   f"checkpoint (iteration {last_good}) is kept in {ckpt_path}. Try a smaller "
                                   f"--lr or --sgld-step-size, or a larger --energy-reg.")
                bar.set_postfix({k: f"{log.last[k]:.3g}" for k in metrics})
            if done % cfg.sample_every == 0 or finished:
                save_image(shown[:64].float(), out / "samples" / f"iter_{done:06d}.png", nrow=8,
                           normalize=True, value_range=(-1, 1))
            if probe and (done % cfg.probe_every == 0 or finished):
                measure(done)
                finished = stop_reason(cfg, done, elapsed(), reached_paper) is not None
            if done % cfg.ckpt_every == 0 or finished:
                save(done)
                last_good = done
            if finished:
                break
    finally:
        bar.close()
        log.close()
    why = stop_reason(cfg, done, elapsed(), reached_paper) or f"{done} iterations"
    print(f"finished {out} ({why}): {log.describe(with_clock=True)}", file=sys.stderr)


class MetricsLog:
    """metrics.csv: the step's metrics summed on the device and, every log interval, averaged into one row
    (the loop's only host sync), with a divergence flag that is read at the same time."""

    def __init__(self, path, device, diverge_at):
        self.new = not path.exists()
        self.file = open(path, "a", newline="")
        self.writer, self.sums, self.count, self.last = None, {}, 0, {}
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.diverge_at = diverge_at

    def add(self, metrics):
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v
            self.bad = self.bad | ~torch.isfinite(v) | (v.abs() > self.diverge_at)
        self.count += 1

    def write(self, iteration, seconds):
        """Write a row; False (and no row) once a metric was non-finite or beyond --diverge-at."""
        row = {"iteration": iteration, **{k: (v / self.count).item() for k, v in self.sums.items()},
               "seconds": round(seconds, 2)}
        self.last, self.sums, self.count = row, {}, 0
        if self.bad.item():
            return False
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if self.new:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()
        return True

    def describe(self, with_clock=False):
        keep = [k for k in self.last if with_clock or k not in ("iteration", "seconds")]
        return ", ".join(f"{k}={self.last[k]:.4g}" for k in keep)

    def close(self):
        self.file.close()


def stop_reason(cfg, iteration, seconds, reached_paper):
    """Why a run at this point is done, or None while it should go on."""
    if iteration >= cfg.iters:
        return f"all {cfg.iters} iterations"
    if cfg.max_minutes and seconds >= 60 * cfg.max_minutes:
        return f"--max-minutes {cfg.max_minutes:g} spent"
    if cfg.stop_at_paper and reached_paper is not None:
        return f"the probe reached the paper's Table 1 row at iteration {reached_paper}"
    return None


# --------------------------------------------------------------------------------------------------
# 6b. VERA: how the official code trains its GMM-CEBM (not the paper's method; README "Differences")
# --------------------------------------------------------------------------------------------------
# The paper trains every CEBM by PCD (Sec. 2.1). The camera-ready code's train_cebm_gmm.sh trains the GMM-CEBM
# with VERA (Grathwohl et al., 2021): a generator q(x) replaces the SGLD chains and is trained to have low
# energy and high entropy. --trainer vera runs it with the same model, loop, probe and checkpoints as PCD.

class VERAGenerator(nn.Module):
    """q(x) = ∫ N(z; 0, I) CB(x; logits g(z)) dz on images in [0, 1] (CB: continuous Bernoulli), g a stack of
    transposed convolutions from a 1x1 map with BatchNorm and ReLU (the official Generator_VERA_GAN and the
    widths of its MNIST and CIFAR-10 scripts), and VERA's proposal ξ(z | z0) = N(z0, diag s²), s learned."""

    def __init__(self, channels, image_size, latent_dim=128):
        super().__init__()
        if image_size == 28:  # 1 -> 2 -> 4 -> 7 -> 14 -> 28
            widths, kernels, strides = (64, 64, 32, 32, channels), (4, 4, 3, 4, 4), (1, 2, 2, 2, 2)
        else:                 # 1 -> 2 -> 4 -> 8 -> 16 -> 32
            widths, kernels, strides = (512, 256, 128, 64, channels), (4,) * 5, (2,) * 5
        layers, width_in = [], latent_dim
        for i, (width, k, stride) in enumerate(zip(widths, kernels, strides)):
            layers.append(nn.ConvTranspose2d(width_in, width, k, stride, padding=1))
            if i < len(widths) - 1:
                layers += [nn.BatchNorm2d(width), nn.ReLU()]
            width_in = width
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        self.xi_log_std = nn.Parameter(torch.full((latent_dim,), math.log(0.1)))  # the code's xee_init_sigma

    def logits(self, z):
        """g(z) for z [..., K] -> [..., C, H, W]."""
        out = self.net(z.reshape(-1, self.latent_dim, 1, 1))
        return out.reshape(*z.shape[:-1], *out.shape[1:])

    def log_joint(self, x, z):
        """log p(z) + log q(x | z), and the logits; z [..., B, K], x [B, C, H, W] -> [..., B]."""
        logits = self.logits(z)
        log_lik = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x).flatten(-3).sum(-1)
        return log_lik - 0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1), logits


def entropy_score(gen, x, z0, samples):
    """∇_x log q(x) = E_{q(z|x)}[∇_x log q(x | z)], by self-normalised importance sampling from ξ(z | z0),
    where z0 made x. For the continuous Bernoulli, ∇_x log CB(x; logits) = logits."""
    std = gen.xi_log_std.exp()
    z = z0 + std * torch.randn(samples, *z0.shape, device=z0.device, dtype=z0.dtype)  # [S, B, K]
    log_xi = (-0.5 * ((z - z0) / std) ** 2 - gen.xi_log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_joint, logits = gen.log_joint(x, z)
    weights = torch.softmax(log_joint - log_xi, dim=0)  # over the S samples
    return (weights[..., None, None, None] * logits).sum(0)


def vera_step(cfg, model, gen, opt_ebm, opt_gen, opt_xi):
    """One VERA iteration, in the order of the official train_vera.py, on images u in [0, 1]:
    1. EBM: mean E(u_data) - mean E(u_gen) + γ/2 · mean ||∂E/∂u_data||², u_gen ~ q (no chains, no buffer);
    2. ξ: one step up the ELBO  E_ξ[log p(z) + log q(u_gen | z)] + H(ξ)  around the z0 that made u_gen;
    3. generator: down  mean E(u_gen) - λ·H(q), whose gradient through u_gen = u(z0) needs ∇_u log q(u)
       (entropy_score): the surrogate  mean E(u_gen) + λ · score·u_gen  has the same gradient.
    λ = --entropy-weight, γ = --grad-penalty. The code has no energy L2; --energy-reg R > 0 adds PCD's
    R·(mean E_data² + mean E_gen²), which keeps the energies' level from drifting (VERA fixes only differences).
    """
    def energy(u):  # the CEBM reads images in [-1, 1]
        return model.energy(2 * u - 1)
    ebm_params, gen_params = list(model.parameters()), list(gen.net.parameters())

    def step(x, it=0):
        u_data = ((x + cfg.data_noise * torch.randn_like(x) + 1) / 2).requires_grad_(True)
        z0 = torch.randn(len(x), gen.latent_dim, device=x.device, dtype=x.dtype)
        u_gen = torch.distributions.ContinuousBernoulli(logits=gen.logits(z0)).rsample()
        e_data, e_model = energy(u_data), energy(u_gen.detach())
        grad, = torch.autograd.grad(e_data.sum(), u_data, create_graph=True)
        loss = e_data.mean() - e_model.mean() + cfg.grad_penalty / 2 * grad.flatten(1).pow(2).sum(1).mean()
        loss = loss + energy_reg_at(cfg, it) * (e_data.pow(2).mean() + e_model.pow(2).mean())
        opt_ebm.zero_grad(set_to_none=True)
        loss.backward(inputs=ebm_params)
        opt_ebm.step()

        z = z0 + gen.xi_log_std.exp() * torch.randn_like(z0)
        elbo = gen.log_joint(u_gen.detach(), z)[0].mean() + gen.xi_log_std.sum()  # H(ξ) up to a constant
        opt_xi.zero_grad(set_to_none=True)
        (-elbo).backward(inputs=[gen.xi_log_std])
        opt_xi.step()

        with torch.no_grad():
            score = entropy_score(gen, u_gen, z0, cfg.is_samples)
        loss_gen = energy(u_gen).mean() + cfg.entropy_weight * (score * u_gen).flatten(1).sum(1).mean()
        opt_gen.zero_grad(set_to_none=True)
        loss_gen.backward(inputs=gen_params)
        opt_gen.step()
        metrics = {"E_data": e_data.mean().detach(), "E_model": e_model.mean().detach()}
        metrics["E_diff"] = metrics["E_data"] - metrics["E_model"]
        return metrics, 2 * u_gen.detach() - 1
    return step


# --------------------------------------------------------------------------------------------------
# 7. Sampling from a trained model (Section 5.1, Fig. 2: uniform noise, 500 SGLD steps)
# --------------------------------------------------------------------------------------------------

def sample(model, n, steps, step_size, noise_std, shape, device):
    """Short-run SGLD from U(-1, 1): no replay buffer."""
    x = uniform_noise((n, *shape), device)
    for p in model.parameters():
        p.requires_grad_(False)
    return sgld(model.energy, x, steps, step_size, noise_std)


def write_samples(cfg, model, saved):
    """--sample: a grid of cfg.n_samples images after cfg.sample_steps SGLD steps (the run's own step size
    and noise), written into the run folder."""
    if not hasattr(model, "energy"):
        raise CEBMError(f"--sample draws SGLD samples from energy models; {saved['model']} has no energy")
    channels, size, _ = DATASETS[saved["dataset"]]
    x = sample(model, cfg.n_samples, cfg.sample_steps, saved["sgld_step_size"], saved["sgld_noise"],
               (channels, size, size), torch.device(cfg.device))
    path = Path(cfg.out_dir) / f"samples_{cfg.sample_steps}steps.png"
    save_image(x, path, nrow=int(math.sqrt(cfg.n_samples)), normalize=True, value_range=(-1, 1))
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------------
# 8. Measuring the representation (Table 1, Table 5) and the in-training probe
# --------------------------------------------------------------------------------------------------
# evaluate.py measures finished runs on the test sets with these functions; the probe measures the
# model while it trains, with the same functions, on a fixed validation subset of the training set.

# The paper's numbers, used only as reference lines and columns (never mixed into ours).
# Table 1: test accuracy % at 1, 10, 100 labels per class and the full training set (BiGAN: poster).
PAPER_TABLE1 = {
    "mnist": {"vae": (42, 85, 92, 95), "gmmvae": (53, 86, 93, 97), "bigan": (33, 67, 85, 91),
              "igebm": (63, 89, 95, 97), "cebm-gaussian": (67, 89, 95, 97), "cebm-gmm": (67, 91, 97, 98)},
    "fashionmnist": {"vae": (41, 63, 72, 81), "gmmvae": (49, 68, 79, 84), "bigan": (46, 65, 75, 81),
                     "igebm": (50, 70, 79, 83), "cebm-gaussian": (52, 70, 77, 83),
                     "cebm-gmm": (52, 71, 80, 85)},
    "cifar10": {"vae": (16, 22, 31, 38), "gmmvae": (19, 23, 33, 39), "bigan": (18, 30, 43, 52),
                "igebm": (16, 26, 33, 42), "cebm-gaussian": (19, 30, 42, 52), "cebm-gmm": (16, 28, 42, 51)},
    "svhn": {"vae": (13, 13, 16, 36), "gmmvae": (13, 14, 23, 56), "bigan": (11, 20, 42, 56),
             "igebm": (10, 16, 35, 49), "cebm-gaussian": (12, 25, 48, 70), "cebm-gmm": (10, 17, 39, 60)},
}
# Table 5: AUROC % of models trained on Fashion-MNIST and CIFAR-10, keyed by (score, OOD set). The paper's
# VAE rows score -log p(x) (official code); ours score log p(x) for every model.
PAPER_TABLE5 = {
    "fashionmnist": {
        "vae": {("logp", "mnist"): 50, ("logp", "emnist"): 39, ("logp", "constant"): 9,
                ("grad", "mnist"): 61, ("grad", "emnist"): 57, ("grad", "constant"): 1},
        "igebm": {("logp", "mnist"): 35, ("logp", "emnist"): 36, ("logp", "constant"): 90,
                  ("grad", "mnist"): 78, ("grad", "emnist"): 82, ("grad", "constant"): 96},
        "cebm-gaussian": {("logp", "mnist"): 37, ("logp", "emnist"): 34, ("logp", "constant"): 90,
                          ("grad", "mnist"): 82, ("grad", "emnist"): 89, ("grad", "constant"): 98},
        "cebm-gmm": {("logp", "mnist"): 56, ("logp", "emnist"): 56, ("logp", "constant"): 92,
                     ("grad", "mnist"): 56, ("grad", "emnist"): 80, ("grad", "constant"): 95},
    },
    "cifar10": {
        "vae": {("logp", "svhn"): 42, ("logp", "textures"): 58, ("logp", "constant"): 41,
                ("grad", "svhn"): 38, ("grad", "textures"): 51, ("grad", "constant"): 37},
        "igebm": {("logp", "svhn"): 45, ("logp", "textures"): 31, ("logp", "constant"): 64,
                  ("grad", "svhn"): 33, ("grad", "textures"): 17, ("grad", "constant"): 62},
        "cebm-gaussian": {("logp", "svhn"): 47, ("logp", "textures"): 32, ("logp", "constant"): 66,
                          ("grad", "svhn"): 31, ("grad", "textures"): 17, ("grad", "constant"): 54},
        "cebm-gmm": {("logp", "svhn"): 55, ("logp", "textures"): 30, ("logp", "constant"): 62,
                     ("grad", "svhn"): 40, ("grad", "textures"): 23, ("grad", "constant"): 62},
    },
}
PROTOCOLS = ("paper", "standardized")


def encode(fn, images, device, batch=500):
    """fn(x in [-1, 1]) for uint8 images, in batches, as a float64 numpy array."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(fn(to_model_range(images[i:i + batch].to(device))).double().cpu())
    return torch.cat(out).numpy()


def few_shot_indices(labels, n, seed):
    """Exactly n indices per class, drawn with the given seed."""
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                           for c in np.unique(labels)])


def few_shot_draws(labels, shots, draws, pool=None):
    """{shot: [index arrays]}: `draws` seeded draws of n labels per class from `pool` (default: all),
    or the whole pool for 'full'."""
    pool = np.arange(len(labels)) if pool is None else np.asarray(pool)
    return {s: [pool] if s == "full" else [pool[few_shot_indices(labels[pool], int(s), seed)]
                                            for seed in range(draws)] for s in shots}


def classifier(protocol):
    """'paper': the official code's LogisticRegression(solver='liblinear', max_iter=10000, random_state=0),
    one-vs-rest (current scikit-learn runs liblinear on multiclass only through OneVsRestClassifier).
    'standardized': multinomial lbfgs, for features standardised first (see few_shot)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    if protocol == "paper":
        return OneVsRestClassifier(LogisticRegression(solver="liblinear", max_iter=10_000, random_state=0))
    return LogisticRegression(max_iter=1000)


def few_shot(train_x, train_y, test_x, test_y, draws, protocol="paper"):
    """{shot: [test accuracy of each draw]}: a logistic regression fitted on train_x[idx] for every
    index array in draws[shot] (Sec. 5.2, Table 1). The 'paper' protocol fits raw features; the
    'standardized' one first scales them with train_x's mean and std (no labels used)."""
    if protocol == "standardized":
        mean, std = train_x.mean(0), train_x.std(0) + 1e-8
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    results = {}
    for shot, idxs in draws.items():
        accs = []
        for idx in idxs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings on the full set
                clf = classifier(protocol).fit(train_x[idx], train_y[idx])
            accs.append(float(clf.score(test_x, test_y)))
        results[shot] = accs
    return results


def density(model, k=100):
    """log p(x) up to a constant, as a function of x: -E(x) for energy models, the k-sample importance
    estimate for VAEs; None for models without a density (BiGAN)."""
    if hasattr(model, "energy"):
        return lambda x: -model.energy(x)
    if hasattr(model, "log_px"):
        return lambda x: model.log_px(x, k)
    return None


def score_noise(model, config):
    """Score each model on the inputs it was trained on: EBMs saw data noise (and the official code scores
    them with it), the VAEs clean images."""
    return config.get("data_noise", 0.0) if hasattr(model, "energy") else 0.0


def scores(log_p, x):
    """The two OOD scores of a batch: log p(x) and -‖∇x log p(x)‖ (Grathwohl et al. 2019)."""
    x = x.detach().requires_grad_(True)
    lp = log_p(x)
    gx, = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), -gx.flatten(1).norm(dim=1)


def ood_scores(log_p, images, noise_std, device, seed, batch=100):
    """Both scores for every uint8 image, with noise of std noise_std added first. Every random draw
    (the noise, a VAE's importance samples) comes from `seed` inside a forked RNG: the same call gives
    the same numbers, and the caller's random state is untouched."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    devices = [device] if torch.device(device).type == "cuda" else []
    logp, grad = [], []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, len(images), batch):
            x = to_model_range(images[i:i + batch].cpu())
            lp, gs = scores(log_p, (x + noise_std * torch.randn(x.shape, generator=g)).to(device))
            logp.append(lp.cpu())
            grad.append(gs.cpu())
    return torch.cat(logp).double().numpy(), torch.cat(grad).double().numpy()


def auroc(in_scores, out_scores):
    """Area under the ROC curve with in-distribution = positive and higher score = more in-distribution."""
    from sklearn.metrics import roc_auc_score
    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, out_scores]))


MNIST_FAMILY_OTHER = {"mnist": "fashionmnist", "fashionmnist": "mnist"}


def dataset_on_disk(name, data_dir):
    """True when the training split of an MNIST-family set is under data_dir (no download is tried)."""
    sub = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}[name]
    raw = Path(data_dir) / sub / "raw"
    return any((raw / f"train-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz"))


class Probe:
    """Measures the model every --probe-every iterations while it trains (probe.csv, probe.png).

    Few-shot accuracy (paper protocol) at 1, 10 and 100 labels per class, --probe-draws fixed draws from the
    training set minus a fixed validation subset, scored on that subset; for energy models on the MNIST
    family also OOD AUROCs of log p(x) and of the gradient score, validation images vs the other set's
    training split (when on disk) and constant images. Its draws are fixed at the start from its own
    seed and it runs in a forked RNG, so training follows the same trajectory, bit for bit, with the probe
    on or off.
    """
    SEED, OOD_N = 12345, 1000

    def __init__(self, cfg, images, labels, out):
        self.cfg, self.images, self.out = cfg, images, Path(out)
        labels = labels.cpu().numpy()
        perm = np.random.RandomState(self.SEED).permutation(len(labels))
        n_val = min(cfg.probe_n, len(labels) // 2)
        self.val, pool = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self.val_y = labels[self.val]
        counts = np.bincount(labels[pool])
        shots = [s for s in ("1", "10", "100") if counts.min() >= int(s)]
        draws = few_shot_draws(labels, shots, cfg.probe_draws, pool)
        self.labelled = np.unique(np.concatenate([i for idxs in draws.values() for i in idxs]))
        self.labelled_y = labels[self.labelled]
        self.draws = {s: [np.searchsorted(self.labelled, i) for i in idxs] for s, idxs in draws.items()}
        self.ood = self._ood_sets(len(images)) if cfg.dataset in MNIST_FAMILY_OTHER else {}

    def _ood_sets(self, n_train):
        g = torch.Generator().manual_seed(self.SEED)
        n = min(self.OOD_N, len(self.val))
        sets = {}
        other = MNIST_FAMILY_OTHER[self.cfg.dataset]
        if dataset_on_disk(other, self.cfg.data_dir):
            x_other = load_dataset(other, self.cfg.data_dir, train=True)[0]
            sets[other] = x_other[torch.randperm(len(x_other), generator=g)[:n]]
        level = torch.randint(0, 256, (n, 1, 1, 1), generator=g).to(torch.uint8)
        sets["constant"] = level.expand(n, 1, 28, 28).contiguous()
        return sets

    def __call__(self, model, iteration, seconds):
        """Measure, append a row to probe.csv, redraw probe.png; return the row."""
        t = time.time()
        was_training = model.training
        model.eval()
        device = self.images.device
        row = {"iteration": iteration, "seconds": round(seconds, 2)}
        val_x = encode(model.latent, self.images[torch.as_tensor(self.val, device=device)], device)
        lab_x = encode(model.latent, self.images[torch.as_tensor(self.labelled, device=device)], device)
        for shot, accs in few_shot(lab_x, self.labelled_y, val_x, self.val_y, self.draws).items():
            row[f"acc{shot}"] = round(100 * float(np.mean(accs)), 2)
        # OOD for energy models only: a VAE's importance-sampled log p(x) with input gradients costs ~0.1 s
        # per image on a CPU, more than its training between probes (evaluate.py scores it at the end).
        log_p = density(model) if hasattr(model, "energy") else None
        if self.ood and log_p is not None:
            noise = score_noise(model, vars(self.cfg))
            x_in = self.images[torch.as_tensor(self.val[:self.OOD_N], device=device)]
            s_in = ood_scores(log_p, x_in, noise, device, self.SEED)
            for name, imgs in self.ood.items():
                s_out = ood_scores(log_p, imgs, noise, device, self.SEED + 1)
                row[f"auroc_logp_{name}"] = round(100 * auroc(s_in[0], s_out[0]), 2)
                row[f"auroc_grad_{name}"] = round(100 * auroc(s_in[1], s_out[1]), 2)
        model.train(was_training)
        row["probe_seconds"] = round(time.time() - t, 2)
        self._append(row)
        plot_probe(self.out / "probe.csv", self.out / "probe.png", self.cfg.dataset, self.cfg.model)
        return row

    @staticmethod
    def score(row):
        """The mean of the few-shot accuracies: what 'best' means for best.pt."""
        accs = [v for k, v in row.items() if k.startswith("acc")]
        return sum(accs) / len(accs) if accs else -1.0

    def is_best(self, row):
        """True when row beats every earlier row of probe.csv (rows after a resumed checkpoint are gone)."""
        earlier = [r for r in read_metrics(self.out / "probe.csv") if r["iteration"] < row["iteration"]]
        return all(self.score(row) > self.score(r) for r in earlier)

    def reached_paper(self, row):
        """True when every few-shot accuracy the probe measures is at least the paper's (Table 1)."""
        targets = {k: v for k, v in paper_targets(self.cfg.dataset, self.cfg.model).items() if k.startswith("acc")}
        return bool(targets) and all(row.get(k, -1) >= v for k, v in targets.items())

    def _append(self, row):
        path = self.out / "probe.csv"
        header = None
        if path.exists():
            with open(path) as f:
                header = next(csv.reader(f), None)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow(row)


def paper_targets(dataset, model):
    """{probe column: the paper's value} for the reference lines of probe.png."""
    targets = {}
    table1 = PAPER_TABLE1.get(dataset, {}).get(model)
    if table1:
        targets.update({"acc1": table1[0], "acc10": table1[1], "acc100": table1[2]})
    for (score, ood_set), value in PAPER_TABLE5.get(dataset, {}).get(model, {}).items():
        targets[f"auroc_{score}_{ood_set}"] = value
    return targets


def plot_probe(csv_path, png_path, dataset, model):
    """probe.png: few-shot accuracy (top) and OOD AUROC (bottom) over iterations (left) and training
    minutes (right); dashed lines at the paper's values."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(csv_path)
    if not rows:
        return
    targets = paper_targets(dataset, model)
    groups = [[k for k in rows[0] if k.startswith("acc")], [k for k in rows[0] if k.startswith("auroc")]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), squeeze=False)
    xs = {"iteration": [r["iteration"] for r in rows], "training minutes": [r["seconds"] / 60 for r in rows]}
    for i, keys in enumerate(groups):
        for j, (xlabel, x) in enumerate(xs.items()):
            ax = axes[i, j]
            for n, key in enumerate(keys):
                color = f"C{n}"
                ax.plot(x, [r[key] for r in rows], "o-", ms=2.5, color=color, label=key)
                if key in targets:
                    ax.axhline(targets[key], color=color, ls="--", lw=0.9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy %" if i == 0 else "AUROC %")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"probe: {model} on {dataset} (dashed: the paper's value)", fontsize=10)
    fig.tight_layout()
    tmp = Path(png_path).with_name("probe.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)


# --------------------------------------------------------------------------------------------------
# 9. Speed: CPU heap tuning and --benchmark (README "Speed")
# --------------------------------------------------------------------------------------------------

def keep_freed_memory():
    """glibc returns large freed blocks (an SGLD step's ~25 MB activations) to the OS, so every step
    page-faults them in again. Serving all allocations from a heap that is never trimmed avoids that."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc (macOS, musl): nothing to tune
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 30))


def matmul_gflops(device, n=2048, reps=8):
    """This machine's fp32 matmul throughput, measured now: the 'peak' that --benchmark compares to."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_setup(cfg):
    """Model, buffer and PCD step at cfg, on synthetic data of the dataset's shape (no files needed)."""
    device = torch.device(cfg.device)
    channels, size, _ = DATASETS[cfg.dataset]
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device, memory_format=memory_format(cfg))
    optimizer = make_adam(cfg, model.parameters())
    buffer = ReplayBuffer(cfg.buffer_size, (channels, size, size), device, cfg.reinit)
    step = pcd_step(cfg, model, optimizer, buffer, make_sampler(cfg, model))
    return step, lambda: uniform_noise((cfg.batch_size, channels, size, size), device)


def _bench_child(cfg):
    """Time cfg.bench_iters training iterations in one mode; print one JSON line."""
    from torch.profiler import ProfilerActivity, profile
    if cfg.bench_mode == "eager":
        cfg.eager, cfg.channels_last, cfg.keep_heap = True, False, False
    if cfg.keep_heap:
        keep_freed_memory()
    device = torch.device(cfg.device)
    step, batch = _bench_setup(cfg)
    step(batch())  # warm-up
    times = []
    for _ in range(cfg.bench_iters):
        x = batch()
        _sync(device)
        t = time.perf_counter()
        step(x)
        _sync(device)
        times.append(time.perf_counter() - t)
    # Where the time goes: profile one more iteration, grouped by operator self time.
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step(batch())
        _sync(device)
    split = {"conv": 0.0, "act": 0.0, "rest": 0.0}
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        name = ev.key.lower()
        kind = "conv" if "conv" in name else "act" if ("silu" in name or "leaky_relu" in name) else "rest"
        split[kind] += t
    total = sum(split.values()) or 1.0
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        import resource
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"times": times, "peak_mem_mib": peak_mem,
                      "split": {k: v / total for k, v in split.items()}}))


def iteration_flops(cfg):
    """FLOPs of one training iteration: sgld_steps x (forward + ∂E/∂x) + forward and weight gradients
    on the data and model batches (torch's FlopCounterMode, counted through .backward())."""
    from torch.utils.flop_counter import FlopCounterMode
    channels, size, _ = DATASETS[cfg.dataset]
    model = build_model(cfg)
    x = uniform_noise((cfg.batch_size, channels, size, size), "cpu")
    model.requires_grad_(False)
    with FlopCounterMode(display=False) as sgld_count:
        model.energy(x.requires_grad_(True)).sum().backward()
    model.requires_grad_(True)
    with FlopCounterMode(display=False) as train_count:
        e = model.energy(torch.cat([x.detach(), x.detach()]))
        (e.mean() + e.pow(2).mean()).backward()
    return cfg.sgld_steps * sgld_count.get_total_flops() + train_count.get_total_flops()


def benchmark(cfg, argv):
    """--benchmark: eager vs fast training iterations at cfg, each mode in a fresh process (the heap
    setting is process-wide), for the given --dataset or one 28x28 and one 32x32 set."""
    import subprocess
    device = torch.device(cfg.device)
    datasets = [cfg.dataset] if cfg._dataset_given else ["mnist", "cifar10"]
    peak = matmul_gflops(device)
    threads = torch.get_num_threads()
    print(f"device {cfg.device} ({threads} threads), batch {cfg.batch_size}, {cfg.sgld_steps} SGLD steps, "
          f"{cfg.bench_iters} timed iterations after 1 warm-up; fp32 matmul peak measured now: {peak:.0f} GFLOP/s")
    print("| dataset | mode | s/iter (median) | SGLD steps/s | images x steps/s | GFLOP/s | % of peak "
          "| peak mem MiB | time: conv / act / rest | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ds in datasets:
        gflop = iteration_flops(argparse.Namespace(**{**vars(cfg), "dataset": ds})) / 1e9
        medians = {}
        for mode in ("eager", "fast"):
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--dataset", ds, "--bench-mode", mode]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CEBMError(f"benchmark child failed: {proc.stderr.strip().splitlines()[-1]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            med = float(np.median(r["times"]))
            medians[mode] = med
            sp = r["split"]
            speed = f"{medians['eager'] / med:.2f}x" if mode == "fast" else "1.00x"
            print(f"| {ds} | {mode} | {med:.3f} | {cfg.sgld_steps / med:.1f} | "
                  f"{cfg.batch_size * cfg.sgld_steps / med:.0f} | {gflop / med:.1f} | {100 * gflop / med / peak:.1f} "
                  f"| {r['peak_mem_mib']:.0f} | {100 * sp['conv']:.0f}% / {100 * sp['act']:.0f}% / "
                  f"{100 * sp['rest']:.0f}% | {speed} |", flush=True)
        print(f"  {ds}: {gflop:.1f} GFLOP per iteration (torch FlopCounterMode); a 90k-iteration run at "
              f"these settings would take {90_000 * medians['fast'] / 3600:.1f} h fast, "
              f"{90_000 * medians['eager'] / 3600:.1f} h eager", flush=True)


# --------------------------------------------------------------------------------------------------
# 10. main
# --------------------------------------------------------------------------------------------------

def run_cebm(cfg):
    """Train the CEBM that cfg describes, sample from it (--sample), or time it (--benchmark)."""
    if cfg.keep_heap:
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if cfg.sample:
        write_samples(cfg, *load_model(cfg.out_dir, device))
        return
    channels, size, _ = DATASETS[cfg.dataset]
    model = build_model(cfg).to(device, memory_format=memory_format(cfg))
    if cfg.trainer == "vera":  # the official code's Adam betas (0, 0.9) for the EBM and the generator
        gen = VERAGenerator(channels, size, cfg.latent_dim).to(device)
        optimizers = {"ebm": torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.0, 0.9)),
                      "gen": torch.optim.Adam(gen.net.parameters(), lr=cfg.gen_lr, betas=(0.0, 0.9)),
                      "xi": torch.optim.Adam([gen.xi_log_std], lr=cfg.xi_lr)}
        train(cfg, model, vera_step(cfg, model, gen, *optimizers.values()), optimizers, aux=gen)
        return
    optimizer = make_adam(cfg, model.parameters())
    buffer = ReplayBuffer(cfg.buffer_size, (channels, size, size), device, cfg.reinit)
    step = pcd_step(cfg, model, optimizer, buffer, make_sampler(cfg, model))
    train(cfg, model, step, {"adam": optimizer}, buffer)


def main(argv=None, parser=None, run=run_cebm, model_name=None):
    """Parse flags and run; a CEBMError becomes one line on stderr and exit status 1."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(parser or cebm_parser(), argv, model_name)
    try:
        if cfg.export:
            export_weights(cfg.out_dir, cfg.export)
        elif cfg.bench_mode:
            _bench_child(cfg)
        elif cfg.benchmark:
            benchmark(cfg, argv)
        else:
            run(cfg)
    except CEBMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a full disk, a folder that turned read-only...
        print(f"error: cannot read or write {e.filename or cfg.out_dir} ({reason(e)})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

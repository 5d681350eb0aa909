"""Tests for cebm.py (and, below, baselines.py and evaluate.py). CPU only, no network, no ../shared.

    pytest -q test_cebm.py
"""
import csv
import gzip
import json
import math
import os
import pickle
import re
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import baselines
import cebm
import evaluate


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download attempt fails at once, as on a machine without internet."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", offline)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def tiny_cfg(tmp_path, *extra, dataset="digits"):
    """A run config small enough for a test: a few iterations on the bundled digits."""
    return cebm.parse_args(cebm.cebm_parser(), [
        "--dataset", dataset, "--preset", "cpu", "--iters", "6", "--batch-size", "16",
        "--sgld-steps", "3", "--buffer-size", "64", "--log-every", "1", "--ckpt-every", "3",
        "--sample-every", "3", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path / "run"),
        "--probe-every", "0", *extra])


# ------------------------------------------------------------------------------------------------
# Conjugate biases
# ------------------------------------------------------------------------------------------------

def trapezoid_log_integral(log_f, grid):
    """log ∫ exp(log_f) over a 1-D grid, stably."""
    m = log_f.max()
    return m + torch.log(torch.trapezoid(torch.exp(log_f - m), grid))


def test_log_partition_matches_numerical_integration():
    z = torch.linspace(-60, 60, 200_001, dtype=torch.float64)
    for nat1, nat2 in [(0.0, -0.5), (1.3, -0.2), (-2.0, -3.0), (0.4, -0.05)]:
        numeric = trapezoid_log_integral(nat1 * z + nat2 * z ** 2, z)
        closed = cebm.gaussian_log_partition(torch.tensor(nat1, dtype=torch.float64),
                                             torch.tensor(nat2, dtype=torch.float64))
        # A(λ) of Appendix A.1 excludes the base measure h(z) = π^(-1/2).
        assert numeric.item() == pytest.approx(closed.item() + 0.5 * math.log(math.pi), abs=1e-8)


def small_model(bias, latent_dim=2, components=3, seed=0):
    torch.manual_seed(seed)
    if bias == "gmm":
        m = cebm.GMMCEBM(1, 28, latent_dim, components)
        with torch.no_grad():  # keep every component's std in [0.5, 2] so the quadrature box is small
            m.means.normal_()
            m.log_stds.uniform_(math.log(0.5), math.log(2.0))
    else:
        m = cebm.GaussianCEBM(1, 28, latent_dim)
    with torch.no_grad():  # make t_θ(x) large enough that the posterior differs from the bias
        m.encoder.out.weight.mul_(20)
        m.encoder.out.bias[latent_dim:].fill_(0.0)
    return m.double().eval()


def quadrature(model, x, half_width=14.0, n=801):
    """Normaliser and first two moments of exp(-E(x, z)) over a 2-D grid of z."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    z1, z2 = torch.meshgrid(g, g, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)[:, None, :].expand(-1, len(x), -1)
    with torch.no_grad():
        log_f = -model.joint_energy(x, z)                       # [G*G, B]
    m = log_f.max(0).values
    w = torch.exp(log_f - m).reshape(n, n, len(x))
    h = (g[1] - g[0]) ** 2
    mass = w.sum((0, 1)) * h                                     # Riemann sum; the tails are negligible
    log_norm = m + torch.log(mass)
    zz = torch.stack([z1, z2], -1)[:, :, None, :]                # [n, n, 1, 2]
    mean = (w[..., None] * zz).sum((0, 1)) * h / mass[:, None]
    second = (w[..., None] * zz ** 2).sum((0, 1)) * h / mass[:, None]
    return log_norm, mean, second - mean ** 2


@pytest.mark.parametrize("bias", ["gaussian", "gmm"])
def test_conjugacy_marginal_equals_energy(bias):
    """-log ∫ exp(-E(x, z)) dz == E(x), up to the base-measure constant K/2 · log π (Eq. 9, 12)."""
    model = small_model(bias)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1
    log_norm, _, _ = quadrature(model, x)
    with torch.no_grad():
        energy = model.energy(x)
    assert torch.allclose(-log_norm, energy - model.latent_dim * 0.5 * math.log(math.pi), atol=1e-6)
    assert energy.std() > 1e-3  # the inputs get different energies, so the identity is not trivial


@pytest.mark.parametrize("bias", ["gaussian", "gmm"])
def test_posterior_moments_match_normalised_joint(bias):
    model = small_model(bias)
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1
    _, mean, var = quadrature(model, x)
    with torch.no_grad():
        post = model.posterior(x)
    if bias == "gmm":  # moments of the mixture Σ_y p(y|x) N(mean_y, var_y)
        p = post["y_probs"][..., None]
        post_mean = (p * post["mean"]).sum(1)
        post_var = (p * (post["var"] + post["mean"] ** 2)).sum(1) - post_mean ** 2
        assert post["y_probs"].max() < 0.999  # more than one component matters
        assert torch.allclose(model.latent(x), post_mean)
    else:
        post_mean, post_var = post["mean"], post["var"]
        assert torch.allclose(model.latent(x), post_mean)
    assert torch.allclose(mean, post_mean, atol=1e-6)
    assert torch.allclose(var, post_var, atol=1e-6)


def test_gmm_with_one_standard_component_is_the_gaussian_bias():
    torch.manual_seed(0)
    gauss = cebm.GaussianCEBM(1, 28, latent_dim=8)
    gmm = cebm.GMMCEBM(1, 28, latent_dim=8, components=1)
    gmm.encoder.load_state_dict(gauss.encoder.state_dict())
    with torch.no_grad():
        gmm.means.zero_()
        gmm.log_stds.zero_()  # λ = (0, -1/2)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    z = torch.randn(5, 8)
    with torch.no_grad():
        assert torch.allclose(gmm.energy(x), gauss.energy(x), atol=1e-5)
        assert torch.allclose(gmm.joint_energy(x, z), gauss.joint_energy(x, z), atol=1e-5)
        assert torch.allclose(gmm.posterior(x)["mean"][:, 0], gauss.posterior(x)["mean"], atol=1e-6)
        assert torch.allclose(gmm.posterior(x)["var"][:, 0], gauss.posterior(x)["var"], atol=1e-6)
        assert torch.allclose(gmm.latent(x), gauss.latent(x), atol=1e-6)


def test_gmm_latent_modes():
    model = small_model("gmm")
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        post = model.posterior(x)
        model.latent_mode = "map"
        best = post["y_probs"].argmax(-1)
        assert torch.allclose(model.latent(x), post["mean"][torch.arange(4), best])


def test_energy_is_finite_for_extreme_inputs():
    for bias in ["gaussian", "gmm"]:
        model = cebm.build_model(vars(tiny_cfg(Path("/tmp"), "--bias", bias)))
        x = torch.cat([torch.full((2, 1, 28, 28), 50.0), torch.full((2, 1, 28, 28), -50.0)])
        assert torch.isfinite(model.energy(x)).all()


# ------------------------------------------------------------------------------------------------
# SGLD and the replay buffer
# ------------------------------------------------------------------------------------------------

def test_sgld_recovers_mean_and_variance_of_a_gaussian_energy():
    torch.manual_seed(0)
    mu, var = torch.tensor([1.5, -0.5]), torch.tensor([0.25, 0.04])
    energy = lambda x: (0.5 * (x - mu) ** 2 / var).sum(-1)  # noqa: E731
    alpha = 0.002  # Langevin: step α/2, noise √α
    x = cebm.sgld(energy, torch.zeros(4000, 2), steps=3000, step_size=alpha / 2, noise_std=math.sqrt(alpha))
    assert torch.allclose(x.mean(0), mu, atol=0.02)
    assert torch.allclose(x.var(0), var, rtol=0.08)


def test_replay_buffer_restarts_about_five_percent():
    torch.manual_seed(0)
    buf = cebm.ReplayBuffer(1000, (1, 4, 4), "cpu", reinit=0.05)
    buf.images.fill_(5.0)  # stored chains are recognisable: U(-1, 1) restarts never reach 5
    restarted = 0
    for _ in range(200):
        x, idx = buf.sample(100)
        assert idx.min() >= 0 and idx.max() < 1000
        restarted += (x[:, 0, 0, 0] < 5.0).sum().item()
    assert restarted / 20_000 == pytest.approx(0.05, abs=0.006)
    x, idx = buf.sample(10)
    buf.update(idx, torch.zeros_like(x))
    assert (buf.images[idx] == 0).all()


# ------------------------------------------------------------------------------------------------
# Training, checkpoints, resume, divergence
# ------------------------------------------------------------------------------------------------

def test_training_writes_run_folder_and_checkpoint_round_trips(tmp_path):
    cfg = tiny_cfg(tmp_path)
    cebm.run_cebm(cfg)
    run = Path(cfg.out_dir)
    assert (run / "config.json").exists() and (run / "samples" / "iter_000006.png").exists()
    rows = cebm.read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"E_data", "E_model", "E_diff", "seconds"} <= rows[0].keys()
    ckpt = cebm.load_checkpoint(run)
    assert ckpt["iteration"] == 6 and ckpt["config"]["dataset"] == "digits"
    assert ckpt["buffer"].shape == (64, 1, 28, 28)
    model, _ = cebm.load_model(run)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    assert not list(run.glob("*.tmp"))


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    whole = tiny_cfg(tmp_path / "a")
    cebm.run_cebm(whole)
    first = tiny_cfg(tmp_path / "b", "--iters", "3")  # "killed" after its iteration-3 checkpoint
    cebm.run_cebm(first)
    rest = tiny_cfg(tmp_path / "b", "--resume")
    cebm.run_cebm(rest)
    a, b = cebm.load_checkpoint(whole.out_dir), cebm.load_checkpoint(rest.out_dir)
    assert b["iteration"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["buffer"], b["buffer"])
    rows = cebm.read_metrics(Path(rest.out_dir) / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_lr_schedule_warms_up_decays_and_resumes_exactly(tmp_path):
    cfg = tiny_cfg(tmp_path, "--warmup", "4", "--lr-half-life", "10")
    assert [cebm.lr_factor(cfg, i) for i in (0, 3)] == [0.25, 0.5 ** 0.3]
    assert cebm.lr_factor(cfg, 20) == pytest.approx(0.25)
    flags = ["--warmup", "2", "--lr-half-life", "3"]
    whole = tiny_cfg(tmp_path / "a", *flags)
    cebm.run_cebm(whole)
    cebm.run_cebm(tiny_cfg(tmp_path / "b", *flags, "--iters", "3"))
    cebm.run_cebm(tiny_cfg(tmp_path / "b", *flags, "--resume"))
    a, b = cebm.load_checkpoint(whole.out_dir), cebm.load_checkpoint(tmp_path / "b" / "run")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    group = a["optimizers"]["adam"]["param_groups"][0]
    assert group["initial_lr"] == whole.lr and group["lr"] == pytest.approx(whole.lr * 0.5 ** (5 / 3))
    plain = tiny_cfg(tmp_path / "c")
    cebm.run_cebm(plain)  # no schedule: the optimizer is never touched
    assert "initial_lr" not in cebm.load_checkpoint(plain.out_dir)["optimizers"]["adam"]["param_groups"][0]


def test_resume_trims_log_rows_after_the_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path, "--iters", "3")
    cebm.run_cebm(cfg)
    with open(Path(cfg.out_dir) / "metrics.csv", "a") as f:  # rows a killed run wrote after its checkpoint
        f.write("4,0,0,0,0\n5,0,0,0,0\n")
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "4", "--resume"))
    rows = cebm.read_metrics(Path(cfg.out_dir) / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4] and rows[-1]["E_data"] != 0


def probe_columns(path):
    """probe.csv rows without the clock columns, which differ between runs."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "probe_seconds")} for r in cebm.read_metrics(path)]


def test_probe_leaves_the_trajectory_unchanged_and_resumes_exactly(tmp_path):
    off = tiny_cfg(tmp_path / "off")
    cebm.run_cebm(off)
    on = tiny_cfg(tmp_path / "on", "--probe-every", "2", "--probe-n", "300", "--snapshots")
    cebm.run_cebm(on)
    cut = tiny_cfg(tmp_path / "cut", "--probe-every", "2", "--probe-n", "300", "--iters", "3")
    cebm.run_cebm(cut)  # "killed" after its iteration-3 checkpoint, then resumed
    cebm.run_cebm(tiny_cfg(tmp_path / "cut", "--probe-every", "2", "--probe-n", "300", "--resume"))
    a, b, c = (cebm.load_checkpoint(cfg.out_dir) for cfg in (off, on, cut))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]) and torch.equal(a["model"][k], c["model"][k]), k
    assert torch.equal(a["buffer"], b["buffer"]) and torch.equal(a["buffer"], c["buffer"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    rows_on = probe_columns(Path(on.out_dir) / "probe.csv")
    assert [r["iteration"] for r in rows_on] == [0, 2, 4, 6]
    assert {"acc1", "acc10", "acc100"} <= rows_on[0].keys()
    assert all(0 <= r[k] <= 100 for r in rows_on for k in r if k.startswith("acc"))
    rows_cut = probe_columns(Path(cut.out_dir) / "probe.csv")
    assert [r["iteration"] for r in rows_cut] == [0, 2, 3, 4, 6]
    assert [r for r in rows_cut if r["iteration"] != 3] == rows_on  # same measurements after the resume
    assert (Path(on.out_dir) / "probe.png").exists() and not (Path(off.out_dir) / "probe.csv").exists()
    assert cebm.read_metrics(Path(on.out_dir) / "probe.csv")[1]["probe_seconds"] > 0
    best = cebm.load_checkpoint(Path(on.out_dir) / "best.pt")  # the probe's best model, weights only
    scores = [sum(v for k, v in r.items() if k.startswith("acc")) for r in rows_on]
    assert best["iteration"] == rows_on[scores.index(max(scores))]["iteration"] and "buffer" not in best
    assert cebm.load_checkpoint(Path(cut.out_dir) / "best.pt")["iteration"] == best["iteration"]
    snaps = sorted((Path(on.out_dir) / "snapshots").glob("it*.pt"))  # --snapshots: every probed model
    assert [cebm.load_checkpoint(f)["iteration"] for f in snaps] == [0, 2, 4, 6]
    last = cebm.load_checkpoint(snaps[-1])
    assert "buffer" not in last and all(torch.equal(last["model"][k], b["model"][k]) for k in b["model"])
    picked = cebm.load_checkpoint(Path(on.out_dir) / "snapshots" / f"it{best['iteration']:06d}.pt")
    assert all(torch.equal(picked["model"][k], best["model"][k]) for k in best["model"])
    assert not (Path(cut.out_dir) / "snapshots").exists()


def test_weight_average_leaves_the_trajectory_unchanged_resumes_exactly_and_is_what_a_run_delivers(tmp_path,
                                                                                                     monkeypatch):
    lin = torch.nn.Linear(2, 1)
    avg = cebm.WeightAverage(lin, 0.9)
    assert [avg.decay_at(t) for t in (0, 8, 80, 1000)] == [0.1, 0.5, 0.9, 0.9]  # (1 + t) / (10 + t), capped
    old = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    avg.update(lin, 8)
    assert torch.allclose(avg.model.weight, 0.5 * old + 0.5 * lin.weight) and not avg.model.weight.requires_grad
    plain = tiny_cfg(tmp_path / "plain")
    cebm.run_cebm(plain)
    flags = ("--ema", "0.5", "--probe-every", "3", "--probe-n", "300")
    whole = tiny_cfg(tmp_path / "whole", *flags)
    with monkeypatch.context() as m:
        m.setattr(cebm.Probe, "is_best", lambda self, row: True)  # best.pt: the last probed model
        cebm.run_cebm(whole)
    cebm.run_cebm(tiny_cfg(tmp_path / "cut", *flags, "--iters", "3"))  # "killed" after its iteration-3 checkpoint
    cebm.run_cebm(tiny_cfg(tmp_path / "cut", *flags, "--resume"))
    a, b, c = (cebm.load_checkpoint(tmp_path / name / "run") for name in ("plain", "whole", "cut"))
    assert a["ema"] is None
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k  # the average never feeds back into training
        assert torch.equal(b["ema"][k], c["ema"][k]), k  # and resumes exactly
    assert any(not torch.equal(b["ema"][k], b["model"][k]) for k in b["model"])
    model, _ = cebm.load_model(tmp_path / "whole" / "run")  # evaluate.py, --sample and --export get the average
    assert all(torch.equal(v, b["ema"][k]) for k, v in model.state_dict().items())
    best = cebm.load_checkpoint(tmp_path / "whole" / "run" / "best.pt")["model"]  # the probe measured the average
    assert all(torch.equal(v, b["ema"][k]) for k, v in best.items())
    with pytest.raises(cebm.CEBMError, match="ema"):  # a run without an average cannot resume with one
        cebm.run_cebm(tiny_cfg(tmp_path / "plain", "--ema", "0.5", "--resume"))


def test_probe_draws_extend_the_same_draws_and_stay_fixed_for_a_run(tmp_path):
    flags = ("--probe-every", "3", "--probe-n", "300", "--iters", "3")
    few, many = tiny_cfg(tmp_path / "few", *flags), tiny_cfg(tmp_path / "many", *flags, "--probe-draws", "6")
    cebm.run_cebm(few)
    cebm.run_cebm(many)
    a, b = (cebm.load_checkpoint(cfg.out_dir) for cfg in (few, many))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # training does not see the probe
    assert (a["config"]["probe_draws"], b["config"]["probe_draws"]) == (3, 6)
    images, labels = cebm.load_dataset("digits", None, train=True)
    p3, p6 = (cebm.Probe(cfg, images, labels, tmp_path / "scratch") for cfg in (few, many))
    assert p3.draws.keys() == p6.draws.keys() and "1" in p3.draws
    for shot in p3.draws:  # the 3 draws of the default are the first 3 of 6, so the values stay comparable
        drawn3, drawn6 = ([p.labelled[i] for i in p.draws[shot]] for p in (p3, p6))
        assert len(drawn3) == 3 and len(drawn6) == 6
        assert all(np.array_equal(x, y) for x, y in zip(drawn3, drawn6[:3]))
    with pytest.raises(cebm.CEBMError, match="probe_draws"):  # rows of one probe.csv average the same draws
        cebm.run_cebm(tiny_cfg(tmp_path / "few", *flags, "--probe-draws", "6", "--iters", "6", "--resume"))


def test_reprobe_with_the_probes_draws_repeats_probe_csv(tmp_path, monkeypatch):
    """results/recipe/reprobe.py re-measures snapshots; with the run's own draws it must give the probe's values."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("reprobe", Path(__file__).parent / "results/recipe/reprobe.py")
    reprobe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reprobe)
    cfg = tiny_cfg(tmp_path, "--probe-every", "3", "--probe-n", "300", "--snapshots")
    cebm.run_cebm(cfg)
    out = tmp_path / "again.csv"
    monkeypatch.setattr(sys, "argv", ["reprobe.py", cfg.out_dir, "--draws", "3", "--out", str(out)])
    reprobe.main()
    keep = ("iteration", "acc1", "acc10")  # the digits' pool has too few images for 100 labels per class
    probed = [{k: r[k] for k in keep} for r in cebm.read_metrics(Path(cfg.out_dir) / "probe.csv")]
    assert len(probed) == 3 and [{k: r[k] for k in keep} for r in cebm.read_metrics(out)] == probed
    assert not out.with_suffix(".probe").exists()  # its scratch folder is removed
    # --from drops the earlier snapshots; --every thins them but keeps the last; --probe-n sets the subset's size
    for flags, want in ((["--from", "1"], probed[1:]), (["--every", "5"], [probed[0], probed[2]])):
        monkeypatch.setattr(sys, "argv", ["reprobe.py", cfg.out_dir, "--draws", "3", "--out", str(out), *flags])
        reprobe.main()
        assert [{k: r[k] for k in keep} for r in cebm.read_metrics(out)] == want
    monkeypatch.setattr(sys, "argv", ["reprobe.py", cfg.out_dir, "--out", str(out), "--every", "0"])
    with pytest.raises(SystemExit):
        reprobe.main()
    config = cebm.load_checkpoint(cfg.out_dir)["config"]
    assert len(reprobe.make_probe(config, None, 3, tmp_path / "s", probe_n=400).val) == 400
    assert len(reprobe.make_probe(config, None, 3, tmp_path / "s").val) == 300


def test_swa_averages_the_window_s_snapshots_into_a_weights_file(tmp_path, monkeypatch, capsys):
    """results/recipe/swa.py: the saved average is the mean of the window's snapshot weights, and loads."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("swa", Path(__file__).parent / "results/recipe/swa.py")
    swa = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swa)
    cfg = tiny_cfg(tmp_path, "--probe-every", "2", "--probe-n", "300", "--snapshots", "--iters", "4")
    cebm.run_cebm(cfg)
    out = tmp_path / "avg.pt"
    monkeypatch.setattr(sys, "argv", ["swa.py", cfg.out_dir, "--windows", "2-2,2-4", "--draws", "2", "--save", str(out)])
    swa.main()
    snaps = [cebm.load_checkpoint(Path(cfg.out_dir) / "snapshots" / f"it00000{i}.pt")["model"] for i in (2, 4)]
    model, _ = cebm.load_model(out)
    assert all(torch.allclose(v, (snaps[0][k] + snaps[1][k]) / 2) for k, v in model.state_dict().items())
    assert any(not torch.equal(snaps[0][k], snaps[1][k]) for k in snaps[0])  # the two snapshots differ
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| 2")]
    assert [r[1] for r in rows] == ["1", "2"]  # snapshots per window
    assert rows[0][2] == rows[0][3]  # an average of one snapshot is that snapshot
    for bad in ("2", "7-9"):  # malformed, or no snapshot inside: one line, exit, nothing written
        monkeypatch.setattr(sys, "argv", ["swa.py", cfg.out_dir, "--windows", f"2-4,{bad}", "--save", str(out) + "x"])
        with pytest.raises(SystemExit, match="error: "):
            swa.main()
    assert not Path(str(out) + "x").exists()


def test_bound_streak_measures_stretches_at_the_l2_bound_with_the_reg_of_each_iteration(tmp_path):
    """results/recipe/bound_streak.py: the bound is -1/reg with the reg the run had at that iteration."""
    import importlib.util
    path = Path(__file__).parent / "results/recipe/bound_streak.py"
    spec = importlib.util.spec_from_file_location("bound_streak", path)
    bound_streak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound_streak)
    config = {"model": "cebm-gaussian", "energy_reg": 0.2, "energy_reg_late": 0.1, "energy_reg_from": 300}
    (tmp_path / "config.json").write_text(json.dumps(config))
    diffs = {100: -4.5, 200: -4.2, 300: -4.6, 400: -4.6, 500: -7.9, 600: -8.1, 700: -8.2, 800: -1.0}
    (tmp_path / "metrics.csv").write_text("iteration,E_diff\n" + "".join(f"{i},{d}\n" for i, d in diffs.items()))
    # 0.8 of the bound: -4 under 0.2 (iterations 100-300), -8 under 0.1 (from 301: 600 and 700 only)
    assert bound_streak.streak(tmp_path, 0.8, 150) == (200, 300, 800)
    assert bound_streak.streak(tmp_path, 0.9, 150) == (0, None, 800)  # -4.2 breaks it; -8.1 is not 90 % of -10
    assert bound_streak.streak(tmp_path / "missing", 0.8, 150) is None


@pytest.mark.parametrize("model", ["vae", "bigan"])  # the IGEBM trains through the CEBM loop, tested above
def test_probe_leaves_baseline_training_unchanged(tmp_path, model):
    runs = []
    for every in ("0", "2"):
        cfg = baseline_cfg(tmp_path / every, model, "--probe-every", every, "--probe-n", "300")
        baselines.run_baseline(cfg)
        runs.append(cebm.load_checkpoint(cfg.out_dir))
    for k in runs[0]["model"]:
        assert torch.equal(runs[0]["model"][k], runs[1]["model"][k]), k
    rows = probe_columns(tmp_path / "2" / model / "probe.csv")
    assert [r["iteration"] for r in rows] == [0, 2, 4]


def test_probe_measures_ood_against_the_other_mnist_family_set(tmp_path, ignore_md5):
    write_idx_gz(tmp_path / "data" / "MNIST" / "raw", 300, seed=1)
    write_idx_gz(tmp_path / "data" / "FashionMNIST" / "raw", 300, seed=2)
    cfg = tiny_cfg(tmp_path, "--dataset", "mnist", "--data-dir", str(tmp_path / "data"), "--iters", "2",
                   "--probe-every", "2")
    cebm.run_cebm(cfg)
    rows = cebm.read_metrics(Path(cfg.out_dir) / "probe.csv")
    ood = {f"auroc_{s}_{d}" for s in ("logp", "grad") for d in ("fashionmnist", "constant")}
    assert ood <= rows[-1].keys() and "acc10" in rows[-1]
    assert all(0 <= rows[-1][k] <= 100 for k in ood)
    assert cebm.paper_targets("fashionmnist", "cebm-gaussian")["auroc_grad_mnist"] == 82
    assert cebm.paper_targets("mnist", "cebm-gaussian")["acc10"] == 89


def test_time_budget_and_paper_row_stop_a_run_and_a_resume_respects_them(tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg(tmp_path / "t", "--max-minutes", "1e-9")
    cebm.run_cebm(cfg)
    assert cebm.load_checkpoint(cfg.out_dir)["iteration"] == 1
    log = Path(cfg.out_dir) / "metrics.csv"
    with open(log, "a") as f:  # a row of a longer try, killed before its next checkpoint
        f.write(log.read_text().splitlines()[-1].replace("1,", "7,", 1) + "\n")
    cebm.run_cebm(tiny_cfg(tmp_path / "t", "--max-minutes", "1e-9", "--resume"))
    assert [r["iteration"] for r in cebm.read_metrics(log)] == [1]  # trimmed back to the checkpoint
    assert "already finished (1 iterations; --max-minutes 1e-09 spent)" in capsys.readouterr().err
    monkeypatch.setitem(cebm.PAPER_TABLE1, "digits", {"cebm-gaussian": (0, 0, 0, 0)})
    cfg = tiny_cfg(tmp_path / "p", "--stop-at-paper", "--probe-every", "2", "--probe-n", "300")
    cebm.run_cebm(cfg)
    ckpt = cebm.load_checkpoint(cfg.out_dir)
    assert ckpt["iteration"] == 1 and ckpt["reached_paper"] == 0  # met at the iteration-0 probe
    assert "the probe reached the paper's Table 1 row at iteration 0" in capsys.readouterr().err


def test_existing_run_needs_resume_and_matching_settings(tmp_path):
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "3"))
    with pytest.raises(cebm.CEBMError, match="--resume"):
        cebm.run_cebm(tiny_cfg(tmp_path))
    with pytest.raises(cebm.CEBMError, match="lr"):
        cebm.run_cebm(tiny_cfg(tmp_path, "--resume", "--lr", "0.1"))


@pytest.mark.parametrize("size,widths,hidden", [(28, [32, 32, 64, 64], 256), (32, [64, 128, 256, 512], 1024)])
def test_arch_code_builds_the_official_codes_widths(size, widths, hidden):
    model = cebm.build_model({"dataset": "mnist" if size == 28 else "cifar10", "bias": "gaussian",
                              "latent_dim": 8, "act": "silu", "arch": "code"})
    convs = [m for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert model.encoder.out.in_features == hidden and model.encoder.out.out_features == 16
    x = torch.rand(2, convs[0].in_channels, size, size) * 2 - 1
    assert model.energy(x).shape == (2,)


def test_a_run_saved_before_arch_existed_loads_and_resumes_as_the_papers(tmp_path):
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "3"))
    path = Path(tmp_path / "run" / "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["arch"]  # as written by the code before --arch
    torch.save(ckpt, path)
    model, _ = cebm.load_model(path)
    assert [m.out_channels for m in model.encoder.conv if isinstance(m, torch.nn.Conv2d)] == [64, 64, 32, 32]
    cebm.run_cebm(tiny_cfg(tmp_path, "--resume"))  # no "settings differ"
    assert cebm.load_checkpoint(path)["iteration"] == 6
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["arch"]
    torch.save(ckpt, path)  # an old run is named as Table 2's in the refusal, too
    with pytest.raises(cebm.CEBMError, match="arch: 'paper' -> 'code'"):
        cebm.run_cebm(tiny_cfg(tmp_path, "--resume", "--arch", "code", "--iters", "9"))


def test_adam_beta1_reaches_the_optimizer_and_older_runs_resume_with_torchs_default(tmp_path):
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "3", "--adam-beta1", "0"))
    path = Path(tmp_path / "run" / "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["optimizers"]["adam"]["param_groups"][0]["betas"] == (0.0, 0.999)
    with pytest.raises(cebm.CEBMError, match="adam_beta1: 0.0 -> 0.9"):  # a changed setting is refused
        cebm.run_cebm(tiny_cfg(tmp_path, "--resume"))
    cebm.run_cebm(tiny_cfg(tmp_path / "old", "--iters", "3"))
    path = Path(tmp_path / "old" / "run" / "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["adam_beta1"]  # as written before --adam-beta1: torch's default
    torch.save(ckpt, path)
    cebm.run_cebm(tiny_cfg(tmp_path / "old", "--resume"))
    assert cebm.load_checkpoint(path)["iteration"] == 6


def test_energy_reg_late_takes_over_at_its_iteration_and_older_runs_resume_without_it(tmp_path):
    cfg = tiny_cfg(tmp_path, "--energy-reg", "0.2", "--energy-reg-late", "0.3", "--energy-reg-from", "2")
    assert [cebm.energy_reg_at(cfg, it) for it in range(4)] == [0.2, 0.2, 0.3, 0.3]
    assert cebm.energy_reg_at(tiny_cfg(tmp_path, "--energy-reg", "0.2"), 10**6) == 0.2  # no late value: constant

    def weights_after(name, *flags):  # the same seed: the runs differ only through the loss's coefficient
        cebm.run_cebm(tiny_cfg(tmp_path / name, "--iters", "4", *flags))
        return cebm.load_model(tmp_path / name / "run" / "ckpt.pt")[0].encoder.out.weight
    switched = weights_after("switched", "--energy-reg", "0.1", "--energy-reg-late", "5", "--energy-reg-from", "2")
    assert not torch.equal(switched, weights_after("late_never", "--energy-reg", "0.1", "--energy-reg-late", "5",
                                                   "--energy-reg-from", "4"))
    assert torch.equal(weights_after("late_at_0", "--energy-reg", "0.1", "--energy-reg-late", "0.2",
                                     "--energy-reg-from", "0"), weights_after("constant", "--energy-reg", "0.2"))
    late = ("--energy-reg", "0.1", "--energy-reg-late", "5", "--energy-reg-from", "3")
    cebm.run_cebm(tiny_cfg(tmp_path / "split", "--iters", "3", *late))  # stopped at its checkpoint before the switch
    assert torch.equal(weights_after("split", "--resume", *late), weights_after("whole", *late))  # resumed across it
    path = tmp_path / "constant" / "run" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["energy_reg_late"], ckpt["config"]["energy_reg_from"]  # as saved before the flags
    torch.save(ckpt, path)
    cebm.run_cebm(tiny_cfg(tmp_path / "constant", "--energy-reg", "0.2", "--resume"))
    assert cebm.load_checkpoint(path)["iteration"] == 6


def test_gmm_fixed_prior_is_the_official_codes_and_never_moves(tmp_path):
    flags = ("--bias", "gmm", "--components", "3", "--gmm-prior", "fixed")
    cebm.run_cebm(tiny_cfg(tmp_path, *flags, "--iters", "3"))
    path = tmp_path / "run" / "ckpt.pt"
    before, _ = cebm.load_model(path)
    assert "means" not in dict(before.named_parameters()) and torch.all(before.log_stds == 0)
    cebm.run_cebm(tiny_cfg(tmp_path, *flags, "--resume"))
    after, _ = cebm.load_model(path)
    assert torch.equal(after.means, before.means) and torch.equal(after.log_stds, before.log_stds)
    assert not torch.equal(after.encoder.out.weight, before.encoder.out.weight)  # the encoder did train
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["gmm_prior"]  # a run saved before --gmm-prior learned its prior
    torch.save(ckpt, path)
    with pytest.raises(cebm.CEBMError, match="gmm_prior: 'learned' -> 'fixed'"):
        cebm.run_cebm(tiny_cfg(tmp_path, *flags, "--resume", "--iters", "9"))
    learned = cebm.build_model({"dataset": "digits", "bias": "gmm", "latent_dim": 4, "components": 3,
                                "act": "silu", "gmm_latent": "mean"})
    assert "means" in dict(learned.named_parameters())


def test_gmm_learned_unit_prior_starts_at_sigma_one_and_is_learned(tmp_path):
    def built(prior):
        torch.manual_seed(0)
        return cebm.build_model({"dataset": "digits", "bias": "gmm", "latent_dim": 4, "components": 3,
                                 "act": "silu", "gmm_latent": "mean", "gmm_prior": prior})
    wide, unit = built("learned"), built("learned-unit")
    assert torch.equal(unit.means, wide.means)  # the same draw, only σ differs
    assert torch.equal(unit.encoder.out.weight, wide.encoder.out.weight)
    assert torch.all(unit.log_stds == 0) and torch.all(wide.log_stds > 0)
    cebm.run_cebm(tiny_cfg(tmp_path, "--bias", "gmm", "--components", "3", "--gmm-prior", "learned-unit"))
    trained, _ = cebm.load_model(tmp_path / "run" / "ckpt.pt")
    assert trained.log_stds.shape == (3, 128) and trained.log_stds.abs().max() > 0  # σ moved: learned


def test_a_wider_learned_unit_prior_is_the_same_density_with_a_larger_latent():
    # Prior σ = s with statistics (t1 / s, t2 / s²) and means s·μ is the σ = 1 model in z / s: same E(x), latent x s.
    def built(init_std):
        torch.manual_seed(0)
        return cebm.build_model({"dataset": "digits", "bias": "gmm", "latent_dim": 4, "components": 3,
                                 "act": "silu", "gmm_latent": "mean", "gmm_prior": "learned-unit",
                                 "gmm_init_std": init_std})
    s, unit, wide = 3.0, built(1.0), built(3.0)
    assert torch.allclose(wide.log_stds.exp(), torch.full((3, 4), s)) and torch.equal(wide.means, unit.means)
    with torch.no_grad():
        wide.means.mul_(s)
    t1, t2 = unit.statistics(torch.rand(5, 1, 28, 28) * 2 - 1)
    unit.statistics = lambda x: (t1, t2)
    wide.statistics = lambda x: (t1 / s, t2 / s ** 2)
    with torch.no_grad():
        assert torch.allclose(wide.energy(None), unit.energy(None), atol=1e-5)
        assert torch.allclose(wide.latent(None), s * unit.latent(None), atol=1e-5)


class OnePixelGenerator(cebm.VERAGenerator):
    """q(u) = ∫ N(z; 0, 1) CB(u; logits 2z - 0.5) dz: one latent, one pixel, for checking VERA by quadrature."""

    def __init__(self):
        nn.Module.__init__(self)
        self.latent_dim = 1
        self.xi_log_std = nn.Parameter(torch.zeros(1))  # ξ(z | z0) = N(z0, 1)

    def logits(self, z):
        return (2 * z - 0.5)[..., None, None]  # [..., 1] -> [..., 1, 1, 1]


def test_vera_entropy_score_is_the_gradient_of_log_q_by_quadrature():
    gen = OnePixelGenerator().double()
    z = torch.linspace(-9, 9, 20001, dtype=torch.float64)

    def log_q(u):  # log ∫ N(z) CB(u; 2z - 0.5) dz on the grid
        log_cb = torch.distributions.ContinuousBernoulli(logits=2 * z - 0.5).log_prob(u)
        return torch.logsumexp(log_cb - 0.5 * z ** 2, 0) - 0.5 * math.log(2 * math.pi) + math.log(z[1] - z[0])
    u = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    exact = torch.stack([(log_q(v + 1e-5) - log_q(v - 1e-5)) / 2e-5 for v in u])
    torch.manual_seed(0)
    with torch.no_grad():
        estimate = cebm.entropy_score(gen, u.view(3, 1, 1, 1), torch.zeros(3, 1, dtype=torch.float64), 200_000)
    assert estimate.flatten().tolist() == pytest.approx(exact.tolist(), abs=0.03)


def test_vera_generator_step_raises_the_entropy_of_q():
    """With a flat energy the generator's loss is -λ·H(q): one step must raise H, and --entropy-weight -1 (the
    official code's continuous-Bernoulli sign) must lower it."""
    z = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    u = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)

    def entropy(gen):  # H(q) = -∫ q log q on [0, 1], q by quadrature over z
        with torch.no_grad():
            logits = gen.logits(z[:, None]).flatten()[:, None]
            log_cb = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(u)
            dz = (z[1] - z[0]).item()
            log_q = torch.logsumexp(log_cb - 0.5 * z[:, None] ** 2, 0) + math.log(dz / math.sqrt(2 * math.pi))
            return -(log_q.exp() * log_q).mean().item()

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def energy(self, x):
            return 0 * x.flatten(1).sum(1) + 0 * self.unused
    changes = []
    for weight in (1.0, -1.0):
        torch.manual_seed(0)
        gen = cebm.VERAGenerator(1, 28, 1)
        gen.net = nn.Sequential(nn.Flatten(), nn.Linear(1, 1), nn.Unflatten(1, (1, 1, 1)))
        gen.net[1].weight.data.fill_(2.0)
        gen.net[1].bias.data.fill_(-0.5)
        gen = gen.double()
        before = entropy(gen)
        cfg = SimpleNamespace(data_noise=0.0, grad_penalty=0.0, energy_reg=0.0, energy_reg_late=None,
                              entropy_weight=weight, is_samples=50)
        flat = Flat()
        opts = [torch.optim.SGD(params, lr=0.05)
                for params in (flat.parameters(), gen.net.parameters(), [gen.xi_log_std])]
        step = cebm.vera_step(cfg, flat, gen, *opts)
        step(torch.zeros(512, 1, 1, 1, dtype=torch.float64))
        changes.append(entropy(gen) - before)
    assert changes[0] > 0 > changes[1]


def test_vera_trains_a_cebm_that_resumes_exactly_and_exports_without_its_generator(tmp_path):
    flags = ["--trainer", "vera", "--bias", "gmm", "--components", "3", "--gmm-prior", "fixed"]
    whole = tiny_cfg(tmp_path / "a", *flags)
    cebm.run_cebm(whole)
    cebm.run_cebm(tiny_cfg(tmp_path / "b", *flags, "--iters", "3"))  # "killed" after its iteration-3 checkpoint
    cebm.run_cebm(tiny_cfg(tmp_path / "b", *flags, "--resume"))
    a, b = cebm.load_checkpoint(whole.out_dir), cebm.load_checkpoint(tmp_path / "b" / "run")
    assert b["iteration"] == 6 and a["buffer"] is None and set(a["optimizers"]) == {"ebm", "gen", "xi"}
    for part in ("model", "aux"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert a["aux"]["xi_log_std"].ne(math.log(0.1)).any()  # the proposal's scale is learned
    cebm.run_cebm(tiny_cfg(tmp_path / "c", *flags, "--energy-reg", "0"))  # the code's VERA: no energy L2
    c = cebm.load_checkpoint(tmp_path / "c" / "run")
    assert not torch.equal(c["model"]["encoder.out.weight"], a["model"]["encoder.out.weight"])
    model, config = cebm.load_model(whole.out_dir)
    assert isinstance(model, cebm.GMMCEBM) and config["trainer"] == "vera"
    assert evaluate.sgld_steps(config) == "VERA (none)"  # the report does not claim chains it never ran
    assert evaluate.sgld_steps(cebm.load_checkpoint(tmp_path / "b" / "run")["config"] | {"trainer": "pcd"}) == 3
    cebm.export_weights(whole.out_dir, tmp_path / "w.pt")
    exported = torch.load(tmp_path / "w.pt", weights_only=True)
    assert "aux" not in exported and exported["model"].keys() == a["model"].keys()


def test_divergence_stops_with_last_good_checkpoint_kept(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model = cebm.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    calls = []

    def step(x, it):  # energies turn NaN from the 5th iteration on
        calls.append(1)
        bad = float("nan") if len(calls) >= 5 else 1.0
        e = model.energy(x).mean() * 0 + bad
        return {"E_data": e, "E_model": e, "E_diff": e * 0}, x

    with pytest.raises(cebm.Diverged, match="iteration 3"):
        cebm.train(cfg, model, step, {"adam": opt})
    assert cebm.load_checkpoint(cfg.out_dir)["iteration"] == 3


def test_short_training_on_digits_learns(tmp_path):
    """After 60 iterations, real held-out digits get clearly lower energy than uniform noise."""
    cfg = tiny_cfg(tmp_path, "--iters", "60", "--batch-size", "32", "--sgld-steps", "5", "--lr", "5e-4",
                   "--log-every", "10", "--ckpt-every", "60", "--sample-every", "60")
    torch.manual_seed(cfg.seed)
    untrained = cebm.build_model(cfg).eval()
    cebm.run_cebm(cfg)
    trained, _ = cebm.load_model(cfg.out_dir)
    test_images, _ = cebm.load_dataset("digits", "unused", train=False)
    x = cebm.to_model_range(test_images[:200])
    noise = torch.rand_like(x) * 2 - 1
    with torch.no_grad():
        gap_before = (untrained.energy(noise).mean() - untrained.energy(x).mean()).item()
        gap_after = (trained.energy(noise).mean() - trained.energy(x).mean()).item()
    assert abs(gap_before) < 0.5
    assert gap_after > 2.0  # 4.1 on the development machine
    rows = cebm.read_metrics(Path(cfg.out_dir) / "metrics.csv")
    assert all(math.isfinite(r["E_data"]) and math.isfinite(r["E_model"]) for r in rows)


def test_sample_command_writes_a_grid(tmp_path):
    cfg = tiny_cfg(tmp_path, "--iters", "3")
    cebm.run_cebm(cfg)
    cebm.run_cebm(tiny_cfg(tmp_path, "--sample", "--sample-steps", "4", "--n-samples", "9"))
    assert (Path(cfg.out_dir) / "samples_4steps.png").exists()


# ------------------------------------------------------------------------------------------------
# Data loading on tiny files in each dataset's on-disk format
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def ignore_md5(monkeypatch):
    """Fabricated files cannot match torchvision's MD5 list; check only that they exist.
    Everything else (finding, extracting and parsing the files) is torchvision's real code."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.mnist as tv_mnist
    import torchvision.datasets.svhn as tv_svhn
    import torchvision.datasets.utils as tv_utils
    exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731
    for mod in (tv_utils, tv_mnist, tv_cifar, tv_svhn):
        monkeypatch.setattr(mod, "check_integrity", exists)


def write_idx_gz(folder, n, seed):
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
    labels = rng.randint(0, 10, size=n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for split, m in (("train", n), ("t10k", n)):
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, m, 28, 28) + images[:m].tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, m) + labels[:m].tobytes())
    return images, labels


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_load_mnist_family_from_idx_gz(tmp_path, ignore_md5, name, folder):
    images, labels = write_idx_gz(tmp_path / folder / "raw", 7, seed=1)
    x, y = cebm.load_dataset(name, tmp_path, train=True)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and torch.equal(y, torch.from_numpy(labels).long())
    xt, _ = cebm.load_dataset(name, tmp_path, train=False)
    assert xt.shape == (7, 1, 28, 28)


def test_parallel_runs_take_turns_at_extracting_a_data_folder(tmp_path, ignore_md5, monkeypatch):
    """While one process extracts the .gz files another must not read them half-written (two runs started
    side by side once crashed that way): the extraction holds a per-folder lock that a second opener waits on."""
    fcntl = pytest.importorskip("fcntl")
    write_idx_gz(tmp_path / "MNIST" / "raw", 5, seed=3)
    path = cebm.data_lock_path(tmp_path)
    real, seen = cebm._load_torchvision, []

    def load_and_look(*args):
        with open(path) as f, pytest.raises(BlockingIOError):  # another opener cannot take it now
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(path)
        return real(*args)
    monkeypatch.setattr(cebm, "_load_torchvision", load_and_look)
    x, _ = cebm.load_dataset("mnist", tmp_path)
    assert x.shape == (5, 1, 28, 28) and len(seen) == 1
    with open(seen[0]) as f:  # and it is free again afterwards
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    seen[0].unlink()


def test_load_cifar10_from_python_pickles(tmp_path, ignore_md5):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.RandomState(2)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.randint(0, 256, size=(3, 3072)).astype(np.uint8)  # rows: R plane, G plane, B plane
        labels = list(rng.randint(0, 10, size=3))
        batches[name] = (data, labels)
        with open(root / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    x, y = cebm.load_dataset("cifar10", tmp_path, train=True)
    assert x.shape == (15, 3, 32, 32)
    first = batches["data_batch_1"][0][0]
    assert torch.equal(x[0, 1], torch.from_numpy(first[1024:2048].reshape(32, 32)))  # green plane
    assert y.tolist()[:3] == batches["data_batch_1"][1]
    xt, yt = cebm.load_dataset("cifar10", tmp_path, train=False)
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == batches["test_batch"][1]


def test_load_svhn_from_mat(tmp_path, ignore_md5):
    from scipy.io import savemat
    rng = np.random.RandomState(3)
    X = rng.randint(0, 256, size=(32, 32, 3, 4)).astype(np.uint8)  # SVHN stores H, W, C, N
    y = np.array([[10], [1], [5], [10]], dtype=np.uint8)          # digit 0 is stored as 10
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": X, "y": y})
    x, labels = cebm.load_dataset("svhn", tmp_path, train=True)
    assert x.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 5, 0]
    assert torch.equal(x[2, 1], torch.from_numpy(X[:, :, 1, 2]))


def test_digits_split_is_fixed_and_disjoint():
    x_train, y_train = cebm.load_dataset("digits", "unused", train=True)
    x_test, _ = cebm.load_dataset("digits", "unused", train=False)
    assert x_train.shape[1:] == (1, 28, 28) and len(x_train) + len(x_test) == 1797
    assert torch.equal(cebm.load_dataset("digits", "unused", train=True)[1], y_train)
    assert set(y_train.tolist()) == set(range(10))


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(30, "Read-only file system")])
def test_read_only_data_dir_is_copied_to_local_data(tmp_path, ignore_md5, monkeypatch, error):
    import torchvision.datasets.mnist as tv_mnist
    write_idx_gz(tmp_path / "shared" / "MNIST" / "raw", 5, seed=4)
    monkeypatch.chdir(tmp_path)
    real_extract = tv_mnist.download_and_extract_archive

    def extract(url, download_root, **kw):  # the shared folder refuses writes, ./data accepts them
        if "shared" in str(download_root):
            raise error
        return real_extract(url, download_root, **kw)
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", extract)
    x, _ = cebm.load_dataset("mnist", tmp_path / "shared", train=True)
    assert x.shape == (5, 1, 28, 28) and (tmp_path / "data" / "MNIST" / "raw").is_dir()


# ------------------------------------------------------------------------------------------------
# Bad input gives one clear line
# ------------------------------------------------------------------------------------------------

def test_missing_data_offline_names_the_folder(tmp_path):
    for name, hint in [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py"), ("svhn", "train_32x32.mat")]:
        with pytest.raises(cebm.CEBMError) as e:
            cebm.load_dataset(name, tmp_path / "empty", train=True)
        assert str(tmp_path / "empty") in str(e.value) and hint in str(e.value)
        assert "\n" not in str(e.value) and "Error)" not in str(e.value)  # words, not exception class names
    cfg = tiny_cfg(tmp_path, "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"))
    with pytest.raises(cebm.CEBMError):
        cebm.run_cebm(cfg)
    assert not Path(cfg.out_dir).exists()  # a failed start leaves no run folder behind


@pytest.mark.parametrize("script,argv,needle", [
    ("cebm", ["--device", "gpu0"], "--device gpu0 is not a torch device"),
    ("cebm", ["--sample", "--device", "cuda:7"], "--device cuda:7"),
    ("cebm", ["--lr", "-1"], "--lr must be a positive number"),
    ("cebm", ["--lr", "nan"], "--lr must be a positive number"),
    ("cebm", ["--lr", "0"], "--lr must be a positive number"),
    ("cebm", ["--buffer-size", "10", "--batch-size", "64"], "--buffer-size (10) must be at least --batch-size"),
    ("cebm", ["--reinit", "1.5"], "--reinit is a fraction"),
    ("cebm", ["--sample-st", "5"], "unrecognized arguments: --sample-st"),
    ("cebm", ["--bias", "gmm", "--gmm-init-std", "3"], "--gmm-init-std applies to --bias gmm --gmm-prior learned-unit"),
    ("cebm", ["--gmm-prior", "learned-unit", "--gmm-init-std", "0"], "--gmm-init-std must be a positive number"),
    ("cebm", ["--gmm-prior", "learned-unit", "--gmm-init-std", "2"], "--gmm-init-std applies to --bias gmm"),
    ("baselines", ["--model", "bigan", "--gan-lr", "-2"], "--gan-lr must be a positive number"),
    ("baselines", ["--model", "vae", "--benchmark"], "unrecognized arguments: --benchmark"),
    ("baselines", ["--model", "vae", "--sample-ev", "3"], "unrecognized arguments: --sample-ev"),
    ("evaluate", ["run", "--skip", "fewshot,knnn"], "--skip takes fewshot, knn, ood, not knnn"),
    ("evaluate", ["run", "--draws", "0"], "--draws and --ood-k must be at least 1"),
    ("evaluate", ["run", "--device", "cuda:5"], "--device cuda:5"),
    ("evaluate", ["run", "--digits", "9"], "--digits 0 to 6"),
])
def test_bad_flags_are_one_line(capsys, tmp_path, script, argv, needle):
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    main = {"cebm": cebm.main, "baselines": baselines.main, "evaluate": evaluate.main}[script]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_pct_shows_the_asked_decimals():
    # a mean at the paper's edge (79.96 against 80) must not print as 80.0 when asked for more
    assert evaluate.pct([0.7991, 0.8001]) == "80.0 ± 0.1"
    assert evaluate.pct([0.7991, 0.8001], 3) == "79.960 ± 0.050"


def test_resume_without_a_run_says_so(tmp_path, capsys):
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "1", "--resume"))
    assert "--resume: no checkpoint in" in capsys.readouterr().err


def test_unknown_dataset_is_a_clear_error(capsys):
    with pytest.raises(cebm.CEBMError, match="unknown dataset"):
        cebm.load_dataset("imagenet", "unused")
    with pytest.raises(SystemExit):
        cebm.main(["--dataset", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(cebm.CEBMError, match="corrupt"):
        cebm.load_checkpoint(run)
    with pytest.raises(SystemExit) as e:
        cebm.main(["--sample", "--out-dir", str(run), "--device", "cpu"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "\n" not in err
    with pytest.raises(cebm.CEBMError, match="no checkpoint"):
        cebm.load_checkpoint(tmp_path / "nowhere")


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    """Weights that no longer fit the code's model (e.g. after a layer is added) give one line."""
    model = cebm.GaussianCEBM(1, 28, latent_dim=4)
    cfg = {"model": "cebm-gaussian", "dataset": "mnist", "latent_dim": 8, "act": "silu", "bias": "gaussian"}
    cebm.save_checkpoint(tmp_path / "ckpt.pt", model, {}, None, 1, 0.0, cfg)
    with pytest.raises(cebm.CEBMError, match="does not fit this code's GaussianCEBM") as e:
        cebm.load_model(tmp_path)
    assert "\n" not in str(e.value)


# ================================================================================================
# baselines.py
# ================================================================================================



def baseline_cfg(tmp_path, model, *extra):
    parser = baselines.baseline_parser()
    parser.set_defaults(sample=False, sample_steps=0, n_samples=0, bias=None)
    return cebm.parse_args(parser, [
        "--model", model, "--dataset", "digits", "--preset", "cpu", "--iters", "4", "--batch-size", "8",
        "--sgld-steps", "2", "--buffer-size", "32", "--log-every", "1", "--ckpt-every", "2",
        "--sample-every", "2", "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path / model),
        "--probe-every", "0", *extra], model_name=model)


@pytest.mark.parametrize("model", baselines.MODELS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_baselines_build_for_both_image_sizes(model, channels, size):
    dataset = "mnist" if size == 28 else "cifar10"
    m = baselines.build_model({"model": model, "dataset": dataset, "latent_dim": 128, "components": 5,
                               "act": "silu"})
    x = torch.rand(3, channels, size, size) * 2 - 1
    assert m.latent(x).shape == (3, 128)
    if model in ("vae", "gmmvae"):
        assert m.decoder(torch.randn(3, 128)).shape == (3, channels, size, size)
        assert m.log_px(x, 2).shape == (3,)
    if model == "bigan":
        assert m.generate(3, "cpu").shape == (3, channels, size, size)
        assert m.discriminate(x, torch.randn(3, 128)).shape == (3,)
    if model == "igebm":
        assert m.energy(x).shape == (3,)


def test_vae_importance_sampling_bounds_the_elbo_and_tightens_with_k():
    torch.manual_seed(0)
    vae = baselines.VAE(1, 28, latent_dim=8).eval()
    with torch.no_grad():  # q(z|x) = N(0, e^2): much broader than the posterior, so the ELBO is loose
        vae.encoder.out.weight.zero_()
        vae.encoder.out.bias.zero_()
        vae.encoder.out.bias[8:].fill_(2.0)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x) for _ in range(50)]).mean(0)
        lp10 = torch.stack([vae.log_px(x, 10) for _ in range(10)]).mean(0)
        lp100 = torch.stack([vae.log_px(x, 100) for _ in range(4)]).mean(0)
    assert (elbo < lp10).all() and (elbo < lp100).all()
    assert elbo.mean() < lp10.mean() < lp100.mean()  # means -573, -559, -556 on the development machine


def test_gmmvae_with_one_standard_component_has_the_vae_prior():
    torch.manual_seed(0)
    vae = baselines.VAE(1, 28, latent_dim=6)
    gmm = baselines.GMMVAE(1, 28, latent_dim=6, components=1)
    gmm.load_state_dict({**gmm.state_dict(), **vae.state_dict(),
                         "means": torch.zeros(1, 6), "log_stds": torch.zeros(1, 6)})
    z = torch.randn(7, 6) * 2
    assert torch.allclose(gmm.log_prior(z), vae.log_prior(z), atol=1e-5)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    torch.manual_seed(1)
    a = vae.log_px(x, 5)
    torch.manual_seed(1)
    b = gmm.log_px(x, 5)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("model", baselines.MODELS)
def test_baselines_train_save_reload_and_resume_exactly(tmp_path, model):
    whole = baseline_cfg(tmp_path / "a", model)
    baselines.run_baseline(whole)
    baselines.run_baseline(baseline_cfg(tmp_path / "b", model, "--iters", "2"))
    rest = baseline_cfg(tmp_path / "b", model, "--resume")
    baselines.run_baseline(rest)
    a, b = cebm.load_checkpoint(whole.out_dir), cebm.load_checkpoint(rest.out_dir)
    assert a["iteration"] == b["iteration"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    loaded, cfg = baselines.load_model(rest.out_dir)
    assert cfg["model"] == model and loaded.latent(torch.zeros(2, 1, 28, 28)).shape[0] == 2
    run = Path(rest.out_dir)
    assert (run / "config.json").exists() and (run / "samples" / "iter_000004.png").exists()
    rows = cebm.read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for r in rows for v in r.values())


def test_baselines_cli_rejects_unknown_model(capsys):
    with pytest.raises(SystemExit):
        baselines.main(["--model", "pixelcnn"])
    assert "invalid choice: 'pixelcnn'" in capsys.readouterr().err


# ================================================================================================
# evaluate.py
# ================================================================================================



def test_few_shot_draws_have_exactly_n_per_class_and_depend_on_the_seed():
    labels = np.repeat(np.arange(10), 50)
    np.random.RandomState(0).shuffle(labels)
    a = cebm.few_shot_indices(labels, 7, seed=3)
    assert len(a) == 70 and len(set(a)) == 70
    assert np.bincount(labels[a], minlength=10).tolist() == [7] * 10
    assert np.array_equal(a, cebm.few_shot_indices(labels, 7, seed=3))
    assert not np.array_equal(np.sort(a), np.sort(cebm.few_shot_indices(labels, 7, seed=4)))


def test_few_shot_accuracy_on_separable_features():
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(3), 40)
    x = np.eye(3)[y] * 5 + rng.randn(120, 3) * 0.1
    for protocol in cebm.PROTOCOLS:
        res = cebm.few_shot(x, y, x, y, cebm.few_shot_draws(y, ["1", "full"], 3), protocol)
        assert len(res["1"]) == 3 and len(res["full"]) == 1
        assert min(res["1"]) == 1.0 and res["full"] == [1.0]


def test_auroc_orientation():
    assert cebm.auroc(np.array([3.0, 4.0, 5.0]), np.array([0.0, 1.0])) == 1.0
    assert cebm.auroc(np.array([0.0, 1.0]), np.array([3.0, 4.0, 5.0])) == 0.0
    assert cebm.auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_gradient_score_matches_finite_differences():
    model = small_model("gaussian", latent_dim=3)
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2 - 1
    log_p = lambda x: -model.energy(x)  # noqa: E731
    lp, score = cebm.scores(log_p, x)
    assert torch.allclose(lp, -model.energy(x).detach())
    h, fd = 1e-5, torch.zeros_like(x)
    with torch.no_grad():
        for i in range(28 * 28):
            e = torch.zeros(28 * 28, dtype=torch.float64)
            e[i] = h
            e = e.view(1, 1, 28, 28)
            fd.view(2, -1)[:, i] = (log_p(x + e) - log_p(x - e)) / (2 * h)
    assert torch.allclose(score, -fd.flatten(1).norm(dim=1), rtol=1e-6)
    assert (score < 0).all()


def test_vae_ood_scores_are_reproducible_clean_and_leave_the_rng_alone():
    torch.manual_seed(0)
    vae, gauss = baselines.VAE(1, 28, latent_dim=4), small_model("gaussian", latent_dim=3)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = cebm.ood_scores(cebm.density(vae, k=3), images, 0.0, "cpu", seed=5, batch=4)
    b = cebm.ood_scores(cebm.density(vae, k=3), images, 0.0, "cpu", seed=5, batch=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    cfg = {"data_noise": 0.03}
    assert cebm.score_noise(vae, cfg) == 0.0 and cebm.score_noise(gauss, cfg) == 0.03


def test_nearest_neighbours_and_confusion():
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    test = np.array([[9.0, 1.0], [1.0, 8.0], [0.5, 0.0]])
    assert evaluate.nearest(train, test, k=2)[:, 0].tolist() == [1, 2, 0]
    m = evaluate.confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 2)
    assert m.tolist() == [[0.5, 0.5], [0.0, 1.0]]


def test_ood_sets_skip_missing_data_with_a_line(tmp_path):
    sets, skipped = evaluate.ood_sets("digits", tmp_path, 30, seed=0)
    assert set(sets) == {"constant", "noise"}
    assert any(s.startswith("fashionmnist: skipped") for s in skipped)
    assert any(s.startswith("emnist: skipped") for s in skipped)
    c = sets["constant"]
    assert c.shape == (30, 1, 28, 28) and (c.flatten(1).min(1).values == c.flatten(1).max(1).values).all()
    sets_all, _ = evaluate.ood_sets("digits", tmp_path, 0, seed=0, n_test=360)
    assert len(sets_all["constant"]) == len(sets_all["noise"]) == 360  # as many as the test images
    sets32, skipped32 = evaluate.ood_sets("cifar10", tmp_path, 5, seed=0)
    assert set(sets32) == {"constant"} and any("textures" in s for s in skipped32)
    assert sets32["constant"].shape == (5, 3, 32, 32)


def test_textures_are_every_dtd_image_resized_bilinearly(tmp_path):
    from PIL import Image
    rng = np.random.RandomState(0)
    for cls, n in (("banded", 2), ("woven", 3)):
        (tmp_path / "dtd" / "dtd" / "images" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (40 + i, 50, 3)).astype(np.uint8)).save(
                tmp_path / "dtd" / "dtd" / "images" / cls / f"{cls}_{i}.jpg")
    x = evaluate._load_textures(tmp_path)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8
    first = Image.open(tmp_path / "dtd" / "dtd" / "images" / "banded" / "banded_0.jpg").convert("RGB")
    assert np.array_equal(x[0].permute(1, 2, 0).numpy(), np.asarray(first.resize((32, 32), Image.BILINEAR)))


def test_evaluate_end_to_end_on_tiny_runs_of_every_model(tmp_path):
    runs = []
    for bias, arch in (("gaussian", "code"), ("gmm", "paper")):
        cfg = tiny_cfg(tmp_path / bias, "--bias", bias, "--arch", arch, "--iters", "2")
        cebm.run_cebm(cfg)
        runs.append(cfg.out_dir)
    for model in baselines.MODELS:
        cfg = baseline_cfg(tmp_path, model, "--iters", "2")
        baselines.run_baseline(cfg)
        runs.append(cfg.out_dir)
    out = tmp_path / "eval"
    evaluate.main(runs + ["--data-dir", str(tmp_path / "nodata"), "--out", str(out), "--draws", "2",
                          "--shots", "1,10,full", "--ood-n", "40", "--ood-k", "3", "--device", "cpu", "--digits", "2"])
    for name in ("fewshot", "knn", "ood"):
        assert (out / f"{name}.csv").exists() and (out / f"{name}.md").exists()
    assert (out / "confusion_digits.png").exists() and (out / "neighbours_digits.png").exists()
    fewshot = list(csv.reader(open(out / "fewshot.csv")))
    assert [r[1] for r in fewshot[1:]] == ["pixels", "VAE", "GMM-VAE", "BiGAN", "IGEBM", "CEBM", "GMM-CEBM"]
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", cell) for r in fewshot[1:] for cell in r[3:6])  # --digits 2
    ood = list(csv.reader(open(out / "ood.csv")))
    assert {r[1] for r in ood[1:]} == {"VAE", "GMM-VAE", "IGEBM", "CEBM", "GMM-CEBM"}  # BiGAN: no density
    assert {r[2] for r in ood[1:]} == {"constant", "noise"}
    assert all(0.0 <= float(r[4]) <= 100.0 for r in ood[1:])
    report = (out / "report.md").read_text()
    assert "Few-shot" in report and "1-nearest" in report and "AUROC" in report
    assert "The paper's VAE column scores -log p(x)" in report and "VAEs on clean images" in report
    assert "fashionmnist: skipped" in report and "BiGAN has no density" in report
    budgets = [line for line in report.splitlines() if line.startswith("| `")]
    assert [("code (--arch code)" in line) for line in budgets] == [True] + [False] * (len(runs) - 1)  # Gaussian: code
    ood_md = (out / "ood.md").read_text().splitlines()
    assert len({line.count("|") for line in ood_md if line.startswith("|")}) == 1  # no '|' inside a cell


@pytest.mark.parametrize("dataset,shape", [("digits", (1, 28, 28)), ("cifar10", (3, 32, 32))])
def test_fast_and_eager_sgld_agree(tmp_path, dataset, shape):
    """Same seed, same noise: the fast path (channels-last, frozen weights) gives the same SGLD chain and
    energies as the plain loop, to float32 rounding (max difference 6e-8 here; tolerance 1e-5), also for
    3-channel images, where channels-last memory order differs from the index order of the noise."""
    results = {}
    for mode in ("eager", "fast"):
        cfg = tiny_cfg(tmp_path, "--sgld-steps", "5", *(["--eager"] if mode == "eager" else []), dataset=dataset)
        torch.manual_seed(0)
        model = cebm.build_model(cfg).to(memory_format=cebm.memory_format(cfg))
        x0 = torch.rand(8, *shape) * 2 - 1
        torch.manual_seed(1)
        x = cebm.make_sampler(cfg, model)(x0)
        assert (x - x0).abs().max() > 0.01  # the chain moved
        assert all(p.requires_grad for p in model.parameters())  # weights trainable again afterwards
        assert all(p.grad is None for p in model.parameters())   # and no gradient accumulated on them
        results[mode] = (x, model.energy(x).detach())
    assert cebm.memory_format(tiny_cfg(tmp_path)) == torch.channels_last
    assert torch.allclose(results["eager"][0], results["fast"][0], atol=1e-5)
    assert torch.allclose(results["eager"][1], results["fast"][1], atol=1e-5)



def test_unwritable_output_folders_are_one_line_and_leave_nothing_behind(tmp_path, capsys):
    """As root, a read-only folder stays writable; a path under a plain file fails the same way (OSError)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for main, argv in ((cebm.main, ["--dataset", "digits", "--preset", "cpu", "--iters", "1"]),
                       (cebm.main, ["--sample", "--n-samples", "1", "--sample-steps", "1"]),
                       (evaluate.main, ["nowhere"])):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--out-dir", str(blocker / "run")])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    run = tiny_cfg(tmp_path, "--iters", "2")
    cebm.run_cebm(run)
    with pytest.raises(SystemExit):
        cebm.main(["--export", str(blocker / "w.pt"), "--out-dir", run.out_dir])
    assert "cannot read or write" in capsys.readouterr().err
    stamp = {p: p.stat().st_mtime_ns for p in Path(run.out_dir).rglob("*")}
    cebm.run_cebm(tiny_cfg(tmp_path, "--iters", "2", "--resume"))  # finished: writes nothing
    assert stamp == {p: p.stat().st_mtime_ns for p in Path(run.out_dir).rglob("*")}


def test_failed_evaluation_leaves_no_empty_folder(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "missing_run"), "--out-dir", str(tmp_path / "eval")])
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "eval").exists()


def test_metrics_of_a_failed_fresh_start_are_replaced_with_a_header(tmp_path):
    cfg = tiny_cfg(tmp_path, "--iters", "2")
    Path(cfg.out_dir).mkdir(parents=True)
    (Path(cfg.out_dir) / "metrics.csv").write_text("")  # a run that died before its header row
    cebm.run_cebm(cfg)
    rows = cebm.read_metrics(Path(cfg.out_dir) / "metrics.csv")
    assert [r["iteration"] for r in rows] == [1, 2]


def test_run_all_goes_on_after_a_failed_run_and_lists_it(tmp_path):
    import subprocess
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"  # stands in for python: logs each call, fails the IGEBM runs
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncase "$*" in *igebm*) exit 1 ;; esac\n')
    fake.chmod(0o755)
    repo = Path(__file__).parent
    proc = subprocess.run(["bash", str(repo / "run_all.sh"), "--quick", "--runs-dir", str(tmp_path / "runs")],
                          env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True)
    calls = log.read_text().splitlines()
    assert proc.returncode == 1
    assert sum(c.startswith(("cebm.py", "baselines.py")) for c in calls) == 12  # every run was tried
    assert calls[-1].startswith("evaluate.py") and "igebm" not in calls[-1]
    assert "runs/report_quick" in calls[-1]  # not the shipped results/quick
    assert "2 step(s) failed" in proc.stderr and "igebm on fashionmnist" in proc.stderr
    bad = subprocess.run(["bash", str(repo / "run_all.sh"), "--data-dir"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "run_all.sh: --data-dir needs a value (see --help)"


@pytest.mark.parametrize("parser", [cebm.cebm_parser, baselines.baseline_parser])
def test_help_shows_every_default_and_each_presets_value(parser):
    text = " ".join(parser().format_help().split())
    assert "--iters ITERS training iterations (gradient steps) [presets: paper 90000, cpu 600, cpu-long 60000] (default: 90000)" in text
    assert "--energy-reg ENERGY_REG" in text and "(default: 0.1)" in text
    assert "--benchmark" not in text or parser is cebm.cebm_parser


def test_each_preset_sets_its_sgld_noise_warmup_and_reinit_and_a_flag_overrides_them():
    def cfg(*argv):
        c = cebm.parse_args(cebm.cebm_parser(), ["--dataset", "digits", *argv])
        return c.sgld_noise, c.warmup, c.reinit
    for preset in ((), ("--preset", "paper"), ("--preset", "cpu")):  # the official code's: no warm-up, 5 % restarts
        assert cfg(*preset) == (0.0075, 0, 0.05)
    assert cfg("--preset", "cpu-long") == (0.015, 500, 0.01)  # the recipe study's (results/recipe)
    # the flags that resume the older runs of results/long
    older = ("--sgld-noise", "0.0075", "--warmup", "0", "--reinit", "0.05")
    assert cfg("--preset", "cpu-long", *older) == (0.0075, 0, 0.05)
    ig = baseline_cfg(Path("unused"), "igebm", "--preset", "cpu-long")  # the baselines share the budget flags
    assert (ig.sgld_noise, ig.warmup, ig.reinit) == (0.015, 500, 0.01)


def test_exported_weights_load_sample_and_evaluate_like_the_run(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path, "--iters", "2")
    cebm.run_cebm(cfg)
    dest = tmp_path / "shipped" / "weights.pt"
    cebm.main(["--export", str(dest), "--out-dir", cfg.out_dir])
    slim, full = cebm.load_checkpoint(dest), cebm.load_checkpoint(cfg.out_dir)
    assert set(slim) == {"config", "model", "iteration", "seconds"} and slim["iteration"] == 2
    assert dest.stat().st_size < (Path(cfg.out_dir) / "ckpt.pt").stat().st_size / 2
    model, _ = cebm.load_model(dest.parent)  # a folder holding weights.pt only
    for k, v in full["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
    cebm.main(["--sample", "--out-dir", str(dest.parent), "--sample-steps", "2", "--n-samples", "4"])
    assert (dest.parent / "samples_2steps.png").exists()
    a, b = evaluate.load_run(dest, "cpu"), evaluate.load_run(cfg.out_dir, "cpu")
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.equal(a[0].latent(x), b[0].latent(x)) and a[2] == b[2]


def test_evaluated_models_of_one_kind_get_labels_that_tell_them_apart(tmp_path):
    # Ten snapshots named it002500.pt or best.pt in ten run folders once gave ten rows called "CEBM (best.pt)",
    # and the 1-NN figures, keyed by label, kept only the last of each name.
    tails = evaluate.distinct_tails(["r/a/best.pt", "r/b/best.pt", "r/c/it1.pt"])
    assert tails == ["a/best.pt", "b/best.pt", "c/it1.pt"]
    assert evaluate.distinct_tails(["r/a/snap/it1.pt", "r/b/snap/it1.pt"]) == ["a/snap/it1.pt", "b/snap/it1.pt"]
    assert evaluate.distinct_tails(["runs/x", "runs/y"]) == ["x", "y"]
    assert evaluate.distinct_tails(["r/a/snapshots/it1.pt", "r/a/snapshots/it2.pt", "r/b/best.pt"]) == \
        ["a/snapshots/it1.pt", "a/snapshots/it2.pt", "b/best.pt"]
    cfg = tiny_cfg(tmp_path, "--iters", "1")
    cebm.run_cebm(cfg)
    paths = [str(tmp_path / d / "weights.pt") for d in ("s0", "s1")]
    for p in paths:
        cebm.main(["--export", p, "--out-dir", cfg.out_dir])
    assert [r["label"] for r in evaluate.load_runs(paths, "cpu")] == ["CEBM (s0/weights.pt)", "CEBM (s1/weights.pt)"]
    assert [r["label"] for r in evaluate.load_runs(paths[:1], "cpu")] == ["CEBM"]


def test_local_launcher_runs_cells_in_parallel_evaluates_and_reports_a_failed_cell(tmp_path):
    pytest.importorskip("submitit")
    import subprocess
    fake = tmp_path / "python"  # the real python, except that the IGEBM cell fails
    fake.write_text(f'#!/bin/sh\ncase "$*" in *"--model igebm"*) echo "no IGEBM today" >&2; exit 3 ;; esac\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    runs = tmp_path / "runs"
    cmd = ["bash", str(Path(__file__).parent / "run_all.sh"), "--quick", "--datasets", "digits", "--models",
           "cebm-gaussian igebm vae", "--iters", "2", "--runs-dir", str(runs), "--out-dir", str(tmp_path / "eval"),
           "--eval-args", "--skip ood --draws 1 --shots 1 --no-progress", "--launcher", "local", "--jobs", "2"]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHON": str(fake)}, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    for name in ("cebm-gaussian", "vae"):  # the other cells finished, and were evaluated
        assert (runs / "logs" / f"{name}_digits_cpu_s0.status").read_text() == "0\n"
        assert cebm.load_checkpoint(runs / f"{name}_digits_cpu_s0")["iteration"] == 2
    assert "CPU slot 1" in proc.stdout  # two at a time
    fewshot = (tmp_path / "eval" / "fewshot.md").read_text()
    assert "CEBM" in fewshot and "VAE" in fewshot and "IGEBM" not in fewshot
    assert "no IGEBM today" in (runs / "logs" / "igebm_digits_cpu_s0.log").read_text()
    assert "1 step(s) failed" in proc.stderr and "igebm_digits_cpu_s0: exit status 3" in proc.stderr


def test_launchers_dry_run_and_say_what_is_missing(tmp_path):
    import subprocess
    run_all = ["bash", str(Path(__file__).parent / "run_all.sh"), "--runs-dir", str(tmp_path / "runs"),
               "--datasets", "mnist", "--models", "cebm-gmm vae"]
    dry = subprocess.run(run_all + ["--launcher", "slurm", "--partition", "gpu", "--gpus-per-job", "2", "--dry-run"],
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "slurm_partition=gpu" in dry.stdout and "gpus_per_node=2" in dry.stdout
    assert "array task 1: python baselines.py --model vae --dataset mnist" in dry.stdout and "--resume" in dry.stdout
    assert "afterany" in dry.stdout and not (tmp_path / "runs").exists()  # a dry run writes nothing
    gpus = subprocess.run(run_all + ["--launcher", "local", "--gpus", "0,3", "--dry-run"], capture_output=True, text=True)
    assert "2 cells at a time" in gpus.stdout and "GPU 3" in gpus.stdout
    no_submitit = tmp_path / "nosubmitit"
    no_submitit.mkdir()
    (no_submitit / "submitit.py").write_text("raise ImportError('not installed')\n")
    proc = subprocess.run(run_all + ["--launcher", "local", "--jobs", "2"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(no_submitit)})
    assert proc.returncode == 2 and proc.stderr.strip() == "run_all.sh: --launcher needs submitit: pip install submitit"
    assert not (tmp_path / "runs").exists()
    for bad, line in ((["--jobs", "2"], "--jobs needs --launcher local or slurm"),
                      (["--launcher", "pbs"], "--launcher must be local or slurm, not 'pbs'"),
                      (["--launcher", "local", "--gpus", "a,b", "--dry-run"], "--gpus takes GPU numbers")):
        proc = subprocess.run(run_all + bad, capture_output=True, text=True)
        assert proc.returncode == 2 and line in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

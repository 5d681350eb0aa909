"""The paper's evaluation, from saved run folders: few-shot classification (Table 1), 1-nearest-neighbour
confusion matrices (Fig. 1, Appendix F) and out-of-distribution AUROC (Table 5).

    python evaluate.py runs/cebm-gaussian_mnist_cpu_s0 runs/vae_mnist_cpu_s0 --data-dir ./data --out results/x

Each run is rebuilt from the config in its checkpoint (no flags to repeat). Writes, under --out:
fewshot.{csv,md}, knn.{csv,md}, ood.{csv,md}, confusion_<dataset>.png, neighbours_<dataset>.png and
report.md, which gathers them with the paper's numbers in separate columns.
"""
import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import baselines
import cebm

NAMES = {"cebm-gaussian": "CEBM", "cebm-gmm": "GMM-CEBM", "igebm": "IGEBM", "vae": "VAE",
         "gmmvae": "GMM-VAE", "bigan": "BiGAN"}
ORDER = ["pixels", "vae", "gmmvae", "bigan", "igebm", "cebm-gaussian", "cebm-gmm"]
DATASET_NAMES = {"mnist": "MNIST", "fashionmnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "svhn": "SVHN",
                 "digits": "digits (sklearn)"}

# Poster: 1-NN accuracy on CIFAR-10.
PAPER_KNN = {"cifar10": {"pixels": 0.35, "vae": 0.38, "cebm-gaussian": 0.45}}


PARTS = ("fewshot", "knn", "ood")


def parse_args(argv=None):
    p = cebm.Parser(__doc__)
    p.add_argument("runs", nargs="+", help="run folders written by cebm.py or baselines.py, or folders or "
                   "files of weights written by --export")
    p.add_argument("--data-dir", default="./data", help="torchvision root with the datasets (and OOD sets)")
    p.add_argument("--out-dir", "--out", dest="out", default="results/eval",
                   help="folder for tables, figures and report.md (default: results/eval)")
    p.add_argument("--shots", default="1,10,100,full",
                   help="labelled examples per class; 'full' = all (default: 1,10,100,full)")
    p.add_argument("--draws", type=int, default=10, help="seeded random draws per few-shot setting (default: 10)")
    p.add_argument("--digits", type=int, default=1,
                   help="decimals of the few-shot accuracies (a cell at the paper's edge needs more; default: 1)")
    p.add_argument("--protocol", default="paper",
                   help="few-shot protocol(s), comma-separated: 'paper' (the official code: one-vs-rest "
                        "liblinear logistic regression on raw features) and/or 'standardized' (multinomial "
                        "lbfgs on features standardised with the unlabelled training set's mean and std); "
                        "each gets its own labelled rows (default: paper)")
    p.add_argument("--ood-n", type=int, default=0,
                   help="images per OOD set and of the test set (default: 0 = all)")
    p.add_argument("--ood-k", type=int, default=100, help="importance samples of the VAEs' log p(x) (default: 100)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: " + ", ".join(PARTS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed for OOD noise, constant images, VAE samples (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for log files)")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # run_all.sh records its own command
    args = p.parse_args(argv)
    unknown = set(filter(None, args.skip.split(","))) - set(PARTS)
    if unknown:
        p.error(f"--skip takes {', '.join(PARTS)}, not {', '.join(sorted(unknown))}")
    if args.draws < 1 or args.ood_k < 1 or args.ood_n < 0 or not 0 <= args.digits <= 6:
        p.error("--draws and --ood-k must be at least 1, --ood-n at least 0, --digits 0 to 6")
    cebm.check_device(p, args.device)
    return args


# --------------------------------------------------------------------------------------------------
# Runs and features
# --------------------------------------------------------------------------------------------------

def load_run(path, device):
    """(model, config, checkpoint info) for a run folder of cebm.py or baselines.py."""
    ckpt = cebm.load_checkpoint(path)
    cfg = ckpt["config"]
    build = cebm.build_model if cfg["model"].startswith("cebm") else baselines.build_model
    model = build(cfg)
    cebm.load_weights(model, cebm.delivered_weights(ckpt), path)
    return model.to(device).eval(), cfg, {"iteration": ckpt["iteration"], "seconds": ckpt["seconds"]}


def pixels(x):
    return x.flatten(1)


# --------------------------------------------------------------------------------------------------
# 1-nearest neighbours (Fig. 1, Appendix F)
# --------------------------------------------------------------------------------------------------

def nearest(train_x, test_x, k=1, device="cpu", chunk=1000):
    """Indices [N_test, k] of the k nearest training points by L2 distance."""
    tr = torch.as_tensor(train_x, dtype=torch.float32, device=device)
    out = []
    for i in range(0, len(test_x), chunk):
        q = torch.as_tensor(test_x[i:i + chunk], dtype=torch.float32, device=device)
        d = (q * q).sum(1, keepdim=True) - 2 * q @ tr.T + (tr * tr).sum(1)  # squared L2, no sqrt needed
        out.append(d.topk(k, dim=1, largest=False).indices.cpu())
    return torch.cat(out).numpy()


def confusion(y_true, y_pred, n_classes):
    """Row-normalised confusion matrix: row = true class, column = class of the nearest neighbour."""
    m = np.zeros((n_classes, n_classes))
    np.add.at(m, (y_true, y_pred), 1)
    return m / np.maximum(m.sum(1, keepdims=True), 1)


# --------------------------------------------------------------------------------------------------
# Out-of-distribution detection (Table 5)
# --------------------------------------------------------------------------------------------------

OTHER = {"mnist": "fashionmnist", "fashionmnist": "mnist", "digits": "fashionmnist",
         "cifar10": "svhn", "svhn": "cifar10"}


def ood_sets(dataset, data_dir, n, seed, n_test=10_000):
    """OOD image sets (uint8 [N, C, H, W]) for a training set, and a line for each set skipped."""
    channels, size, _ = cebm.DATASETS[dataset]
    g = torch.Generator().manual_seed(seed)
    sets, skipped = {}, []
    other = OTHER[dataset]
    try:
        sets[other] = cebm.load_dataset(other, data_dir, train=False)[0]
    except cebm.CEBMError as e:
        skipped.append(f"{other}: skipped ({e})")
    extra = _load_emnist if size == 28 else _load_textures
    try:
        sets["emnist" if size == 28 else "textures"] = extra(data_dir)
    except cebm.CEBMError as e:
        skipped.append(str(e))
    m = n or n_test  # as many constant (and noise) images as test images
    level = torch.randint(0, 256, (m, channels, 1, 1), generator=g, dtype=torch.int64)
    sets["constant"] = level.expand(m, channels, size, size).to(torch.uint8).contiguous()  # one grey/colour per image
    if size == 28:
        sets["noise"] = torch.randint(0, 256, (m, channels, size, size), generator=g).to(torch.uint8)
    if n:
        sets = {k: v[torch.randperm(len(v), generator=g)[:n]] for k, v in sets.items()}
    return sets, skipped


def _load_emnist(data_dir):
    """EMNIST 'digits' test split (the official code's choice), turned upright: torchvision serves the
    images transposed, as they are stored."""
    import torchvision.datasets as tvd
    try:
        ds = tvd.EMNIST(data_dir, split="digits", train=False, download=True)
    except Exception as e:
        raise cebm.CEBMError(f"emnist: skipped, not found in '{data_dir}' and not downloadable "
                             f"({cebm.reason(e)}); put EMNIST/raw/ there") from None
    return ds.data.transpose(1, 2).unsqueeze(1).contiguous()


def _load_textures(data_dir, size=32):
    """Every DTD image (the official code's ImageFolder on dtd/images, not one test partition),
    resized bilinearly to size x size. Looks in <data_dir>/dtd/dtd/images (torchvision's layout) or
    <data_dir>/dtd/images, and downloads through torchvision when neither is there."""
    from PIL import Image
    import torchvision.datasets as tvd
    roots = [Path(data_dir) / "dtd" / "dtd" / "images", Path(data_dir) / "dtd" / "images"]
    if not any(r.is_dir() for r in roots):
        try:
            tvd.DTD(data_dir, download=True)
        except Exception as e:
            raise cebm.CEBMError(f"textures: skipped, not found in '{data_dir}' and not downloadable "
                                 f"({cebm.reason(e)}); put dtd/images/<class>/*.jpg there") from None
    files = sorted(next(r for r in roots if r.is_dir()).glob("*/*.jpg"))
    if not files:
        raise cebm.CEBMError(f"textures: skipped, no images in '{data_dir}/dtd'")
    images = [torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)))
              for f in files]
    return torch.stack(images).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# Tables and figures
# --------------------------------------------------------------------------------------------------

def write_table(path, header, rows):
    """One CSV and one Markdown file with the same rows."""
    with open(path.with_suffix(".csv"), "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    path.with_suffix(".md").write_text(markdown(header, rows))


def markdown(header, rows):
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows]) + "\n"


def pct(accs, digits=1):
    return f"{100 * np.mean(accs):.{digits}f} ± {100 * np.std(accs):.{digits}f}"


def plot_confusions(path, title, mats):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(mats), figsize=(3.1 * len(mats), 3.4), squeeze=False)
    for ax, (name, (acc, m)) in zip(axes[0], mats.items()):
        ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}"[1:] if m[i, j] < 1 else "1", ha="center", va="center",
                        fontsize=4.5, color="white" if m[i, j] > 0.5 else "black")
        ax.set_title(f"{name}: {acc:.2f}", fontsize=9)
        ax.set_xlabel("nearest neighbour's class", fontsize=7)
        ax.set_ylabel("true class", fontsize=7)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_neighbours(path, title, queries, columns):
    """Rows: test images; columns: the query, then its 2 nearest training images per space."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(queries)
    cols = 1 + 2 * len(columns)
    fig, axes = plt.subplots(n, cols, figsize=(0.9 * cols, 0.95 * n + 0.5), squeeze=False)
    for r in range(n):
        tiles = [("query", queries[r])] + [(name, imgs[r][j]) for name, imgs in columns.items() for j in range(2)]
        for c, (name, img) in enumerate(tiles):
            ax = axes[r, c]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and (c == 0 or c % 2 == 1):
                ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------

def evaluate(args):
    """The three evaluations of the paper for every dataset the runs were trained on; then report.md."""
    t_start = time.time()
    device = torch.device(args.device)
    out = Path(args.out)
    skip = set(filter(None, args.skip.split(",")))
    shots, protocols = parse_lists(args)
    runs = load_runs(args.runs, device)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"fewshot": [], "knn": [], "ood": []}
    notes, sections = [], []
    for dataset, drs in sorted(group_by_dataset(runs).items()):
        name = DATASET_NAMES.get(dataset, dataset)
        print(f"== {name}: {len(drs)} runs", file=sys.stderr)
        data = {split: cebm.load_dataset(dataset, args.data_dir, train=split == "train") for split in ("train", "test")}
        feats = {"pixels": [cebm.encode(pixels, data[s][0], device) for s in ("train", "test")]}
        for r in tqdm(drs, desc="encoding", disable=args.no_progress, leave=False):
            feats[r["path"]] = [cebm.encode(r["model"].latent, data[s][0], device) for s in ("train", "test")]
        sec = {"dataset": dataset, "fewshot": [], "knn": [], "ood": [], "figures": []}
        if "fewshot" not in skip:
            sec["fewshot"] = fewshot_part(args, dataset, drs, feats, data, shots, protocols)
        if "knn" not in skip:
            sec["knn"], sec["figures"] = knn_part(args, dataset, drs, feats, data, out, device)
        if "ood" not in skip:
            sec["ood"] = ood_part(args, dataset, drs, data["test"][0], notes, device)
        for part in tables:
            tables[part] += [[name] + row for row in sec[part]]
        sections.append(sec)
    headers = {"fewshot": ["dataset", "model", "protocol"] + [f"ours {s}" for s in shots] + [f"paper {s}" for s in shots],
               "knn": ["dataset", "model", "ours 1-NN accuracy", "paper (poster)"],
               "ood": ["dataset", "model", "OOD set", "score", "ours AUROC %", "paper AUROC %"]}
    for part, rows in tables.items():
        if part not in skip:
            write_table(out / part, headers[part], rows)
    write_report(out / "report.md", args, runs, sections, notes, shots, time.time() - t_start, device)
    print(f"wrote {out}/report.md", file=sys.stderr)


def parse_lists(args):
    """--shots and --protocol as lists, checked."""
    shots = [s.strip() for s in args.shots.split(",")]
    for s in shots:
        if s != "full" and not s.isdigit():
            raise cebm.CEBMError(f"--shots takes whole numbers and 'full', not '{s}'")
    protocols = [p.strip() for p in args.protocol.split(",")]
    for p in protocols:
        if p not in cebm.PROTOCOLS:
            raise cebm.CEBMError(f"--protocol takes {' and/or '.join(cebm.PROTOCOLS)}, not '{p}'")
    return shots, protocols


def load_runs(paths, device):
    """Every run as a dict (path, model, cfg, iteration, seconds, label). The label is the model's name, with
    the end of its path that tells it apart when several runs of one model share a dataset (tables, figures)."""
    runs, groups = [], {}
    for path in paths:
        model, cfg, info = load_run(path, device)
        runs.append({"path": path, "model": model, "cfg": cfg, **info})
        groups.setdefault((cfg["dataset"], cfg["model"]), []).append(runs[-1])
    for same in groups.values():
        for r, tail in zip(same, distinct_tails([r["path"] for r in same])):
            name = NAMES.get(r["cfg"]["model"], r["cfg"]["model"])
            r["label"] = f"{name} ({tail})" if len(same) > 1 else name
    return runs


def distinct_tails(paths):
    """The last k parts of each path, with the smallest k that tells them apart (run/best.pt, run2/best.pt),
    each reaching back to its run's folder: a file name or snapshots/ alone does not say which run it is."""
    parts = [Path(p).parts for p in paths]
    k = 1
    while k < max(map(len, parts)) and len({p[-k:] for p in parts}) < len(parts):
        k += 1
    return ["/".join(p[-_back_to_run(p, k):]) for p in parts]


def _back_to_run(parts, k):
    while k < len(parts) and (parts[-k] == "snapshots" or parts[-k].endswith(".pt")):
        k += 1
    return k


def group_by_dataset(runs):
    """{dataset: its runs in the paper's row order}."""
    groups = {}
    for r in runs:
        groups.setdefault(r["cfg"]["dataset"], []).append(r)
    for drs in groups.values():
        drs.sort(key=lambda r: (ORDER.index(r["cfg"]["model"]) if r["cfg"]["model"] in ORDER else 99, r["cfg"]["seed"]))
    return groups


def fewshot_part(args, dataset, drs, feats, data, shots, protocols):
    """Table 1: rows (model, protocol, ours per shot..., paper per shot...)."""
    y_train, y_test = data["train"][1].numpy(), data["test"][1].numpy()
    draws = cebm.few_shot_draws(y_train, shots, args.draws)
    entries = [("pixels", "pixels", "pixels")] + [(r["path"], r["label"], r["cfg"]["model"]) for r in drs]
    rows = []
    for key, label, model in tqdm(entries, desc="few-shot", disable=args.no_progress):
        f_train, f_test = feats[key]
        for protocol in protocols:
            res = cebm.few_shot(f_train, y_train, f_test, y_test, draws, protocol)
            paper = cebm.PAPER_TABLE1.get(dataset, {}).get(model)
            cells = [paper[["1", "10", "100", "full"].index(s)] if paper and protocol == "paper" and
                     s in ("1", "10", "100", "full") else "" for s in shots]
            rows.append([label, protocol] + [pct(res[s], args.digits) for s in shots] + cells)
            print(f"   few-shot {label} ({protocol}): " + ", ".join(f"{s}: {pct(res[s], args.digits)}" for s in shots),
                  file=sys.stderr)
    return rows


def knn_part(args, dataset, drs, feats, data, out, device):
    """Fig. 1 / Appendix F: 1-NN accuracy rows, confusion matrices and nearest-neighbour figures."""
    (x_train, y_train), (x_test, y_test) = [(x, y.numpy()) for x, y in (data["train"], data["test"])]
    name = DATASET_NAMES.get(dataset, dataset)
    entries = [("pixels", "pixels", "pixels")] + [(r["path"], r["label"], r["cfg"]["model"]) for r in drs]
    rows, mats, nn2 = [], {}, {}
    for key, label, model in tqdm(entries, desc="1-NN", disable=args.no_progress):
        idx = nearest(*feats[key], k=2, device=device)
        pred = y_train[idx[:, 0]]
        acc = float((pred == y_test).mean())
        mats[label], nn2[label] = (acc, confusion(y_test, pred, int(y_train.max()) + 1)), idx
        rows.append([label, f"{acc:.3f}", PAPER_KNN.get(dataset, {}).get(model, "")])
    conf_png, nn_png = out / f"confusion_{dataset}.png", out / f"neighbours_{dataset}.png"
    plot_confusions(conf_png, f"1-NN confusion matrices, {name} test set (row-normalised; title: accuracy)", mats)
    q = np.random.RandomState(args.seed).choice(len(x_test), 6, replace=False)
    cols = {label: [x_train[torch.as_tensor(idx[i])] for i in q] for label, idx in nn2.items()}
    plot_neighbours(nn_png, f"{name}: test images and their 2 nearest training images in each space",
                    [x_test[i] for i in q], cols)
    return rows, [conf_png.name, nn_png.name]


def ood_part(args, dataset, drs, x_test, notes, device):
    """Table 5: AUROC rows (model, OOD set, score, ours, paper) of log p(x) and the gradient score."""
    name = DATASET_NAMES.get(dataset, dataset)
    sets, skipped = ood_sets(dataset, args.data_dir, args.ood_n, args.seed, len(x_test))
    for line in skipped:
        print(f"   OOD {line}", file=sys.stderr)
        notes.append(f"{name}: OOD set {line}")
    x_in = x_test
    if args.ood_n:
        x_in = x_test[torch.randperm(len(x_test), generator=torch.Generator().manual_seed(args.seed))[:args.ood_n]]
    rows = []
    for r in drs:
        log_p = cebm.density(r["model"], args.ood_k)
        if log_p is None:
            notes.append(f"{name}: {r['label']} has no density; no OOD scores")
            continue
        noise = cebm.score_noise(r["model"], r["cfg"])
        batch = 100 if hasattr(r["model"], "energy") else max(1, 2000 // args.ood_k)
        paper = cebm.PAPER_TABLE5.get(dataset, {}).get(r["cfg"]["model"], {})
        parts = {"in-distribution": x_in, **sets}
        bar = tqdm(parts.items(), desc=f"OOD {r['label']}", disable=args.no_progress)
        s = {set_name: cebm.ood_scores(log_p, imgs, noise, device, args.seed + (set_name in sets), batch)
             for set_name, imgs in bar}
        for set_name in sets:
            for i, score in enumerate(("logp", "grad")):
                rows.append([r["label"], set_name, "log p(x)" if score == "logp" else "-‖∇x log p(x)‖",
                             f"{100 * cebm.auroc(s['in-distribution'][i], s[set_name][i]):.1f}",
                             paper.get((score, set_name), "")])
    return rows


def hardware():
    """The CPU's model name where Linux tells it, else the architecture."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sgld_steps(cfg):
    """The runs table's 'SGLD steps': the PCD-trained energy models' steps, 'VERA' (no chains) or '-'."""
    if cfg.get("trainer", "pcd") == "vera":
        return "VERA (none)"
    return cfg["sgld_steps"] if cfg["model"] == "igebm" or cfg["model"].startswith("cebm") else "-"


def write_report(path, args, runs, sections, notes, shots, seconds, device):
    cmd = args.command or "python evaluate.py " + " ".join(sys.argv[1:])
    lines = ["# CEBM benchmark report", "",
             "Every number in the 'ours' columns was computed by `evaluate.py` from the run folders listed "
             "below; the 'paper' columns are copied from Wu et al. (2021), Tables 1 and 5, and the poster "
             "(BiGAN, 1-NN), for reference only. Runs trained with a small budget are far from the paper's "
             "90k iterations: compare their budgets before their numbers.", "",
             f"- command: `{cmd}`",
             f"- evaluation: {hardware()}, {torch.get_num_threads()} CPU threads, "
             f"device {device}, torch {torch.__version__}, {seconds / 60:.1f} min",
             "- few-shot, protocol 'paper' (the official code's): one-vs-rest LogisticRegression(solver="
             "'liblinear', max_iter=10000, random_state=0) on raw features; 'standardized': multinomial lbfgs "
             "(C=1, max_iter=1000) on features standardised with the training set's mean and std. "
             f"{args.draws} seeded draws of exactly n labels per class; accuracy on the full test set, mean ± "
             "std over draws ('full': one fit on the whole training set). Paper columns only on 'paper' rows",
             f"- 1-NN: L2 distance between latents (pixels for the pixel row); OOD: "
             f"{'all' if not args.ood_n else args.ood_n} test images per set; energy models scored with their "
             f"training data noise added to both sides (as the official code), VAEs on clean images as they were "
             f"trained; VAE log p(x) with {args.ood_k} importance samples, seeded. The paper's VAE column scores "
             "-log p(x) (official code); ours scores log p(x) for every model", "",
             "## Runs and their budgets", "",
             markdown(["run", "model", "dataset", "preset", "encoder", "iterations", "batch", "SGLD steps",
                       "train wall time", "train device", "mode"],
                      [[f"`{r['path']}`", r["label"], r["cfg"]["dataset"], r["cfg"].get("preset", ""),
                        "code (--arch code)" if r["cfg"].get("arch") == "code" else "Table 2",
                        r["iteration"], r["cfg"]["batch_size"],
                        sgld_steps(r["cfg"]), f"{r['seconds'] / 60:.1f} min", r["cfg"]["device"],
                        "eager" if r["cfg"].get("eager") else "fast"] for r in runs])]
    for sec in sections:
        name = DATASET_NAMES.get(sec["dataset"], sec["dataset"])
        lines += ["", f"## {name}", ""]
        if sec["fewshot"]:
            lines += ["### Few-shot classification (Table 1), test accuracy %", "",
                      markdown(["model", "protocol"] + [f"ours {s}" for s in shots] + [f"paper {s}" for s in shots],
                               sec["fewshot"])]
        if sec["knn"]:
            lines += ["### 1-nearest-neighbour classification (Fig. 1, Appendix F)", "",
                      markdown(["model", "ours accuracy", "paper (poster, CIFAR-10)"], sec["knn"])]
            lines += [f"![{f}]({f})" for f in sec["figures"]] + [""]
        if sec["ood"]:
            lines += ["### Out-of-distribution detection (Table 5), AUROC %", "",
                      markdown(["model", "OOD set", "score", "ours", "paper"], sec["ood"])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    existed = out.exists()
    try:
        evaluate(args)
    except (cebm.CEBMError, OSError) as e:
        if isinstance(e, OSError):
            e = f"cannot read or write {e.filename or out} ({cebm.reason(e)})"
        print(f"error: {e}", file=sys.stderr)
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty folder behind
        sys.exit(1)


if __name__ == "__main__":
    main()

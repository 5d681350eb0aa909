"""The 'full' column of Table 1 for shipped models: the paper's protocol (one-vs-rest liblinear logistic
regression on raw latents, cebm.few_shot) fitted on all 60,000 training latents and scored on the full test
set. ship.sh leaves this column out because the raw-pixel fit (784 features) had not finished after 10 CPU
minutes; a latent has far fewer features, so this script fits the models' latents only.

    python results/long/full_column.py results/long/cebm-*_mnist/best.pt --data-dir ../shared/data \
        --out results/long/eval/full_mnist.md
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import cebm
import evaluate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="weights files (best.pt / weights.pt) of models of one dataset")
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--out", required=True, help="markdown table to write")
    p.add_argument("--digits", type=int, default=1, help="decimals of the accuracy (a cell at the paper's edge needs more)")
    args = p.parse_args()
    rows, data = [], {}
    for path in args.models:
        model, cfg, info = evaluate.load_run(path, "cpu")
        ds = cfg["dataset"]
        if ds not in data:
            data[ds] = [cebm.load_dataset(ds, args.data_dir, train=t) for t in (True, False)]
        (x_tr, y_tr), (x_te, y_te) = data[ds]
        feats = [cebm.encode(model.latent, x, "cpu") for x in (x_tr, x_te)]
        t0 = time.time()
        acc = cebm.few_shot(feats[0], y_tr.numpy(), feats[1], y_te.numpy(), {"full": [np.arange(len(y_tr))]})["full"][0]
        paper = cebm.PAPER_TABLE1.get(ds, {}).get(cfg["model"], ("",) * 4)[3]
        rows.append(f"| `{path}` | {cfg['model']} | {ds} | {info['iteration']} | {100 * acc:.{args.digits}f} | {paper} | "
                    f"{time.time() - t0:.0f} s |")
        print(rows[-1], flush=True)
    header = ["| weights | model | dataset | iteration | ours, full (%) | paper, full | fit time |",
              "|---|---|---|---|---|---|---|"]
    intro = (f"Table 1's 'full' column, the paper's protocol on all training latents, full test set. Command: "
             f"`python {' '.join(sys.argv)}`; {evaluate.hardware()}, {torch.get_num_threads()} CPU threads, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.\n\n")
    Path(args.out).write_text(intro + "\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()

"""Train (or load from runs/tokenizers/) the judge and the image tokenizers a config selects; print their test metrics.

    python benchmarks/tokenizers.py --dataset mnist                                  # the tiny defaults
    python benchmarks/tokenizers.py --dataset cifar10 --quantizers vq,fsq,lfq --vq-codebook-size 1024
    python benchmarks/tokenizers.py --dataset cifar10 --only latent --latent-kinds ae,patch --out tok.json
    python benchmarks/tokenizers.py --dataset mnist --preset smoke --runs-dir /tmp/runs  # seconds, wiring only

Every `python -m minimfm tokenizer train` flag works here (it builds the same Config), and each model is built
by the same `store.build_tokenizer`, so these figures are the ones the training commands get; a cached model
is loaded with the metrics measured when it was trained (`--overwrite` retrains). Metrics are on the test
split: judge accuracy and the Fréchet-distance rungs of judge features (train vs test at 10,000 images and at
the evaluation's sample size, blurred test vs test, and two random halves of the test split); per tokenizer
the reconstruction MSE, judge accuracy on reconstructions, discrete codebook usage and perplexity, and the
training wall and CPU seconds (on a shared machine the CPU seconds are the stable figure).
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from minimfm.checkpoint import load_checkpoint
from minimfm.config import add_config_flags, config_from_args
from minimfm.data import load_images
from minimfm.judge import frechet_distance, judge_features
from minimfm.tokenizers.store import build_tokenizer, get_tokenizer, tokenizer_path


def measured(cfg, kind: str, overwrite: bool) -> dict:
    """Metrics of the cached model for (cfg, kind), training and caching it first if needed."""
    path = tokenizer_path(cfg, kind)
    if overwrite or not path.is_file():
        if kind != "judge":
            get_tokenizer(cfg, "judge")  # reconstructions are scored by the judge
        return build_tokenizer(cfg, kind)[1]
    return load_checkpoint(path, kind=kind, dataset=cfg.dataset)["metrics"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p)
    p.add_argument("--only", default="judge,vq,latent", help="comma list of judge, vq, latent")
    p.add_argument("--quantizers", default=None, help="comma list of vq, fsq, lfq (default: --quantizer)")
    p.add_argument("--latent-kinds", default=None, help="comma list of ae, patch (default: --latent-kind)")
    p.add_argument("--overwrite", action="store_true", help="retrain even if a checkpoint exists")
    p.add_argument("--out", default=None, help="also write every row as JSON here")
    args = p.parse_args()
    cfg = config_from_args(args)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    only = set(args.only.split(","))
    rows = []

    if "judge" in only:
        metrics = dict(measured(cfg, "judge", args.overwrite))
        judge = get_tokenizer(cfg, "judge", verbose=False)
        f_test = judge_features(judge, load_images(cfg.dataset, "test", cfg.data_root)[0])
        # Two random halves of the test split: a floor free of any train/test gap of the judge itself.
        perm = torch.randperm(len(f_test), generator=torch.Generator().manual_seed(0))
        half = len(f_test) // 2
        metrics["fd_test_halves"] = frechet_distance(f_test[perm[:half]], f_test[perm[half:2 * half]])
        rows.append(dict(kind="judge", path=str(tokenizer_path(cfg, "judge")), metrics=metrics))
    quantizers = args.quantizers.split(",") if args.quantizers else [cfg.quantizer]
    latents = args.latent_kinds.split(",") if args.latent_kinds else [cfg.latent_kind]
    for quantizer in quantizers if "vq" in only else []:
        c = dataclasses.replace(cfg, quantizer=quantizer)
        rows.append(dict(kind=quantizer, path=str(tokenizer_path(c, "vq")),
                         metrics=measured(c, "vq", args.overwrite)))
    for latent in latents if "latent" in only else []:
        c = dataclasses.replace(cfg, latent_kind=latent)
        rows.append(dict(kind=latent, path=str(tokenizer_path(c, "latent")),
                         metrics=measured(c, "latent", args.overwrite)))

    for row in rows:
        print(f"{row['kind']:>6}  {row['path']}\n        " + "  ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row["metrics"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

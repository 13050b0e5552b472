"""Train the judge, the VQ tokenizer and the autoencoder latent for one dataset and print their test metrics.

    PYTHONPATH=. python benchmarks/tokenizers.py --dataset mnist                 # the `tiny` defaults
    PYTHONPATH=. python benchmarks/tokenizers.py --dataset mnist --preset smoke  # seconds, checks wiring only
    PYTHONPATH=. python benchmarks/tokenizers.py --dataset cifar10 --steps-scale 0.5 --save runs/tok

Metrics are on the test split: judge accuracy; judge-FD (Fréchet distance on judge features) of train vs test
(the floor a perfect generator could reach) and of test vs Gaussian-blurred test (a reference rung); for
each tokenizer the reconstruction MSE, judge accuracy on reconstructions, and VQ codebook usage/perplexity.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchvision.transforms.functional import gaussian_blur

from minimfm.checkpoint import load_checkpoint, save_atomic
from minimfm.data import load_images
from minimfm.judge import frechet_distance, judge_accuracy, judge_features
from minimfm.tokenizers.training import (make_patch_latent, reconstruction_metrics, tokenizer_from_checkpoint,
                                         tokenizer_to_checkpoint, train_autoencoder, train_judge, train_vq)

# steps / batch / lr per preset; tiny is sized for ~2-3 min per model on 2 CPU threads (MNIST).
PRESETS = {
    "tiny": dict(judge_steps=2000, vq_steps=2000, ae_steps=2000, batch_size=128, judge_lr=2e-3, vq_lr=2e-3,
                 ae_lr=2e-3, codebook_size=256, latent_channels=4),
    "smoke": dict(judge_steps=20, vq_steps=20, ae_steps=20, batch_size=32, judge_lr=2e-3, vq_lr=2e-3, ae_lr=2e-3,
                  codebook_size=64, latent_channels=4),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply all step counts")
    for key, value in PRESETS["tiny"].items():
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=None, help=f"tiny: {value}")
    p.add_argument("--only", default="judge,vq,ae,patch", help="comma list of judge,vq,ae,patch")
    p.add_argument("--eval-limit", type=int, default=10000, help="test images used for metrics")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--root", default="data")
    p.add_argument("--judge-ckpt", default=None, help="score reconstructions with this saved judge instead of "
                   "training one (use with --only vq,ae)")
    p.add_argument("--save", default=None, help="folder to write judge.pt / vq.pt / latent.pt checkpoints")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in PRESETS[args.preset].items()}
    for k in ("judge_steps", "vq_steps", "ae_steps"):
        cfg[k] = max(1, round(cfg[k] * args.steps_scale))
    print("config:", cfg)
    only = set(args.only.split(","))

    x_train, y_train = load_images(args.dataset, "train", args.root)
    x_test, y_test = load_images(args.dataset, "test", args.root)
    x_test, y_test = x_test[:args.eval_limit], y_test[:args.eval_limit]
    common = dict(batch_size=cfg["batch_size"], seed=args.seed)

    def timed(fn, **kw):
        """Run fn and return (result, 'wall/cpu' string): on a shared machine CPU seconds are the stable figure."""
        t, c = time.time(), time.process_time()
        out = fn(**kw)
        return out, time.time() - t, f"{time.time() - t:.0f}s wall, {time.process_time() - c:.0f}s cpu"

    def save(model, kind, name, config, metrics):
        if args.save:
            ckpt = tokenizer_to_checkpoint(model, kind=kind, dataset=args.dataset, config=config, metrics=metrics)
            save_atomic(ckpt, Path(args.save) / f"{name}.pt")

    judge = None
    if args.judge_ckpt:
        judge = tokenizer_from_checkpoint(load_checkpoint(args.judge_ckpt, kind="judge", dataset=args.dataset))
    if "judge" in only:
        judge, wall, took = timed(train_judge, images=x_train, labels=y_train, steps=cfg["judge_steps"],
                                  lr=cfg["judge_lr"], **common)
        acc = judge_accuracy(judge, x_test, y_test)
        print(f"judge: test accuracy {acc:.4f}  ({took}, {cfg['judge_steps']} steps)")
        f_test = judge_features(judge, x_test)
        f_train = judge_features(judge, x_train[:len(x_test)])
        blurred = gaussian_blur(x_test, kernel_size=5, sigma=1.0)
        f_blur = judge_features(judge, blurred)
        fd_floor, fd_blur = frechet_distance(f_train, f_test), frechet_distance(f_test, f_blur)
        half = len(x_test) // 2
        # The judge has seen the train images, so on an overfitted judge (CIFAR) train features sit apart from
        # test features; two random halves of the test split give a floor free of that bias (at half the
        # sample size). Random, not first/second half: MNIST's test split puts its neater writers first.
        perm = torch.randperm(len(f_test), generator=torch.Generator().manual_seed(0))
        fd_halves = frechet_distance(f_test[perm[:half]], f_test[perm[half:2 * half]])
        print(f"judge-FD train[:{len(x_test)}] vs test: {fd_floor:.3f}   random test halves ({half} vs {half}): "
              f"{fd_halves:.3f}   test vs blurred test (k5, s1): {fd_blur:.3f}   "
              f"judge accuracy on blurred: {judge_accuracy(judge, blurred, y_test):.4f}")
        save(judge, "judge", "judge", dict(steps=cfg["judge_steps"], lr=cfg["judge_lr"], **common),
             dict(test_accuracy=acc, fd_train_test=fd_floor, fd_test_halves=fd_halves, fd_test_blur=fd_blur,
                  train_seconds=wall))

    if "vq" in only:
        vq, wall, took = timed(train_vq, images=x_train, codebook_size=cfg["codebook_size"], steps=cfg["vq_steps"],
                               lr=cfg["vq_lr"], **common)
        m = reconstruction_metrics(vq, x_test, judge, y_test)
        print(f"vq: {fmt(m)}  perplexity/K {m['perplexity'] / cfg['codebook_size']:.2f}  ({took}, "
              f"{cfg['vq_steps']} steps)")
        save(vq, "vq", "vq", dict(steps=cfg["vq_steps"], lr=cfg["vq_lr"], **common), dict(m, train_seconds=wall))

    if "ae" in only:
        ae, wall, took = timed(train_autoencoder, images=x_train, latent_channels=cfg["latent_channels"],
                               steps=cfg["ae_steps"], lr=cfg["ae_lr"], **common)
        m = reconstruction_metrics(ae, x_test, judge, y_test)
        print(f"autoencoder latent: {fmt(m)}  ({took}, {cfg['ae_steps']} steps)")
        save(ae, "latent", "latent", dict(steps=cfg["ae_steps"], lr=cfg["ae_lr"], **common),
             dict(m, train_seconds=wall))

    if "patch" in only:
        patch = make_patch_latent(x_train, patch=4)
        print(f"patch latent: {fmt(reconstruction_metrics(patch, x_test, judge, y_test))}")
        save(patch, "latent", "patch_latent", {}, {})


def fmt(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if k != "perplexity" else f"{k} {v:.1f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()

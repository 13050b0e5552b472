"""Find or build the image tokenizers and the judge a run needs, cached under runs/tokenizers/.

A training command asks for "the VQ tokenizer for MNIST with 256 codes"; if `runs/tokenizers/mnist-vq-256.pt`
exists and matches, it is loaded, otherwise it is trained once with the config's tokenizer settings and saved
atomically. The file name carries every setting that changes the tokenizer, so two settings never collide.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from minimfm.checkpoint import load_checkpoint, save_atomic
from minimfm.config import Config
from minimfm.data import load_images


def tokenizer_path(cfg: Config, kind: str) -> Path:
    folder = Path(cfg.runs_dir) / "tokenizers"
    if kind == "vq":
        name = f"{cfg.dataset}-vq-{cfg.vq_codebook_size}x{cfg.vq_code_dim}-{cfg.vq_steps}steps"
    elif kind == "latent":
        name = f"{cfg.dataset}-patch" if cfg.latent_kind == "patch" else \
            f"{cfg.dataset}-ae-{cfg.latent_channels}ch-{cfg.ae_steps}steps"
    elif kind == "judge":
        name = f"{cfg.dataset}-judge-{cfg.judge_steps}steps"
    else:
        raise ValueError(f"unknown tokenizer kind '{kind}', choose vq, latent or judge")
    return folder / f"{name}{'-limit' + str(cfg.limit_train) if cfg.limit_train else ''}.pt"


def _train(cfg: Config, kind: str, verbose: bool):
    from minimfm.tokenizers import training as T
    images, labels = load_images(cfg.dataset, "train", cfg.data_root)
    if cfg.limit_train:
        images, labels = images[:cfg.limit_train], labels[:cfg.limit_train]
    common = dict(batch_size=cfg.tokenizer_batch_size, lr=cfg.tokenizer_lr, seed=cfg.seed, progress=verbose)
    if kind == "vq":
        return T.train_vq(images, codebook_size=cfg.vq_codebook_size, code_dim=cfg.vq_code_dim,
                          steps=cfg.vq_steps, **common)
    if kind == "latent":
        if cfg.latent_kind == "patch":
            return T.make_patch_latent(images, patch=4)
        return T.train_autoencoder(images, latent_channels=cfg.latent_channels, steps=cfg.ae_steps, **common)
    return T.train_judge(images, labels, steps=cfg.judge_steps, **common)


def judge_reference_metrics(cfg: Config, judge, test_images, test_labels) -> dict:
    """Judge accuracy, and the two reference rungs of its Fréchet distance: real train vs real test (the floor a
    perfect generator would reach, at 10,000 vs 10,000 images) and Gaussian-blurred test vs test."""
    from torchvision.transforms.functional import gaussian_blur
    from minimfm.judge import frechet_distance, judge_accuracy, judge_features
    train_images, _ = load_images(cfg.dataset, "train", cfg.data_root)
    n = min(10_000, len(test_images), cfg.limit_train or len(test_images))  # a quick (limited) run: a quick floor
    f_test = judge_features(judge, test_images[:n])
    return {"test_accuracy": judge_accuracy(judge, test_images, test_labels),
            "fd_train_vs_test": frechet_distance(judge_features(judge, train_images[:n]), f_test),
            "fd_blurred_test_vs_test": frechet_distance(judge_features(judge, gaussian_blur(test_images[:n], 5, 1.0)),
                                                        f_test)}


def build_tokenizer(cfg: Config, kind: str, verbose: bool = True) -> tuple[torch.nn.Module, dict]:
    """Train a tokenizer (or judge), measure it on the test split, save it; returns (model, metrics)."""
    from minimfm.tokenizers import training as T
    start = time.time()
    model = _train(cfg, kind, verbose)
    seconds = time.time() - start
    images, labels = load_images(cfg.dataset, "test", cfg.data_root)
    judge = None if kind == "judge" else get_tokenizer(cfg, "judge", verbose)
    if kind == "judge":
        metrics = judge_reference_metrics(cfg, model, images, labels)
    else:
        metrics = T.reconstruction_metrics(model, images, judge=judge, labels=labels)
    metrics["train_seconds"] = round(seconds, 1)
    ckpt = T.tokenizer_to_checkpoint(model, kind=kind, dataset=cfg.dataset, config=cfg.to_dict(), metrics=metrics)
    save_atomic(ckpt, tokenizer_path(cfg, kind))
    return model, metrics


def get_tokenizer(cfg: Config, kind: str, verbose: bool = True) -> torch.nn.Module:
    """Load the cached tokenizer/judge for this config, training it first if it does not exist yet."""
    from minimfm.tokenizers import training as T
    path = tokenizer_path(cfg, kind)
    if path.is_file():
        model = T.tokenizer_from_checkpoint(load_checkpoint(path, kind=kind, dataset=cfg.dataset))
    else:
        if verbose:
            print(f"no {kind} checkpoint at {path}: training one now (once)")
        model, metrics = build_tokenizer(cfg, kind, verbose)
        if verbose:
            print(f"{kind}: " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in metrics.items()))
    return model.eval().requires_grad_(False)

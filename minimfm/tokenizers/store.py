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
from minimfm.data import limited_indices, load_images
from minimfm.tokenizers.fsq import parse_levels


def _options(cfg: Config) -> str:
    """File-name suffix for the tokenizer settings that are not the defaults (so default names stay as they were)."""
    return ((f"-h{cfg.tokenizer_hidden}" if cfg.tokenizer_hidden != 64 else "")
            + (f"-ds{cfg.tokenizer_downsample}" if cfg.tokenizer_downsample != 4 else "")
            + (f"-{cfg.tokenizer_loss}" if cfg.tokenizer_loss != "mse" else ""))


def tokenizer_path(cfg: Config, kind: str) -> Path:
    """kind "vq" is the discrete tokenizer cfg.quantizer selects (VQ, FSQ or LFQ), each under its own name."""
    folder = Path(cfg.runs_dir) / "tokenizers"
    if kind == "vq":
        code = {"vq": f"vq-{cfg.vq_codebook_size}x{cfg.vq_code_dim}",
                "fsq": "fsq-" + ".".join(map(str, parse_levels(cfg.fsq_levels))),
                "lfq": f"lfq-{cfg.lfq_bits}bit"}[cfg.quantizer]
        name = f"{cfg.dataset}-{code}-{cfg.vq_steps}steps{_options(cfg)}"
    elif kind == "latent":
        name = (f"{cfg.dataset}-patch" + (f"{cfg.tokenizer_downsample}" if cfg.tokenizer_downsample != 4 else "")
                if cfg.latent_kind == "patch" else
                f"{cfg.dataset}-ae-{cfg.latent_channels}ch-{cfg.ae_steps}steps{_options(cfg)}")
    elif kind == "judge":
        recipe = "" if cfg.judge_recipe == "lenet" else f"-{cfg.judge_recipe}"  # lenet keeps its original name
        name = f"{cfg.dataset}-judge{recipe}-{cfg.judge_steps}steps"
    else:
        raise ValueError(f"unknown tokenizer kind '{kind}', choose vq, latent or judge")
    return folder / f"{name}{'-limit' + str(cfg.limit_train) if cfg.limit_train else ''}.pt"


def new_tokenizer(cfg: Config, kind: str, in_channels: int) -> torch.nn.Module:
    """The untrained discrete tokenizer ("vq") or autoencoder/patch latent ("latent") that cfg describes."""
    from minimfm.tokenizers.latent import AutoencoderLatent, PatchLatent
    from minimfm.tokenizers.vq import VQTokenizer
    common = dict(hidden=cfg.tokenizer_hidden, downsample=cfg.tokenizer_downsample)
    if kind == "vq":
        code_dim = cfg.lfq_bits if cfg.quantizer == "lfq" else cfg.vq_code_dim
        return VQTokenizer(in_channels, cfg.vq_codebook_size, code_dim, quantizer=cfg.quantizer,
                           levels=parse_levels(cfg.fsq_levels) if cfg.quantizer == "fsq" else (), **common)
    if kind == "latent":
        if cfg.latent_kind == "patch":
            return PatchLatent(in_channels, patch=cfg.tokenizer_downsample)
        return AutoencoderLatent(in_channels, latent_channels=cfg.latent_channels, **common)
    raise ValueError(f"unknown tokenizer kind '{kind}', choose vq or latent")


def _train(cfg: Config, kind: str, verbose: bool):
    from minimfm.tokenizers import training as T
    images, labels = load_images(cfg.dataset, "train", cfg.data_root)
    if cfg.limit_train:  # the images a --limit-train run trains on (every class, also in a class-sorted split)
        keep = limited_indices(labels, cfg.limit_train)
        images, labels = images[keep], labels[keep]
    if kind == "judge":
        return T.train_judge(images, labels, steps=cfg.judge_steps, batch_size=cfg.judge_batch_size or
                             cfg.tokenizer_batch_size, lr=cfg.judge_lr or cfg.tokenizer_lr, seed=cfg.seed,
                             recipe=cfg.judge_recipe, progress=verbose)
    if kind == "latent" and cfg.latent_kind == "patch":
        return T.make_patch_latent(images, patch=cfg.tokenizer_downsample)
    torch.manual_seed(cfg.seed)
    model = new_tokenizer(cfg, kind, images.shape[1])
    return T.fit_tokenizer(model, images, steps=cfg.vq_steps if kind == "vq" else cfg.ae_steps,
                           batch_size=cfg.tokenizer_batch_size, lr=cfg.tokenizer_lr, seed=cfg.seed,
                           loss=cfg.tokenizer_loss, progress=verbose)


def judge_reference_metrics(cfg: Config, judge, test_images, test_labels) -> dict:
    """Judge accuracy (also on Gaussian-blurred test images: how much it relies on fine detail) and the reference
    rungs of its Fréchet distance: real train vs real test (the floor a perfect generator would reach) at up to
    10,000 images and at `evaluate`'s sample size (cfg.eval_samples training images vs the whole test split, as
    `evaluate` reports its floor), and blurred test vs test. Training images are drawn class-balanced: the CIFAR-10
    ImageFolder copy stores them sorted by class, so its first 10,000 are airplanes and automobiles only."""
    from torchvision.transforms.functional import gaussian_blur
    from minimfm.evaluate import balanced_indices
    from minimfm.judge import frechet_distance, judge_accuracy, judge_features
    train_images, train_labels = load_images(cfg.dataset, "train", cfg.data_root)
    n = min(10_000, len(test_images), cfg.limit_train or len(test_images))  # a quick (limited) run: a quick floor
    m = min(cfg.eval_samples, n)
    f_test, f_all_test = judge_features(judge, test_images[:n]), judge_features(judge, test_images)
    f_train = judge_features(judge, train_images[balanced_indices(train_labels, n)])
    blurred = gaussian_blur(test_images, 5, 1.0)
    return {"test_accuracy": judge_accuracy(judge, test_images, test_labels),
            "blurred_test_accuracy": judge_accuracy(judge, blurred, test_labels),
            "fd_train_vs_test": frechet_distance(f_train, f_test),
            f"fd_floor_{m}": frechet_distance(f_train[:m], f_all_test),
            "fd_blurred_test_vs_test": frechet_distance(judge_features(judge, blurred[:n]), f_test)}


def build_tokenizer(cfg: Config, kind: str, verbose: bool = True) -> tuple[torch.nn.Module, dict]:
    """Train a tokenizer (or judge), measure it on the test split, save it; returns (model, metrics)."""
    from minimfm.tokenizers import training as T
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start, cpu = time.time(), time.process_time()
    model = _train(cfg, kind, verbose)
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu
    images, labels = load_images(cfg.dataset, "test", cfg.data_root)
    judge = None if kind == "judge" else get_tokenizer(cfg, "judge", verbose)
    if kind == "judge":
        metrics = judge_reference_metrics(cfg, model, images, labels)
    else:
        metrics = T.reconstruction_metrics(model, images, judge=judge, labels=labels)
    # On a shared machine the wall time depends on the neighbours; the CPU seconds (all threads) do not.
    metrics["train_seconds"], metrics["train_cpu_seconds"] = round(seconds, 1), round(cpu_seconds, 1)
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

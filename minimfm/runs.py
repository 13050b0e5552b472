"""Building a model for a config, and saving / loading it as a self-contained checkpoint.

A model checkpoint carries everything needed to sample without the run folder: the config, the text
vocabulary, the frozen image tokenizer (as its own checkpoint dict), the weights (and their EMA), and for
resuming the optimiser state and the step. All of it is plain data, so it loads with weights_only=True.
"""
from __future__ import annotations

from pathlib import Path

import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint
from minimfm.config import DEVICES, Config, ConfigError, shorten
from minimfm.modes import image_tokenizer_kind, model_class
from minimfm.tokenizers.text import TextTokenizer


def select_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; an explicit name that is not available is an error, not a silent fallback."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in DEVICES[1:] or (index and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"--device: '{shorten(name)}' is not one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda: no CUDA device is available")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CheckpointError("--device mps: MPS is not available")
    return torch.device(name)


def check_folder(path: str | Path, flag: str) -> Path:
    """A folder a command will write into (or create): its nearest existing ancestor must be a folder."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {shorten(path)}: {shorten(existing)} is a file, not a folder")
    return path


def check_training_device(cfg: Config, device: torch.device) -> None:
    """Refuse settings the device cannot train with, before any work is done."""
    if cfg.attention == "flex" and device.type != "cuda":
        raise ConfigError(f"--attention flex: FlexAttention has no backward pass on {device.type} in torch "
                          f"{torch.__version__.split('+')[0]}; train with --attention sdpa (the same mask, dense)")


def caption_room(dataset: str) -> int:
    """Longest caption the grammar writes (in tokens): every template filled with the longest words."""
    from minimfm.data import CIFAR_TEMPLATES, MNIST_TEMPLATES
    templates = MNIST_TEMPLATES if dataset == "mnist" else CIFAR_TEMPLATES
    slant_words = 2  # "leaning right", "standing upright"
    longest = 0
    for t in templates:
        words = t.replace(",", " , ").split()
        longest = max(longest, len(words) + (slant_words - 1) * words.count("{slant_phrase}"))
    return longest


def build_model(cfg: Config, image_tokenizer: torch.nn.Module, tok: TextTokenizer | None = None,
                max_text_len: int | None = None):
    tok = tok or TextTokenizer.for_dataset(cfg.dataset)
    return model_class(cfg.mode)(cfg, tok, image_tokenizer, max_text_len or caption_room(cfg.dataset))


def model_checkpoint(model, tokenizer_ckpt: dict, *, step: int, optimizer=None, ema=None,
                     train_seconds: float = 0.0) -> dict:
    return {
        "kind": "model", "mode": model.mode, "dataset": model.cfg.dataset, "config": model.cfg.to_dict(),
        "text_tokenizer": model.tok.state_dict(), "max_text_len": model.layout.max_text_len,
        "image_tokenizer": tokenizer_ckpt, "model": model.state_dict(), "step": step, "train_seconds": train_seconds,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
    }


MODEL_KEYS = ("mode", "config", "text_tokenizer", "max_text_len", "image_tokenizer", "model")


def check_model_checkpoint(ckpt: dict, path) -> dict:
    """A model checkpoint has every part model_from_checkpoint reads; a damaged one is named, not a KeyError."""
    missing = [k for k in MODEL_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a complete model checkpoint (no {', '.join(map(repr, missing))})")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path} is not a complete model checkpoint ('config' is not a dict)")
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device | str = "cpu", use_ema: bool = True):
    """Rebuild the model a checkpoint describes, with its EMA weights when it has them."""
    from minimfm.tokenizers.training import tokenizer_from_checkpoint
    cfg = Config.from_dict(ckpt["config"])
    tok = TextTokenizer.from_state_dict(ckpt["text_tokenizer"])
    model = build_model(cfg, tokenizer_from_checkpoint(ckpt["image_tokenizer"]), tok, ckpt["max_text_len"])
    load_weights(model, ckpt["model"], "the checkpoint's weights")
    if use_ema and ckpt.get("ema"):
        for name, p in model.named_parameters():
            if name in ckpt["ema"]:
                p.data.copy_(ckpt["ema"][name])
    return model.to(device).eval()


def load_weights(model: torch.nn.Module, state: dict, what: str) -> None:
    """load_state_dict, with names and shapes checked first so a mismatch is one line, not a page of sizes."""
    own = model.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} are not a state dict")
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    resized = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or resized:
        k = sorted(resized or missing or unexpected)[0]
        example = f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if resized else k
        counts = ", ".join(f"{len(v)} {name}" for name, v in (("resized", resized), ("missing", missing),
                                                               ("unexpected", unexpected)) if v)
        raise CheckpointError(f"{what} do not fit this model ({counts} tensors, e.g. {example})")
    model.load_state_dict(state)


def load_model(path: str | Path, device: str = "auto", mode: str | None = None):
    """Load a trained model from RUN/ckpt.pt for sampling, captioning or evaluation."""
    device = select_device(device)  # a bad --device fails before the checkpoint is read
    ckpt = check_model_checkpoint(load_checkpoint(path, kind="model"), path)
    if mode is not None and ckpt["mode"] != mode:
        raise CheckpointError(f"{path} is a '{ckpt['mode']}' model, expected '{mode}'")
    return model_from_checkpoint(ckpt, device)


def image_tokenizer_for(cfg: Config, verbose: bool = True) -> tuple[torch.nn.Module, dict]:
    """The frozen image tokenizer a mode needs (built once and cached), and its checkpoint dict.

    A fine-tune (--init-from) whose runs folder lacks that tokenizer takes its base's, saved into the cache: the
    fine-tune must read images exactly as the base did, and a tokenizer trained anew here would at best be a copy
    (minutes of training, then init_from's check that both are the same)."""
    from minimfm.checkpoint import save_atomic
    from minimfm.tokenizers.store import get_tokenizer, tokenizer_path
    kind = image_tokenizer_kind(cfg.mode)
    path = tokenizer_path(cfg, kind)
    if cfg.init_from and not path.is_file():
        base = check_model_checkpoint(load_checkpoint(cfg.init_from, kind="model", dataset=cfg.dataset),
                                      cfg.init_from)
        if tokenizer_path(Config.from_dict(base["config"]), kind).name == path.name:  # same settings
            save_atomic(base["image_tokenizer"], path)
    model = get_tokenizer(cfg, kind, verbose)
    return model, load_checkpoint(path, kind=kind, dataset=cfg.dataset)

"""One dataclass holds every setting; presets are named sets of defaults; every field is a CLI flag.

The flags are generated from the dataclass (name, type, help text, accepted values), so the command line and
the code never drift apart. `--n-layer banana` and `--mode foo` exit with one line naming the flag and the
accepted values.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields

from minimfm.modes import MODE_NAMES, REGISTRY


DEVICES = ("auto", "cpu", "cuda", "mps")


def _f(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # what to train
    dataset: str = _f("mnist", "dataset to train on", ("mnist", "cifar10"))
    mode: str = _f("ar", "how images are generated: " + "; ".join(f"{s.name}: {s.summary} ({s.lineage})"
                                                                  for s in REGISTRY.values()), MODE_NAMES)
    preset: str = _f("tiny", "the preset these defaults came from (set by --preset)",
                     ("smoke", "tiny", "small", "full"))
    data_root: str = _f("data", "folder holding (or receiving) the datasets")
    runs_dir: str = _f("runs", "folder for tokenizers, judges and training runs")
    run_name: str = _f("", "name of the run folder under runs_dir (default: <dataset>-<mode>-<preset>)")
    seed: int = _f(0, "random seed for data order, captions, initialisation and sampling")
    device: str = _f("auto", "auto picks cuda, then mps, then cpu", DEVICES)
    threads: int = _f(0, "torch CPU threads (0 = torch's default)")
    limit_train: int = _f(0, "use only N training images, the first of each class in turn (0 = all); for quick "
                                 "experiments")
    holdout_validation: bool = _f(False, "leave the validation split (5,000 training images: the last 500 of each "
                                         "class) out of training; `tune` trains its trials so and scores them on it")

    # the shared transformer
    d_model: int = _f(192, "transformer width")
    n_layer: int = _f(4, "number of transformer blocks")
    n_head: int = _f(4, "attention heads (d_model must be divisible by it)")
    mlp_ratio: int = _f(4, "MLP hidden size as a multiple of d_model")
    dropout: float = _f(0.0, "dropout on attention and MLP outputs")

    # sequences
    t2i_ratio: float = _f(0.5, "fraction of training sequences in text-to-image order (rest: image-to-text)")
    caption_dropout: float = _f(0.1, "probability of dropping the caption of a text-to-image sequence (for CFG)")
    text_loss_weight: float = _f(1.0, "weight of the next-token loss on text positions")
    image_loss_weight: float = _f(1.0, "weight λ of the image loss (Transfusion uses 5 for diffusion)")
    tasks: str = _f("caption", "training tasks, comma-separated, the rows of a batch split among them (--task-weights): "
                               "caption (one caption and one image, either order), interleaved (text and MNIST digits "
                               "in turn, minimfm/interleaved.py), edit (digit, instruction, edited digit, "
                               "minimfm/edits.py); e.g. caption,interleaved,edit")
    task_weights: str = _f("", "each task's share of a batch's rows, comma-separated whole numbers in --tasks order "
                               "(e.g. 1,1,2 gives edit half the rows of caption,interleaved,edit); empty: equal")
    task_examples: int = _f(8000, "examples built for each of the interleaved and edit tasks (Transfusion §4.3 "
                                  "fine-tunes on ~8k edits)")
    init_from: str = _f("", "model checkpoint whose weights a new run starts from, its text vocabulary grown by the "
                            "tasks' words (the edit fine-tune of Transfusion §4.3); unused when --resume finds one")

    # optimisation
    batch_size: int = _f(64, "sequences per optimiser step (global, across processes)")
    micro_batch_size: int = _f(0, "sequences per forward/backward pass; fewer than the per-process share "
                                  "accumulates gradients (0 = batch_size / processes; set it explicitly to get "
                                  "the same masks and noise on any number of processes)")
    max_steps: int = _f(1500, "optimiser steps")
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    min_lr: float = _f(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _f(100, "linear warm-up steps")
    weight_decay: float = _f(0.05, "AdamW weight decay (not applied to norms, biases and embeddings)")
    grad_clip: float = _f(1.0, "clip the gradient norm to this value (0 = off)")
    ema: float = _f(0.0, "EMA decay of the weights used for sampling (0 = off, e.g. 0.999)")
    log_every: int = _f(25, "steps between metrics-log lines")
    sample_every: int = _f(500, "steps between sample grids written to the run folder (0 = off)")
    ckpt_every: int = _f(500, "steps between checkpoints (one is always written at the end)")
    compile: bool = _f(False, "torch.compile the training step (GPU; slow to start on CPU)")
    attention: str = _f("sdpa", "training attention: dense boolean mask (SDPA) or FlexAttention block masks "
                                "(compiled kernel on GPU; eager and slow on CPU)", ("sdpa", "flex"))

    # discrete image tokenizer (ar, masked)
    vq_codebook_size: int = _f(256, "number of VQ codes")
    vq_code_dim: int = _f(32, "dimension of each VQ code vector")
    vq_steps: int = _f(2000, "VQ tokenizer training steps")
    quantizer: str = _f("vq", "discrete image tokenizer for ar/masked: learned codebook (VQ-VAE), finite scalar "
                              "quantization (FSQ) or lookup-free quantization (LFQ, MAGVIT-v2)", ("vq", "fsq", "lfq"))
    fsq_levels: str = _f("8,5,5,5", "FSQ levels per latent channel; the codebook is their product (8,5,5,5: 1,000)")
    lfq_bits: int = _f(10, "LFQ bits per token; the codebook has 2^bits codes")
    # continuous image latents (diffusion)
    latent_kind: str = _f("ae", "diffusion latents: raw pixel patches or a small conv autoencoder", ("patch", "ae"))
    latent_channels: int = _f(4, "channels of the autoencoder latent grid")
    ae_steps: int = _f(2000, "autoencoder training steps")
    tokenizer_batch_size: int = _f(128, "batch size for tokenizer and judge training")
    tokenizer_lr: float = _f(2e-3, "learning rate for tokenizer and judge training")
    tokenizer_loss: str = _f("mse", "tokenizers' reconstruction loss: pixel MSE, or L1 plus an image-gradient term "
                                    "(keeps edges and texture)", ("mse", "l1grad"))
    tokenizer_hidden: int = _f(64, "width of the tokenizers' conv encoder and decoder")
    tokenizer_downsample: int = _f(4, "pixels per token side for the discrete tokenizer, autoencoder and patches: "
                                      "4 (CIFAR-10 8x8 tokens, MNIST 7x7) or 2 (16x16, 14x14)")
    judge_steps: int = _f(2000, "judge classifier training steps")
    judge_recipe: str = _f("lenet", "judge architecture and training: lenet (2 conv stages + MLP, AdamW; MNIST) or "
                                    "vgg (4 conv stages with batch norm, SGD one-cycle, flips and crops; CIFAR-10)",
                           ("lenet", "vgg"))
    judge_lr: float = _f(0.0, "judge peak learning rate (0 = tokenizer_lr)")
    judge_batch_size: int = _f(0, "judge batch size (0 = tokenizer_batch_size)")

    # masked mode (Show-o / MaskGIT)
    mask_schedule: str = _f("cosine", "fraction of codes masked as a function of time",
                            ("cosine", "linear", "sqrt"))
    mask_steps: int = _f(8, "T: parallel decoding steps when sampling")
    # diffusion mode (Transfusion)
    objective: str = _f("flow", "DDPM ε-prediction (cosine schedule) or rectified flow (velocity)",
                        ("ddpm", "flow"))
    time_sampling: str = _f("uniform", "training noise times of the flow objective: uniform in [0, 1], or "
                                       "logit-normal (SD3: t = sigmoid(n), n ~ N(0, 1), more steps at mid noise)",
                            ("uniform", "logit-normal"))
    patch_encoder: str = _f("linear", "image input/output layers: linear, or a small conv encoder/decoder (two 3x3 "
                                      "convs, no down/up-sampling; not Transfusion's U-Net blocks)", ("linear", "conv"))
    time_cond: str = _f("add", "timestep conditioning: added to image positions (Transfusion) or adaLN-Zero (DiT)",
                        ("add", "adaln"))
    image_attention: str = _f("bidirectional", "attention inside an image (causal is the ablation)",
                              ("bidirectional", "causal"))
    diffusion_steps: int = _f(25, "S: denoising steps when sampling")
    i2t_noise_limit: bool = _f(True, "for image-then-caption sequences, noise at most half the schedule")

    # sampling
    temperature: float = _f(1.0, "sampling temperature for codes and text")
    top_k: int = _f(0, "sample codes from the k most likely only (0 = off)")
    top_p: float = _f(1.0, "nucleus sampling: smallest set of codes with this probability mass (1 = off)")
    cfg_scale: float = _f(3.0, "classifier-free guidance scale s: logits = cond + s·(cond − uncond); 0 = off")

    # evaluation
    eval_samples: int = _f(500, "generated images per evaluation (split evenly over the classes)")
    eval_captions: int = _f(500, "test images captioned per evaluation")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Every field's type, accepted values and range (RANGES), so a bad flag fails here with one line, before
        any work; the same checks run on a config read back from a checkpoint."""
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if not _has_type(value, kind):
                raise ConfigError(f"--{_flag(f.name)}: expected {'a number' if kind == 'float' else kind}, got "
                                  f"'{shorten(value)}'")
            if choices and value not in choices:
                raise ConfigError(f"--{_flag(f.name)}: '{shorten(value)}' is not one of {', '.join(choices)}")
            if f.name in RANGES and not RANGES[f.name][0](value):  # NaN fails every range
                raise ConfigError(f"--{_flag(f.name)}: must be {RANGES[f.name][1]}, got {value}")
            if kind == "float" and not math.isfinite(value):
                raise ConfigError(f"--{_flag(f.name)}: must be a finite number, got {value}")
        if self.d_model % self.n_head:
            raise ConfigError(f"--d-model {self.d_model} is not divisible by --n-head {self.n_head}")
        if self.text_loss_weight == 0 and self.image_loss_weight == 0:
            raise ConfigError("--text-loss-weight and --image-loss-weight are both 0: nothing would be trained")
        for name in ("runs_dir", "data_root"):
            if not getattr(self, name).strip():
                raise ConfigError(f"--{_flag(name)}: must name a folder, got an empty string")
        if self.run_name:
            check_run_name(self.run_name, "--run-name")
        if parse_tasks(self.tasks, self.dataset) != ("caption",) and self.holdout_validation:
            raise ConfigError("--holdout-validation: trains --tasks caption only (interleaved and edit rows pick "
                              "digits from the whole training split)")
        parse_task_weights(self.task_weights, parse_tasks(self.tasks, self.dataset))
        if self.tokenizer_downsample not in (2, 4):
            raise ConfigError(f"--tokenizer-downsample: must be 2 or 4, got {self.tokenizer_downsample}")
        if self.time_sampling != "uniform" and self.objective != "flow":
            raise ConfigError(f"--time-sampling {self.time_sampling}: defined for --objective flow only")
        if not 1 <= self.lfq_bits <= 16:
            raise ConfigError(f"--lfq-bits: must be a whole number in [1, 16], got {self.lfq_bits}")
        levels = self.fsq_levels.replace(" ", "").split(",")
        if not all(v.isdigit() and int(v) >= 2 for v in levels):
            raise ConfigError(f"--fsq-levels: must be comma-separated whole numbers >= 2 like 8,5,5,5, got "
                              f"'{shorten(self.fsq_levels)}'")

    @property
    def name(self) -> str:
        return self.run_name or f"{self.dataset}-{self.mode}-{self.preset}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class ConfigError(ValueError):
    """A bad setting; the message is one line naming the flag."""


def shorten(value, limit: int = 80) -> str:
    """A user's value as echoed in an error message: one line, at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _has_type(value, kind: str) -> bool:
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str}.get(kind, object))


MAX_SAMPLING_STEPS = 1000  # T or S: DDPM's own T; more steps than that only cost time
_WHOLE_1, _WHOLE_0 = (lambda v: v >= 1, "a whole number >= 1"), (lambda v: v >= 0, "a whole number >= 0")
# The accepted range of each numeric field, checked by Config.validate; every float must also be finite.
RANGES: dict[str, tuple] = {
    **dict.fromkeys(("d_model", "n_layer", "n_head", "mlp_ratio", "batch_size", "max_steps", "log_every",
                     "ckpt_every", "vq_codebook_size", "vq_code_dim", "vq_steps", "latent_channels", "ae_steps",
                     "tokenizer_batch_size", "tokenizer_hidden", "lfq_bits", "judge_steps", "eval_samples",
                     "task_examples"), _WHOLE_1),
    **dict.fromkeys(("threads", "limit_train", "micro_batch_size", "warmup_steps", "sample_every", "top_k",
                     "judge_batch_size", "eval_captions"), _WHOLE_0),
    "seed": (lambda v: 0 <= v < 2**31, "a whole number in [0, 2**31)"),
    **dict.fromkeys(("mask_steps", "diffusion_steps"), (lambda v: 1 <= v <= MAX_SAMPLING_STEPS,
                                                        f"a whole number in [1, {MAX_SAMPLING_STEPS}]")),
    **dict.fromkeys(("t2i_ratio", "caption_dropout", "dropout"), (lambda v: 0 <= v <= 1, "in [0, 1]")),
    "ema": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    **dict.fromkeys(("lr", "tokenizer_lr"), (lambda v: 0 < v < math.inf, "a finite number > 0")),
    **dict.fromkeys(("min_lr", "weight_decay", "grad_clip", "text_loss_weight", "image_loss_weight", "cfg_scale",
                     "temperature", "judge_lr"), (lambda v: 0 <= v < math.inf, "a finite number >= 0")),
}

TASKS = ("caption", "interleaved", "edit")  # minimfm/mixed_data.py builds their rows


def parse_choice_list(text: str, choices, flag: str, what: str, example: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b') for a comma-separated flag; one line naming the flag for an unknown or repeated item."""
    items = tuple(t.strip() for t in text.split(","))
    unknown = [t for t in items if t not in choices]
    if unknown:
        raise ConfigError(f"{flag}: '{shorten(unknown[0])}' is not one of {', '.join(choices)} (comma-separated, "
                          f"e.g. {example})")
    if len(set(items)) < len(items):
        raise ConfigError(f"{flag}: '{shorten(text)}' names a {what} twice")
    return items


def parse_tasks(text: str, dataset: str = "mnist") -> tuple[str, ...]:
    """'caption,edit' -> ('caption', 'edit'); one line naming --tasks for anything else."""
    tasks = parse_choice_list(text, TASKS, "--tasks", "task", "caption,interleaved,edit")
    if dataset != "mnist" and tasks != ("caption",):
        raise ConfigError(f"--tasks: interleaved and edit are built from MNIST digits; --dataset {dataset} trains "
                          f"caption only")
    return tasks


def parse_task_weights(text: str, tasks: tuple[str, ...]) -> tuple[int, ...]:
    """'1,1,2' -> (1, 1, 2), one whole number >= 1 per task; '' -> equal shares."""
    if not text.strip():
        return (1,) * len(tasks)
    items = [t.strip() for t in text.split(",")]
    if not all(t.isdigit() and int(t) >= 1 for t in items) or len(items) != len(tasks):
        raise ConfigError(f"--task-weights: '{shorten(text)}' must be {len(tasks)} comma-separated whole numbers >= 1, "
                          f"one per task of --tasks {','.join(tasks)}")
    return tuple(int(t) for t in items)


_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_run_name(name: str, flag: str) -> str:
    """A run (or comparison) name is a folder INSIDE the runs folder: plain parts joined by '/', no '..', no
    absolute path, and not the tokenizer cache; so `--overwrite` can only ever delete that run's own folder."""
    parts = name.split("/")
    if len(name) > 200 or not all(_NAME_PART.fullmatch(part) for part in parts) or parts[0] == "tokenizers":
        raise ConfigError(f"{flag}: '{shorten(name)}' is not a run name: use letters, digits, '.', '_' and '-' "
                          f"(not starting with '.'), parts joined by '/'; 'tokenizers' is reserved")
    return name


# --------------------------------------------------------------------------------------------- presets
# Each preset states its hardware, wall time and the result to expect; the README table has the measured ones.
PRESETS: dict[str, dict] = {
    # CI and notebooks under nbval: seconds on 2 CPU cores, numbers meaningless
    "smoke": dict(d_model=32, n_layer=1, n_head=2, batch_size=16, max_steps=20, warmup_steps=2, log_every=5,
                  sample_every=0, ckpt_every=10, vq_codebook_size=32, vq_code_dim=8, vq_steps=30, ae_steps=30,
                  judge_steps=30, tokenizer_batch_size=32, eval_samples=20, eval_captions=20, limit_train=2000,
                  mask_steps=4, diffusion_steps=5),
    # 2 CPU cores, tokenizers ~6 min once, 7.6-10 min per mode (1,500 steps): MNIST prompted accuracy 0.91-0.98,
    # caption accuracy 0.93-0.96 (README "Time to quality"); --max-steps 3000 (15-20 min) reaches >= 0.95 on both
    "tiny": dict(),
    # ONE GPU (H100 / A100 / 4090 class), bf16 autocast, `--compile true` recommended. Expected, ESTIMATED (not yet
    # measured on a GPU): a step is 32x tiny's FLOPs (1.4 TFLOP), still small enough to be bound by kernel launches
    # (~50 ms per step uncompiled, as tiny measured on an H200), so ~10-20 min per mode on MNIST; targets prompted
    # accuracy >= 0.98 and caption accuracy >= 0.98.
    # The 8-GPU form of this recipe is `torchrun --nproc_per_node 8 -m minimfm train --preset small ...`
    # (same global batch 256: 32 sequences per GPU).
    "small": dict(d_model=384, n_layer=8, n_head=6, batch_size=256, max_steps=10000, lr=6e-4, warmup_steps=500,
                  ema=0.999, vq_codebook_size=512, vq_steps=5000, ae_steps=5000, judge_steps=4000,
                  tokenizer_batch_size=256, eval_samples=2000, eval_captions=2000, sample_every=2000,
                  ckpt_every=2000),
    # paper-shaped: 8 GPUs with torchrun; 2.2e18 FLOPs per mode, estimated 20-60 min on 8 H100s (not yet measured);
    # λ = 5 as in Transfusion; the conv patch encoder (two 3x3 convs) stands in for its U-Net down/up blocks
    "full": dict(d_model=768, n_layer=16, n_head=12, batch_size=512, max_steps=100000, lr=3e-4,
                 warmup_steps=2000, ema=0.9999, patch_encoder="conv", image_loss_weight=5.0,
                 vq_codebook_size=1024, vq_steps=20000, ae_steps=20000, judge_steps=8000,
                 tokenizer_batch_size=512, eval_samples=10000, eval_captions=10000, sample_every=5000,
                 ckpt_every=5000, compile=True),
}

# CIFAR-10 needs more from its tokenizers than MNIST (colour, texture) and a longer schedule. Applied on top of a
# preset when --dataset cifar10; any flag still overrides. tiny gets a stronger judge and class-keeping tokenizers.
DATASET_RECIPES: dict[tuple[str, str], dict] = {
    # 1-2 CPU cores, measured (results/cifar10-tokenizers/README.md): judge (vgg, 20 epochs) 0.855 test accuracy
    # in 588 CPU-s; the 1,024-code VQ keeps the class on 0.64 of its 8x8-code reconstructions (best of VQ, FSQ,
    # LFQ; short of the 0.75 target) in 368 CPU-s, the 8-channel autoencoder on 0.81 in 156 CPU-s. The per-mode
    # transformer recipe is still to be measured.
    ("tiny", "cifar10"): dict(judge_recipe="vgg", judge_steps=4000, judge_lr=0.2, judge_batch_size=256,
                              quantizer="vq", vq_codebook_size=1024, tokenizer_loss="l1grad", vq_steps=1000,
                              latent_channels=8, ae_steps=1000),
    # one GPU, estimated ~40-60 min per mode (2x small's steps, 64 positions per image); target: prompted-class
    # accuracy by the CIFAR judge >= 0.60 for the best mode (the vgg judge, 40 epochs here)
    ("small", "cifar10"): dict(max_steps=20000, vq_codebook_size=1024, vq_code_dim=32, latent_channels=8,
                               vq_steps=10000, ae_steps=10000, judge_steps=8000, judge_recipe="vgg", judge_lr=0.2,
                               tokenizer_loss="l1grad"),
    ("full", "cifar10"): dict(max_steps=200000, vq_codebook_size=4096, latent_channels=16, vq_steps=40000,
                              ae_steps=40000, judge_steps=16000, judge_recipe="vgg", judge_lr=0.2,
                              tokenizer_loss="l1grad"),
}


def make_config(preset: str = "tiny", **overrides) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"--preset: '{preset}' is not one of {', '.join(PRESETS)}")
    dataset = overrides.get("dataset", PRESETS[preset].get("dataset", "mnist"))
    return Config(**{**PRESETS[preset], **DATASET_RECIPES.get((preset, dataset), {}), **overrides,
                     "preset": preset})


# ------------------------------------------------------------------------------------------------ CLI

def _flag(name: str) -> str:
    return name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add `--preset` and one `--field-name` flag per Config field (default None = keep the preset's value)."""
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS),
                        help="set of defaults: smoke (CI seconds), tiny (2 CPU cores), small (1 GPU), full")
    defaults = Config()
    for f in fields(Config):
        if f.name == "preset" or f.name in skip:
            continue
        kind = {"int": int, "float": float, "bool": _bool, "str": str}[
            f.type if isinstance(f.type, str) else f.type.__name__]
        choices = f.metadata.get("choices")
        help_text = f"{f.metadata['help']} (tiny: {getattr(defaults, f.name)})"
        parser.add_argument(f"--{_flag(f.name)}", dest=f.name, type=kind, default=None, choices=choices,
                            metavar=("{" + ",".join(choices) + "}") if choices else kind.__name__.upper()
                            if kind is not _bool else "BOOL", help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name) for f in fields(Config)
                 if f.name != "preset" and getattr(args, f.name, None) is not None}
    return make_config(args.preset, **overrides)


def preset_from_env() -> str:
    """The notebooks' preset: $MINIMFM_PRESET if set (CI uses smoke), else small on a GPU and tiny on a CPU."""
    import os

    import torch
    preset = os.environ.get("MINIMFM_PRESET") or ("small" if torch.cuda.is_available() else "tiny")
    if preset not in PRESETS:
        raise ConfigError(f"MINIMFM_PRESET: '{preset}' is not one of {', '.join(PRESETS)}")
    return preset

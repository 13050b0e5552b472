"""The ways to generate the image span, and the registry that names them.

Each mode file holds one paper's idea (representation, loss, sampler) as a `MultimodalModel` subclass. Everything
else — the config's `--mode` choices, the tokenizer a mode needs, the comparison's step sweeps and plot colours,
the knobs `tune` searches, the bench's synthetic batch, the CLI's `--steps` check — reads `REGISTRY` below, so
adding a mode is one file plus one line here.

This module imports no torch and no mode file: `config.py` reads the names at import time, and a mode's class
is imported only when it is built (so one mode's bug never breaks another).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModeSpec:
    """What the rest of minimfm needs to know about a mode without importing it."""

    name: str
    model: str                 # "module:Class" of its MultimodalModel subclass
    tokenizer: str             # the frozen image tokenizer it reads: "vq" (discrete codes) or "latent" (continuous)
    lineage: str               # the paper it follows, for tables and help text
    summary: str               # one line for --help
    steps_field: str | None    # the Config field holding its default sampling steps (None: no step knob)
    sweep_steps: tuple[int, ...] = ()  # sampling steps the comparison sweeps (empty: one point)
    colour: str = "tab:grey"   # matplotlib colour in every comparison figure
    # its own knobs for `tune` (Config field -> the values tried), beside the shared ones in minimfm/tuning.py
    tuning: dict = field(default_factory=dict, compare=False)

    @property
    def has_steps(self) -> bool:
        return self.steps_field is not None

    def model_class(self):
        module, cls = self.model.split(":")
        return getattr(importlib.import_module(module), cls)


REGISTRY: dict[str, ModeSpec] = {spec.name: spec for spec in (
    ModeSpec("ar", "minimfm.modes.ar:ARModel", "vq", "Chameleon",
             "VQ codes predicted one by one, raster order, causal mask", None, (), "tab:blue",
             tuning={"top_k": (0, 16, 64), "temperature": (0.8, 1.0, 1.2)}),
    ModeSpec("masked", "minimfm.modes.masked:MaskedModel", "vq", "Show-o, MaskGIT",
             "VQ codes predicted in parallel from a partly masked image, T confident-first steps", "mask_steps",
             (1, 2, 4, 8, 12, 16), "tab:orange",
             tuning={"mask_schedule": ("cosine", "linear", "sqrt"), "mask_steps": (4, 8, 12, 16)}),
    ModeSpec("diffusion", "minimfm.modes.diffusion:DiffusionModel", "latent", "Transfusion",
             "continuous latents denoised all at once, S steps", "diffusion_steps", (5, 10, 25, 50), "tab:green",
             tuning={"image_loss_weight": (1.0, 2.0, 5.0), "patch_encoder": ("linear", "conv"),
                     "objective": ("flow", "ddpm"), "time_cond": ("add", "adaln")}),
    ModeSpec("mar", "minimfm.modes.mar:MARModel", "latent", "MAR",
             "continuous latents revealed a few at a time in random order (T = --mask-steps passes), each drawn "
             "by a per-token diffusion head (--diffusion-steps)", "mask_steps", (1, 2, 4, 8, 16), "tab:red",
             tuning={"mask_steps": (4, 8, 16), "diffusion_steps": (10, 25, 50), "temperature": (0.8, 1.0, 1.2)}),
)}

MODE_NAMES: tuple[str, ...] = tuple(REGISTRY)


def get_mode(name: str) -> ModeSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown mode '{name}', choose {', '.join(MODE_NAMES)}")
    return REGISTRY[name]


def model_class(mode: str):
    """The MultimodalModel subclass for a mode name."""
    return get_mode(mode).model_class()


def image_tokenizer_kind(mode: str) -> str:
    """"vq" for modes over discrete codes, "latent" for modes over continuous latents."""
    return get_mode(mode).tokenizer

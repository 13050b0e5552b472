"""The three ways to generate the image span; each file holds one paper's idea (representation, loss, sampler)."""
from __future__ import annotations


def model_class(mode: str):
    """The MultimodalModel subclass for a mode name (imported lazily so one mode's bug never breaks another)."""
    if mode == "ar":
        from minimfm.modes.ar import ARModel
        return ARModel
    if mode == "masked":
        from minimfm.modes.masked import MaskedModel
        return MaskedModel
    if mode == "diffusion":
        from minimfm.modes.diffusion import DiffusionModel
        return DiffusionModel
    raise ValueError(f"unknown mode '{mode}', choose ar, masked or diffusion")


def image_tokenizer_kind(mode: str) -> str:
    """Discrete codes for ar and masked, continuous latents for diffusion."""
    return "latent" if mode == "diffusion" else "vq"

"""Tiny models and runs for tests: random-weight tokenizers, smoke configs, no dataset training."""
import torch

from minimfm.checkpoint import save_atomic
from minimfm.config import make_config
from minimfm.runs import build_model
from minimfm.tokenizers.latent import PatchLatent
from minimfm.tokenizers.store import tokenizer_path
from minimfm.tokenizers.training import tokenizer_to_checkpoint
from minimfm.tokenizers.vq import VQTokenizer


def tiny_config(mode="ar", **overrides):
    base = dict(mode=mode, d_model=32, n_layer=2, n_head=2, vq_codebook_size=16, vq_code_dim=8)
    return make_config("smoke", **{**base, **overrides})


def tiny_vq(cfg, seed=0):
    torch.manual_seed(seed)
    return VQTokenizer(1, codebook_size=cfg.vq_codebook_size, code_dim=cfg.vq_code_dim, hidden=16).eval()


def tiny_model(mode="ar", seed=0, **overrides):
    cfg = tiny_config(mode, **overrides)
    tokenizer = tiny_vq(cfg, seed)
    torch.manual_seed(seed)
    return build_model(cfg, tokenizer)


def tiny_latent_model(mode, seed=0, randomise_zero_layers=True, **overrides):
    """A mode over continuous tokens on a 7x7 grid of 16-dim patch latents (MNIST-shaped), 2 layers of width 32.

    Zero-initialised layers (output layers, adaLN and head gates) are randomised by default: at exactly 0 every
    sampler test would pass trivially."""
    cfg = make_config("smoke", **{**dict(mode=mode, latent_kind="patch", d_model=32, n_layer=2, n_head=2),
                                  **overrides})
    torch.manual_seed(seed)
    model = build_model(cfg, PatchLatent(1, patch=4))
    if randomise_zero_layers:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad and not p.any():
                    p.normal_(0, 0.1)
    return model.eval()


def install_random_vq(cfg):
    """Put a random-weight VQ checkpoint where training looks for it, so tests never train a tokenizer."""
    vq = tiny_vq(cfg)
    save_atomic(tokenizer_to_checkpoint(vq, kind="vq", dataset=cfg.dataset), tokenizer_path(cfg, "vq"))
    return vq


def squares(n: int) -> torch.Tensor:
    """Bright 8x8 squares at random positions: learnable structure, unlike pixel noise."""
    images = torch.zeros(n, 1, 28, 28)
    for i, (r, c) in enumerate(torch.randint(0, 20, (n, 2)).tolist()):
        images[i, :, r:r + 8, c:c + 8] = 1
    return images

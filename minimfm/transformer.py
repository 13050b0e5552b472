"""The one transformer every mode shares: pre-norm blocks, RoPE, a KV cache and an adaLN-Zero hook.

Positions. Text and image tokens live on ONE sequence axis, so we use plain 1-D rotary embeddings
(RoPE, Su et al. 2021) on the sequence index. RoPE rotates q and k by an angle proportional to the
position, so q·k depends only on the *distance* i - j: a caption followed by an image is read the same
way wherever it sits in the sequence. Positions are passed per token (`positions: [B, T]`) rather than
derived from `arange(T)`, so a KV-cached step can say "these new tokens are at 57, 58" and the cached
keys keep the rotation they got when they were written. The 2-D layout of an image (which row/column a
patch is in) is NOT encoded here: the model adds a learned row + column embedding to image inputs.

Timestep conditioning. The diffusion mode (Transfusion) tells the network how noisy each image is.
Blocks built with `adaln=True` follow DiT's adaLN-Zero: the conditioning vector predicts a shift, scale
and gate for each sub-layer, and the gate starts at 0 so every block starts as the identity on image
positions. Text positions in the same sequence are left exactly as a plain pre-norm block.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): LayerNorm without the mean, cheaper and as good in practice."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32: the mean of squares under/overflows in bf16
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class RotaryEmbedding(nn.Module):
    """RoPE (Su et al., RoFormer): cos/sin tables for the given per-token positions."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        assert head_dim % 2 == 0, "RoPE rotates pairs of channels, head_dim must be even"
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        # not persistent: derived from head_dim, so it need not (and should not) live in checkpoints
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[..., None] * self.inv_freq  # (B, T, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, T, Dh), matches the half-split in apply_rotary
        return angles.cos()[:, None], angles.sin()[:, None]  # (B, 1, T, Dh): broadcast over heads


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + Dh/2) of x (B, H, T, Dh) by the position angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).type_as(x)


class KVCache:
    """Keys/values of already-processed positions, one (B, H, Tk, Dh) pair per layer.

    Autoregressive decoding appends one position per step instead of recomputing the whole prefix.
    Masked (MaskGIT) and diffusion samplers cache the caption once, then `crop` back to it before each
    denoising step, because the image part changes every step but the caption does not.
    """

    def __init__(self, n_layer: int):
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        # the last layer is appended last, so mid-forward this still reads "positions before this call"
        k = self.k[-1]
        return 0 if k is None else k.shape[2]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer_idx] is not None:
            # cat allocates new tensors, so a cropped prefix is never overwritten by a later suffix
            k = torch.cat([self.k[layer_idx], k], dim=2)  # (B, H, Tk + T, Dh)
            v = torch.cat([self.v[layer_idx], v], dim=2)
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        # slicing is a view: no copy, the prefix's memory is shared
        self.k = [None if k is None else k[:, :, :length] for k in self.k]
        self.v = [None if v is None else v[:, :, :length] for v in self.v]


_compiled_flex = None


def _flex_attention(q, k, v, block_mask):
    """FlexAttention, compiled on GPU (the fused kernel) and eager elsewhere (slow but correct)."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask)
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask)


class Attention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) with RoPE and an optional KV cache."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % n_head == 0, "d_model must be divisible by n_head"
        self.n_head = n_head
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x, mask, rope, cache: KVCache | None = None, layer_idx: int = 0, block_mask=None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q = q.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, T, Dh)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)  # (B, H, Tk, Dh)
        if block_mask is not None:
            # FlexAttention has no attention dropout; the residual dropout below still applies
            y = _flex_attention(q, k, v, block_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],  # (B, 1, Tq, Tk)
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, H*Dh)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward. GELU (GPT-2, DiT) over SwiGLU: two matrices, textbook 12·d² per block."""

    def __init__(self, d_model: int, mlp_ratio: float = 4, dropout: float = 0.0):
        super().__init__()
        hidden = int(mlp_ratio * d_model)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2), optionally with DiT's adaLN-Zero on conditioned positions."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4, dropout: float = 0.0,
                 adaln: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.attn = Attention(d_model, n_head, dropout)
        self.norm2 = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout)
        self.modulation = None
        if adaln:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 6 * d_model))
            self.modulation.per_sequence = True  # one timestep per sequence (FLOP counting in flops.py)
            # adaLN-Zero: the block starts as the identity on image positions; init_std 0 keeps it zero when a
            # model re-applies init_weights (Transformer does, right after building its blocks)
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)
            self.modulation[1].init_std = 0.0

    def forward(self, x, mask, rope, cache: KVCache | None = None, layer_idx: int = 0,
                cond: torch.Tensor | None = None, cond_mask: torch.Tensor | None = None, block_mask=None):
        attn_args = dict(cache=cache, layer_idx=layer_idx, block_mask=block_mask)
        if self.modulation is None or cond is None:
            x = x + self.attn(self.norm1(x), mask, rope, **attn_args)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(cond).chunk(6, dim=-1)  # (B, T, D)
        if cond_mask is not None:
            # text positions get the identity modulation (shift 0, scale 0, gate 1): exactly a plain block
            m = cond_mask[..., None]  # (B, T, 1)
            shift1, scale1, shift2, scale2 = (torch.where(m, t, 0.0) for t in (shift1, scale1, shift2, scale2))
            gate1, gate2 = torch.where(m, gate1, 1.0), torch.where(m, gate2, 1.0)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, mask, rope, **attn_args)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


def init_weights(module: nn.Module) -> None:
    """GPT-2 init, the single place weights are initialised: use as `model.apply(init_weights)`.

    Linear/Embedding ~ N(0, 0.02), biases 0. A Linear carrying an `init_std` attribute uses that std
    instead: residual output projections get 0.02/sqrt(2*n_layer) (each block adds two residual
    branches, so this keeps the residual stream's variance from growing with depth), and adaLN
    modulation gets 0 (adaLN-Zero).
    """
    if isinstance(module, nn.Linear):
        std = getattr(module, "init_std", 0.02)
        if std == 0:
            nn.init.zeros_(module.weight)
        else:
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


class Transformer(nn.Module):
    """A stack of pre-norm blocks plus a final RMSNorm; returns hidden states, no embedding or head."""

    def __init__(self, d_model: int, n_layer: int, n_head: int, mlp_ratio: float = 4, dropout: float = 0.0,
                 adaln: bool = False):
        super().__init__()
        self.n_layer = n_layer
        self.rope = RotaryEmbedding(d_model // n_head)
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout, adaln) for _ in range(n_layer))
        self.norm = RMSNorm(d_model)
        for block in self.blocks:
            block.attn.proj.init_std = 0.02 / math.sqrt(2 * n_layer)
            block.mlp.down.init_std = 0.02 / math.sqrt(2 * n_layer)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor,
                cache: KVCache | None = None, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, block_mask=None) -> torch.Tensor:
        """x (B, T, D), mask Bool (B, T, Tk) with Tk = cache.length + T, positions Long (B, T).

        `mask` may be None only when a FlexAttention `block_mask` is given instead.
        """
        B, T, _ = x.shape
        if block_mask is None:
            Tk = T + (cache.length if cache is not None else 0)
            if mask is None or mask.shape != (B, T, Tk):
                got = None if mask is None else tuple(mask.shape)
                raise ValueError(f"mask must have shape {(B, T, Tk)} (Tk = cache length + T), got {got}")
        rope = self.rope(positions)  # computed once, shared by every layer
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope, cache=cache, layer_idx=i, cond=cond, cond_mask=cond_mask,
                      block_mask=block_mask)
        return self.norm(x)


def count_parameters(module: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def flops_per_token(d_model: int, n_layer: int, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward (Kaplan et al. 2020; the PaLM/nanoGPT form).

    6N for the matmuls over N = 12·n_layer·d_model² non-embedding parameters (4d² attention + 8d² MLP
    with mlp_ratio 4; norms and adaLN are ignored), plus 12·n_layer·d_model·seq_len for the attention
    scores and weighted sum (2 matmuls × 2 FLOPs per MAC × 3 for forward + backward).
    """
    n_params = 12 * n_layer * d_model ** 2
    return 6 * n_params + 12 * n_layer * d_model * seq_len

"""Attention masks for one sequence that mixes text and images.

Every mode in minimfm feeds the transformer one flat sequence, e.g. `[caption tokens][image tokens]`,
plus a *modality map* saying which position is what:

    modality: LongTensor [B, T]   0 = text,  k >= 1 = belongs to image number k,  -1 = padding

From that map we build a boolean mask `[B, T, T]` where True means "query i may attend to key j":

- `causal_mask`: plain left-to-right attention (Chameleon reads and writes image codes like words).
- `omni_mask`: causal across the sequence, but bidirectional *inside* each image (Transfusion §2.3,
  Show-o's "omni-attention"). A patch of an image being denoised/unmasked may look at every other patch
  of the same image, while text still only sees the past, so the caption prefix can be KV-cached.

Padding: non-pad queries never see pad keys. A pad *query* row attends only to itself (its diagonal), so
softmax never gets an all-False row (which would give NaNs that leak into gradients through 0 * NaN).
What a pad position outputs is garbage by design; the loss must ignore it.

`flex_block_mask` expresses the same rule as a FlexAttention `BlockMask` (GPU: whole blocks that are
fully masked are skipped instead of computed and thrown away).
"""
from __future__ import annotations

import torch

TEXT = 0
PAD = -1


def _finish(allowed: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """Shared padding rule: drop pad keys everywhere, then give pad query rows only their diagonal."""
    T = modality.shape[1]
    key_ok = (modality != PAD)[:, None, :]  # (B, 1, Tk)
    query_pad = (modality == PAD)[:, :, None]  # (B, Tq, 1)
    eye = torch.eye(T, dtype=torch.bool, device=modality.device)[None]  # (1, T, T)
    return torch.where(query_pad, eye, allowed & key_ok)


def _causal(T: int, device) -> torch.Tensor:
    idx = torch.arange(T, device=device)
    return (idx[None, :, None] >= idx[None, None, :])  # (1, Tq, Tk): j <= i


def causal_mask(modality: torch.Tensor) -> torch.Tensor:
    """Left-to-right mask: allowed(i, j) = j <= i and key j is not padding. Returns Bool [B, T, T]."""
    return _finish(_causal(modality.shape[1], modality.device), modality)


def omni_mask(modality: torch.Tensor) -> torch.Tensor:
    """Transfusion / Show-o mask: causal, plus full attention among positions of the same image.

    allowed(i, j) = key j not padding and (j <= i or modality[i] == modality[j] >= 1). Returns [B, T, T].
    """
    mq = modality[:, :, None]  # (B, Tq, 1)
    mk = modality[:, None, :]  # (B, 1, Tk)
    same_image = (mq == mk) & (mq >= 1)  # (B, Tq, Tk)
    return _finish(_causal(modality.shape[1], modality.device) | same_image, modality)


_KINDS = {"causal": causal_mask, "omni": omni_mask}


def attention_mask(modality: torch.Tensor, kind: str) -> torch.Tensor:
    """Dispatch on `kind` ("causal" or "omni") so a mode can name its mask in its config."""
    if kind not in _KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; accepted: {sorted(_KINDS)}")
    return _KINDS[kind](modality)


def flex_block_mask(modality: torch.Tensor, kind: str):
    """The same mask as a FlexAttention `BlockMask` (for `Attention(..., block_mask=...)` on GPU).

    The mask_mod below is the scalar version of `_finish(...)` above: FlexAttention calls it with
    (batch, head, query index, key index) and it must return a bool for that single pair.
    Raises RuntimeError if this torch has no FlexAttention (torch < 2.5).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; accepted: {sorted(_KINDS)}")
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as e:
        raise RuntimeError(f"FlexAttention is unavailable in torch {torch.__version__} "
                           "(needs torch >= 2.5); use the dense mask instead") from e
    omni = kind == "omni"

    def mask_mod(b, h, q_idx, kv_idx):
        mq, mk = modality[b, q_idx], modality[b, kv_idx]
        rule = kv_idx <= q_idx
        if omni:  # a Python branch on a constant, so the traced mask_mod stays branch-free
            rule = rule | ((mq == mk) & (mq >= 1))
        q_pad = mq == PAD
        return (~q_pad & (mk != PAD) & rule) | (q_pad & (q_idx == kv_idx))

    B, T = modality.shape
    return create_block_mask(mask_mod, B=B, H=None, Q_LEN=T, KV_LEN=T, device=modality.device)


def _modality_colours(modality: torch.Tensor):
    """One RGB colour per position: grey for pad, blue for text, a different colour per image."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    image_cmap = colormaps["tab10"]
    text, pad = to_rgb("tab:blue"), to_rgb("lightgrey")
    colours = []
    for m in modality.tolist():
        if m == PAD:
            colours.append(pad)
        elif m == TEXT:
            colours.append(text)
        else:  # skip tab10's blue (index 0) so image 1 never looks like text
            colours.append(image_cmap(m % 9 + 1)[:3])
    return colours


def plot_mask(mask: torch.Tensor, modality: torch.Tensor, ax=None, title: str | None = None):
    """Draw a [T, T] (or item 0 of a [B, T, T]) mask with a colour strip per axis marking modality.

    Rows are queries, columns keys; a dark cell means "may attend". Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    if mask.dim() == 3:
        mask = mask[0]
    if modality.dim() == 2:
        modality = modality[0]
    mask, modality = mask.detach().cpu(), modality.detach().cpu()
    T = mask.shape[-1]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(mask.float().numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
              extent=(-0.5, T - 0.5, T - 0.5, -0.5))
    # thin strips just outside the image (clip_on=False) so the mask cells stay unobscured
    strip = max(0.6, T / 25)
    for t, colour in enumerate(_modality_colours(modality)):
        ax.add_patch(Rectangle((t - 0.5, -0.5 - strip - 0.2), 1, strip, color=colour, clip_on=False))
        ax.add_patch(Rectangle((-0.5 - strip - 0.2, t - 0.5), strip, 1, color=colour, clip_on=False))
    ax.set_xlim(-0.5 - strip - 0.3, T - 0.5)
    ax.set_ylim(T - 0.5, -0.5 - strip - 0.3)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)
    present = sorted(set(modality.tolist()))
    handles = [Patch(color=c, label="pad" if m == PAD else "text" if m == TEXT else f"image {m}")
               for m, c in zip(present, _modality_colours(torch.tensor(present)))]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
              frameon=False)
    if title is not None:
        ax.set_title(title)
    return ax

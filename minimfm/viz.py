"""Pictures: image grids with captions, for notebooks, sample files and the README."""
from __future__ import annotations

import math
from pathlib import Path

import torch


def show_images(images: torch.Tensor, titles: list[str] | None = None, ncols: int = 8, scale: float = 1.4,
                fontsize: int = 7, suptitle: str | None = None):
    """Plot [N, C, H, W] images in [0, 1] on a grid, each with an optional (wrapped) title; returns the figure."""
    import matplotlib.pyplot as plt
    import textwrap
    n = len(images)
    if n == 0 or ncols < 1:
        raise ValueError(f"show_images: needs at least one image and one column, got {n} and {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    extra = 0.55 if titles else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * (scale + extra)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].detach().float().cpu().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0))  # (H, W, C)
        if titles:
            ax.set_title("\n".join(textwrap.wrap(titles[i], 18)), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def save_image_grid(images: torch.Tensor, path: str | Path, titles: list[str] | None = None, ncols: int = 8):
    """Write a captioned grid PNG (used by `sample --out x.png` and the periodic training samples)."""
    import matplotlib.pyplot as plt
    fig = show_images(images, titles, ncols=ncols)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

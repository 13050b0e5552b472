"""Figures of a comparison (minimfm/compare.py): quality vs sampling steps, vs training compute, and samples.

Each function returns the figure, or saves it to `out` and closes it."""
from __future__ import annotations

from pathlib import Path

import torch

from minimfm.modes import REGISTRY

COLOURS = {name: spec.colour for name, spec in REGISTRY.items()}


def _finish(fig, out: Path | None):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    if out is None:
        return fig
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return None


def plot_steps(state: dict, out: Path | None = None):
    """Prompted accuracy and Fréchet distance against transformer evaluations per image (AR is one point)."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, r in state["modes"].items():
        sweep = r["step_sweep"]
        nfe = [p["nfe_per_image"] for p in sweep]
        style = dict(color=COLOURS.get(mode), label=mode, marker="o", linestyle="-" if len(sweep) > 1 else "none")
        axes[0].plot(nfe, [p["prompted_accuracy"] for p in sweep], **style)
        axes[1].plot(nfe, [p["frechet_distance"] for p in sweep], **style)
    n = next(iter(state["modes"].values()))["step_sweep"][0] if state["modes"] else None
    for ax, label in zip(axes, ("prompted accuracy (judge)", "Fréchet distance (judge features)")):
        ax.set_xscale("log"), ax.set_xlabel("transformer evaluations per image (NFE)"), ax.set_ylabel(label)
        ax.grid(alpha=0.3), ax.legend()
    if n is not None:
        axes[1].axhline(n["frechet_floor"], color="grey", linestyle=":", label="real-data floor")
        axes[1].legend()
    fig.suptitle("quality vs sampling steps (same training budget)")
    return _finish(fig, out)


def plot_compute(state: dict, out: Path | None = None):
    """Prompted and caption accuracy at evaluations along training, against training FLOPs."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, r in state["modes"].items():
        flops = [p["flops"] for p in r["curve"]]
        axes[0].plot(flops, [p["prompted_accuracy"] for p in r["curve"]], "o-", color=COLOURS.get(mode), label=mode)
        axes[1].plot(flops, [p["caption_accuracy"] for p in r["curve"]], "o-", color=COLOURS.get(mode), label=mode)
    for ax, label in zip(axes, ("prompted accuracy (judge)", "caption accuracy")):
        ax.set_xlabel("training FLOPs"), ax.set_ylabel(label), ax.grid(alpha=0.3), ax.legend()
    fig.suptitle("quality vs training compute")
    return _finish(fig, out)


@torch.no_grad()
def plot_samples(folder: Path, modes: list[str], dataset: str, out: Path | None = None, seed: int = 0):
    """One row per mode, one column per class, the same prompts and seed for every mode."""
    import textwrap
    import matplotlib.pyplot as plt
    from minimfm.runs import load_model
    from minimfm.train import sample_prompts
    if not modes:
        return None
    prompts = sample_prompts(dataset)
    fig, axes = plt.subplots(len(modes), len(prompts), figsize=(1.25 * len(prompts), 1.35 * len(modes) + 0.7),
                             squeeze=False)
    for row, mode in enumerate(modes):
        model = load_model(folder / mode / "ckpt.pt", "cpu")
        images = model.generate_images(prompts, seed=seed).cpu()
        for col, img in enumerate(images):
            ax = axes[row, col]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(textwrap.fill(prompts[col], 16), fontsize=7)
        axes[row, 0].set_ylabel(f"{mode}\nNFE {model.last_nfe}", fontsize=9)
    return _finish(fig, out)

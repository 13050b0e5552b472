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


def _error(points: list[dict], key: str) -> list[float]:
    """Half-widths of the 95 % intervals over seeds (0 where there is none: one seed, or an older results.json)."""
    return [(p.get("intervals", {}).get(key) or {}).get("half_width") or 0.0 for p in points]


def _values(points: list[dict], key: str) -> list[float]:
    return [float("nan") if p.get(key) is None else p[key] for p in points]  # None: not measured, not plotted


def _floor(ax, point: dict | None) -> None:
    """The real-data floor at the points' sample size (an older results.json has none on its curve points)."""
    if point is not None and point.get("frechet_floor") is not None:
        n = f" at {point['n_samples']} images" if "n_samples" in point else ""
        ax.axhline(point["frechet_floor"], color="grey", linestyle=":", label=f"real-data floor{n}")


def _seeds_note(state: dict) -> str:
    k = len(state.get("seeds", []))
    return f"mean ± 95 % interval over {k} seeds" if k > 1 else "one seed, no interval"


def plot_steps(state: dict, out: Path | None = None):
    """Prompted accuracy and Fréchet distance against transformer evaluations per image (AR is one point), with
    error bars over seeds; the dotted line is the real-data floor at the sweep's sample size."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for mode, r in state["modes"].items():
        sweep = r["step_sweep"]
        nfe = [p["nfe_per_image"] for p in sweep]
        style = dict(color=COLOURS.get(mode), label=mode, marker="o", capsize=3,
                     linestyle="-" if len(sweep) > 1 else "none")
        for ax, key in zip(axes, ("prompted_accuracy", "frechet_distance")):
            ax.errorbar(nfe, _values(sweep, key), yerr=_error(sweep, key), **style)
    first = next(iter(state["modes"].values()))["step_sweep"][0] if state["modes"] else None
    _floor(axes[1], first)
    for ax, label in zip(axes, ("prompted accuracy (judge)", "Fréchet distance (judge features)")):
        ax.set_xscale("log"), ax.set_xlabel("transformer evaluations per image (NFE)"), ax.set_ylabel(label)
        ax.grid(alpha=0.3), ax.legend()
    axes[0].set_ylim(0, 1.02)  # the whole accuracy range: a 0.98-1.00 axis makes noise look like a trend
    n = f", {state['sweep_n']} images per point" if "sweep_n" in state else ""  # older results.json: mixed
    fig.suptitle(f"quality vs sampling steps (same training budget; {_seeds_note(state)}{n})")
    return _finish(fig, out)


def plot_compute(state: dict, out: Path | None = None):
    """Prompted accuracy, Fréchet distance (with the real-data floor at the curve's sample size) and caption
    accuracy at evaluations along training, against training FLOPs, with error bars over seeds."""
    import matplotlib.pyplot as plt
    keys = [("prompted_accuracy", "prompted accuracy (judge)"),
            ("frechet_distance", "Fréchet distance (judge features)"), ("caption_accuracy", "caption accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for mode, r in state["modes"].items():
        curve = r["curve"]
        flops = [p["flops"] for p in curve]
        for ax, (key, _) in zip(axes, keys):
            ax.errorbar(flops, _values(curve, key), yerr=_error(curve, key), marker="o", capsize=3,
                        color=COLOURS.get(mode), label=mode)
    first = next(iter(state["modes"].values()))["curve"][0] if state["modes"] else None
    _floor(axes[1], first)
    for ax, (_, label) in zip(axes, keys):
        ax.set_xlabel("training FLOPs"), ax.set_ylabel(label), ax.grid(alpha=0.3), ax.legend()
    for ax in (axes[0], axes[2]):
        ax.set_ylim(0, 1.02)  # accuracies on their whole range (see plot_steps)
    n = f", {state['sweep_n']} images per point" if "sweep_n" in state else ""  # older results.json: mixed
    fig.suptitle(f"quality vs training compute ({_seeds_note(state)}{n})")
    return _finish(fig, out)


@torch.no_grad()
def plot_samples(folder: Path, modes: list[str], dataset: str, out: Path | None = None, seed: int = 0,
                 run_seed: int = 0):
    """One row per mode, one column per class, the same prompts and sampling seed for every mode; the models are
    the comparison's runs trained with `run_seed`."""
    import textwrap
    import matplotlib.pyplot as plt
    from minimfm.compare import seed_folder
    from minimfm.runs import load_model
    from minimfm.train import sample_prompts
    if not modes:
        return None
    prompts = sample_prompts(dataset)
    fig, axes = plt.subplots(len(modes), len(prompts), figsize=(1.25 * len(prompts), 1.35 * len(modes) + 0.7),
                             squeeze=False)
    for row, mode in enumerate(modes):
        model = load_model(seed_folder(folder, mode, run_seed) / "ckpt.pt", "cpu")
        images = model.generate_images(prompts, seed=seed).cpu()
        for col, img in enumerate(images):
            ax = axes[row, col]
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(textwrap.fill(prompts[col], 16), fontsize=7)
        axes[row, 0].set_ylabel(f"{mode}\nNFE {model.last_nfe}", fontsize=9)
    return _finish(fig, out)

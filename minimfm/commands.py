"""What each `python -m minimfm` subcommand does; argument parsing lives in __main__.py."""
from __future__ import annotations

from minimfm.config import config_from_args


class NotBuiltError(RuntimeError):
    """A command whose implementation has not landed yet; says which issue brings it."""


def tokenizer(args) -> int:
    from minimfm.tokenizers.store import build_tokenizer, get_tokenizer, tokenizer_path
    cfg = config_from_args(args)
    path = tokenizer_path(cfg, args.kind)
    if path.is_file() and not args.overwrite:
        print(f"{path} exists (use --overwrite to retrain); its metrics:")
        from minimfm.checkpoint import load_checkpoint
        metrics = load_checkpoint(path, kind=args.kind, dataset=cfg.dataset)["metrics"]
    else:
        if args.kind != "judge":
            get_tokenizer(cfg, "judge")  # reconstructions are scored by the judge, so make sure it exists
        _, metrics = build_tokenizer(cfg, args.kind)
        print(f"wrote {path}")
    for key, value in metrics.items():
        print(f"  {key:>16}: {value:.4f}" if isinstance(value, float) else f"  {key:>16}: {value}")
    return 0


def train(args) -> int:
    from minimfm.train import train as run_training
    cfg = config_from_args(args)
    run = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"wrote {run}/ckpt.pt, {run}/metrics.jsonl, {run}/loss.png and samples in {run}/samples/")
    print(f"next: python -m minimfm evaluate --ckpt {run}/ckpt.pt")
    return 0


def _sampling_kwargs(model, args) -> dict:
    return {} if args.steps is None else {"steps": args.steps}


def sample(args) -> int:
    import torch
    from pathlib import Path
    from minimfm.runs import load_model
    model = load_model(args.ckpt, args.device)
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        path = Path(args.prompts_file)
        if not path.exists():
            raise FileNotFoundError(f"prompts file not found: {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    prompts = [p for p in prompts for _ in range(args.n)]
    images = model.generate_images(prompts, cfg_scale=args.cfg_scale, seed=args.seed,
                                   **_sampling_kwargs(model, args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save({"images": images.float().cpu(), "prompts": prompts}, out)
    elif out.suffix == ".png":
        from minimfm.viz import save_image_grid
        save_image_grid(images.cpu(), out, prompts, ncols=min(8, max(args.n, 1)))
    else:
        raise ValueError(f"--out must end in .png or .pt, got '{out.name}'")
    print(f"wrote {len(prompts)} images to {out} ({model.last_nfe} transformer evaluations per image)")
    return 0


def caption(args) -> int:
    import torch
    from pathlib import Path
    from minimfm.runs import load_model
    model = load_model(args.ckpt, args.device)
    path = Path(args.images)
    if not path.is_file():
        raise FileNotFoundError(f"images file not found: {path}")
    if path.suffix == ".pt":
        images = torch.load(path, weights_only=True)["images"]
    else:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.functional import resize
        mode = ImageReadMode.GRAY if model.cfg.dataset == "mnist" else ImageReadMode.RGB
        size = model.image_tokenizer.image_size if hasattr(model.image_tokenizer, "image_size") else 4 * model.grid[0]
        images = resize(decode_image(str(path), mode=mode).float().div(255), [size, size])[None]
    for i, text in enumerate(model.caption(images)):
        print(f"{i}: {text}")
    return 0


def evaluate(args) -> int:
    from minimfm.evaluate import evaluate as run_evaluation, format_results
    from minimfm.runs import load_model
    from minimfm.tokenizers.store import get_tokenizer
    model = load_model(args.ckpt, args.device)
    judge = get_tokenizer(model.cfg, "judge")
    n = args.n or model.cfg.eval_samples
    results = run_evaluation(model, judge, n_samples=n, n_captions=min(n, model.cfg.eval_captions),
                             cfg_scale=args.cfg_scale, steps=args.steps, seed=args.seed)
    results["ckpt"] = str(args.ckpt)
    _report(format_results(results), results, args.out)
    return 0


def _report(text: str, results: dict, out: str | None) -> None:
    """Print a command's table, and write its figures as JSON when --out is given."""
    import json
    print(text)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {out}")


def compare(args) -> int:
    from minimfm.compare import compare as run_comparison
    cfg = config_from_args(args)
    out = run_comparison(cfg, name=args.name, budget_flops=args.budget_flops, budget_minutes=args.budget_minutes,
                         sweep_n=args.sweep_n, overwrite=args.overwrite)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, quality_vs_steps.png, quality_vs_compute.png, samples.png")
    return 0


def claims(args) -> int:
    from minimfm.claims import run_claims
    cfg = config_from_args(args)
    out = run_claims(cfg, steps=args.claim_steps, n=args.n, compare_name=args.compare_name)
    print((out / "claims.md").read_text())
    print(f"wrote {out}/claims.json and claims.md")
    return 0


def bench(args) -> int:
    from minimfm.bench import bench as run_bench, format_bench
    result = run_bench(config_from_args(args), steps=args.steps, warmup=args.warmup)
    _report(format_bench(result), result, args.out)
    return 0

"""What each `python -m minimfm` subcommand does; argument parsing (and the range of every flag) lives in
__main__.py.

Each command checks what it will read and write before it does any work: an output never replaces an input or a
checkpoint, an image file is the shape, type and range the model was trained on, and a prompt file holds prompts.
A mistake is a one-line ConfigError naming the flag, never a traceback half-way through.
"""
from __future__ import annotations

import os
from pathlib import Path

from minimfm.config import ConfigError, config_from_args, shorten

# Sampling is batched in chunks of CHUNK images (memory stays flat, and a bar shows progress). A PNG grid beyond
# MAX_GRID images is unreadable and slow to draw; a .pt file holds up to MAX_IMAGES (~30 MB of MNIST, 120 of CIFAR).
CHUNK, MAX_GRID, MAX_IMAGES = 100, 256, 10_000
# generate: one sequence per --n, each a loop of single steps; edit: one image at a time (a bigger batch is a
# `sample`-sized job for a script, not the CLI); a prompt longer than MAX_PROMPT tokens is no prompt
MAX_SEQUENCES, MAX_EDITS, MAX_PROMPT = 16, 100, 256
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}  # (C, H, W) of a dataset's images
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")  # what torchvision decodes (+ WebP)


# ------------------------------------------------------------------------------------------ input checks

def check_folders(cfg) -> None:
    """--runs-dir and --data-root must be folders (or not exist yet, to be created), not files."""
    from minimfm.runs import check_folder
    check_folder(cfg.runs_dir, "--runs-dir")
    check_folder(cfg.data_root, "--data-root")


def check_output(out: str, suffixes: tuple[str, ...], inputs: tuple = (), flag: str = "--out") -> Path:
    """Refuse, before any work, an output that cannot be written or that would replace an input or a checkpoint."""
    from minimfm.checkpoint import is_checkpoint
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"{flag} {shorten(path)} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix not in suffixes:
        raise ConfigError(f"{flag} must end in {' or '.join(suffixes)}, got '{shorten(path.name)}'")
    for given in inputs:
        if given is not None and _same_file(path, Path(given)):
            raise ConfigError(f"{flag} {shorten(path)} is also this command's input: an output never replaces "
                              f"an input")
    if path.is_file() and is_checkpoint(path):
        raise ConfigError(f"{flag} {shorten(path)} is a minimfm checkpoint: an output never replaces one")
    existing = next(p for p in path.parents if p.exists())  # missing folders are created when it is written
    if not existing.is_dir():
        raise ConfigError(f"{flag} {shorten(path)}: {shorten(existing)} is a file, not a folder")
    return path


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def read_prompts(name: str) -> list[str]:
    """The non-empty lines of --prompts-file."""
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"--prompts-file {shorten(path)}: " + ("is a folder, not a text file" if path.is_dir()
                                                                 else "not found"))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--prompts-file {shorten(path)}: not a UTF-8 text file (one prompt per line)") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompts-file {shorten(path)}: holds no prompts (one per line)")
    return prompts


def read_images(name: str, dataset: str, flag: str = "--images", exact_size: bool = False):
    """Images [N, C, H, W] float in [0, 1] from a `sample --out X.pt` file (or a bare tensor saved with torch.save)
    or one PNG / JPEG / GIF / WebP image, checked against what the model's dataset looks like. exact_size
    refuses an image file of another size instead of resizing it (edits act on the pixels themselves)."""
    import torch
    from minimfm.checkpoint import load_plain
    path = Path(name)
    if not path.is_file():
        raise ConfigError(f"{flag} {shorten(path)}: " + ("is a folder" if path.is_dir() else "not found"))
    C, H, W = IMAGE_SHAPES[dataset]
    if path.suffix == ".pt":
        blob = load_plain(path, "image file (a .pt written by `sample`)")
        images = blob.get("images") if isinstance(blob, dict) else blob
        if not torch.is_tensor(images):
            raise ConfigError(f"{flag} {shorten(path)}: " + ("has no 'images' tensor" if isinstance(blob, dict)
                              else "holds no tensor") + " (expected a file written by `sample --out X.pt`)")
    else:
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.functional import resize
        with open(path, "rb") as f:
            head = f.read(12)
        if not (head.startswith(IMAGE_SIGNATURES) or head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            raise ConfigError(f"{flag} {shorten(path)}: not a PNG, JPEG, GIF or WebP image, nor a .pt file")
        try:
            image = decode_image(str(path), mode=ImageReadMode.GRAY if C == 1 else ImageReadMode.RGB)
        except RuntimeError as e:  # a damaged file behind a valid signature; torchvision says why
            raise ConfigError(f"{flag} {shorten(path)}: cannot be decoded ({shorten(e, 60)})") from None
        if exact_size and tuple(image.shape[1:]) != (H, W):
            raise ConfigError(f"{flag} {shorten(path)}: {image.shape[2]}x{image.shape[1]} pixels; a {dataset} model "
                              f"edits {W}x{H} images (resizing would change the strokes an edit acts on)")
        images = resize(image.float().div(255), [H, W], antialias=True).clamp(0, 1)[None]  # (1, C, H, W)
    check_images(images, dataset, f"{flag} {shorten(path)}")
    return images


def check_images(images, dataset: str, where: str) -> None:
    """Shape, dtype and range as the model was trained on: [N, C, H, W] floats in [0, 1], N in [1, MAX_IMAGES]."""
    import torch
    C, H, W = IMAGE_SHAPES[dataset]
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1:] != (C, H, W):
        raise ConfigError(f"{where}: images of shape {shape}; a {dataset} model reads [N, {C}, {H}, {W}]")
    if not 1 <= shape[0] <= MAX_IMAGES:
        raise ConfigError(f"{where}: {shape[0]} images; between 1 and {MAX_IMAGES} are read at once")
    if not images.is_floating_point():
        raise ConfigError(f"{where}: {str(images.dtype).replace('torch.', '')} values; expected floats in [0, 1] "
                          f"(divide 0..255 images by 255)")
    if not bool(torch.isfinite(images).all()):
        raise ConfigError(f"{where}: holds NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise ConfigError(f"{where}: values span {low:.4g}..{high:.4g}; expected [0, 1]"
                          + (" (divide 0..255 images by 255)" if high > 1.5 else ""))


# -------------------------------------------------------------------------------------------- commands

def tokenizer(args) -> int:
    from minimfm.tokenizers.store import build_tokenizer, get_tokenizer, tokenizer_path
    cfg = config_from_args(args)
    check_folders(cfg)
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
    from minimfm.checkpoint import CheckpointError
    from minimfm.train import train as run_training
    cfg = config_from_args(args)
    check_folders(cfg)
    ckpt = Path(cfg.runs_dir) / cfg.name / "ckpt.pt"
    if args.resume and not ckpt.is_file():  # (train() itself starts such a run: compare and claims rely on it)
        raise CheckpointError(f"--resume: there is no checkpoint {ckpt} to continue; leave out --resume to start "
                              f"the run" + (" (with --overwrite: its folder exists)" if ckpt.parent.exists() else ""))
    run = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"wrote {run}/ckpt.pt, {run}/metrics.jsonl, {run}/loss.png and samples in {run}/samples/")
    print(f"next: python -m minimfm evaluate --ckpt {run}/ckpt.pt")
    return 0


def _sampling_kwargs(args) -> dict:
    return {} if args.steps is None else {"steps": args.steps}


def sample(args) -> int:
    import torch
    from tqdm.auto import tqdm
    from minimfm.checkpoint import CheckpointError, save_atomic
    from minimfm.runs import load_model
    out = check_output(args.out, (".png", ".pt"), inputs=(args.ckpt, args.prompts_file))
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts_file)
    total, cap = len(prompts) * args.n, MAX_GRID if out.suffix == ".png" else MAX_IMAGES
    if total > cap:
        raise ConfigError(f"--n {args.n} x {len(prompts)} prompt{'s' * (len(prompts) != 1)} = {total} images; "
                          f"{out.suffix} takes at most {cap}" + (f" (a .pt file up to {MAX_IMAGES})"
                                                                 if out.suffix == ".png" else ""))
    model = load_model(args.ckpt, args.device)
    model.encode_prompts(prompts)  # an unknown word or a too-long prompt fails before any image is made
    prompts = [p for p in prompts for _ in range(args.n)]
    images = []
    for start in tqdm(range(0, total, CHUNK), desc="sampling", disable=total <= CHUNK, leave=False):
        # seed + start: the first chunk is exactly what one unbatched call with --seed made
        images.append(model.generate_images(prompts[start:start + CHUNK], cfg_scale=args.cfg_scale,
                                            seed=args.seed + start, **_sampling_kwargs(args)).cpu())
    images = torch.cat(images)
    if not bool(torch.isfinite(images).all()):
        raise CheckpointError(f"{args.ckpt} made non-finite images: its weights are damaged; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        save_atomic({"images": images.float(), "prompts": prompts}, out)
    else:
        from minimfm.viz import save_image_grid
        save_image_grid(images, out, prompts, ncols=min(8, args.n))
    print(f"wrote {len(prompts)} images to {out} ({model.last_nfe} transformer evaluations per image)")
    return 0


def check_prompt(model, prompt: str) -> list[int]:
    """`generate --prompt` as the loop will read it ([T2I]? [BOS] ...), refused in one line before any work:
    an unknown word (named with the closest known ones), a misplaced special token, a prompt over MAX_PROMPT."""
    from minimfm.generate import check_prompt, encode_prompt
    from minimfm.interleaved import INTERLEAVED_WORDS_V1
    from minimfm.tokenizers.text import SPECIAL_TOKENS
    text = " ".join(w for w in prompt.split() if w not in SPECIAL_TOKENS)
    lacks = [w for w in dict.fromkeys(model.tok.split(text)) if w not in model.tok.index and w in INTERLEAVED_WORDS_V1]
    if lacks:
        raise ConfigError(f"this checkpoint was not trained on interleaved sequences: its vocabulary lacks "
                          f"{', '.join(repr(w) for w in lacks[:3])}; fine-tune it with `python -m minimfm train "
                          f"--init-from CKPT --tasks caption,interleaved` (or prompt with caption words only)")
    model.tok.encode(text)  # any other unknown word: named with the closest known ones, the whole prompt echoed
    ids = encode_prompt(model, prompt)
    if len(ids) > MAX_PROMPT:
        raise ConfigError(f"--prompt: {len(ids)} tokens; at most {MAX_PROMPT} are read")
    try:
        check_prompt([ids], model.tok)
    except ValueError as e:
        raise ConfigError(f"--prompt '{shorten(prompt)}': {str(e).removeprefix('sequence: ')}") from None
    if ids[-1] == model.tok.eos_id:
        raise ConfigError(f"--prompt '{shorten(prompt)}' ends in [EOS]: there is nothing left to generate")
    return ids


def generate(args) -> int:
    """Interleaved generation (minimfm/generate.py): the model writes text and decides itself when an image
    comes; a PNG strip (text beside the images) and a .pt of the same name with the texts and images."""
    import torch
    from minimfm.checkpoint import CheckpointError, save_atomic
    from minimfm.generate import generate as run_generation, save_strip, strip_parts
    from minimfm.runs import load_model
    out = check_output(args.out, (".png",), inputs=(args.ckpt,))
    tensors = check_output(str(out.with_suffix(".pt")), (".pt",), inputs=(args.ckpt,), flag="--out (its .pt)")
    model = load_model(args.ckpt, args.device)
    check_prompt(model, args.prompt)
    rows, texts, images, image_row = [], [], [], []
    for i in range(args.n):
        g = run_generation(model, args.prompt, max_tokens=args.max_tokens, max_images=args.max_images,
                           cfg_scale=args.cfg_scale, seed=args.seed + i, **_sampling_kwargs(args))
        pictures = (model.decode_images(torch.stack(g.images)).cpu() if g.images
                    else torch.zeros(0, *IMAGE_SHAPES[model.cfg.dataset]))  # (k, C, H, W)
        if not bool(torch.isfinite(pictures).all()):
            raise CheckpointError(f"{args.ckpt} made non-finite images: its weights are damaged; nothing was written")
        texts.append(g.text(model.tok))
        rows.append(strip_parts(g, model.tok, pictures))
        images += list(pictures)
        image_row += [i] * len(pictures)
        print(f"{i}: {texts[-1]}")
    save_strip(rows, out, title=f"'{shorten(args.prompt, 60)}' ({model.mode}, seed {args.seed})")
    save_atomic({"prompt": args.prompt, "texts": texts, "image_row": torch.tensor(image_row, dtype=torch.long),
                 "images": torch.stack(images).float() if images else pictures},
                tensors)
    print(f"wrote {out} and {tensors} ({len(images)} images in {args.n} sequence{'s' * (args.n != 1)})")
    return 0


def check_instruction(model, instruction: str, ckpt: str = "CKPT") -> list:
    """`edit --instruction` as generate.edit_prompt's segments; a vocabulary without the edit words is told how
    to get them (before any work)."""
    from minimfm.edits import EDIT_WORDS_V1
    from minimfm.generate import edit_prompt as prompt_for
    tok = model.tok
    words = tok.split(instruction)
    if not words:
        raise ConfigError("--instruction is empty; e.g. 'make it bolder'")
    lacks = [w for w in dict.fromkeys(words) if w not in tok.index and w in EDIT_WORDS_V1]
    if lacks:
        raise ConfigError(f"this checkpoint was not trained for editing: its vocabulary lacks "
                          f"{', '.join(repr(w) for w in lacks[:3])}; fine-tune it with `python -m minimfm train "
                          f"--init-from {ckpt if len(ckpt) <= 60 else 'CKPT'} --tasks caption,edit`")
    return prompt_for(model, tok.encode(instruction))  # any other unknown word: named with the closest known


def edit(args) -> int:
    """Instruction editing (Transfusion §4.3): read the source image, the instruction, and let the model draw
    the edited image after them. --out .png takes one image (a plain 28x28 PNG `edit --image` reads back);
    a .pt (from `sample`) of several images is edited image by image into --out .pt."""
    import torch
    from minimfm.checkpoint import CheckpointError, _write_atomic, save_atomic
    from minimfm.generate import EDIT_CFG_SCALE
    from minimfm.generate import generate as run_generation
    from minimfm.runs import load_model
    out = check_output(args.out, (".png", ".pt"), inputs=(args.ckpt, args.image))
    model = load_model(args.ckpt, args.device)
    prompt = check_instruction(model, args.instruction, str(args.ckpt))
    sources = read_images(args.image, model.cfg.dataset, flag="--image", exact_size=True)
    if len(sources) > MAX_EDITS or (out.suffix == ".png" and len(sources) > 1):
        raise ConfigError(f"--image {shorten(args.image)}: {len(sources)} images; --out .png takes one and "
                          f"--out .pt up to {MAX_EDITS}")
    edited = []
    for i, source in enumerate(sources):
        g = run_generation(model, prompt, [model.encode_images(source[None])[0]], max_tokens=0,
                           cfg_scale=EDIT_CFG_SCALE if args.cfg_scale is None else args.cfg_scale,
                           seed=args.seed + i, **_sampling_kwargs(args))
        edited.append(model.decode_images(g.images[-1][None]).cpu())
    edited = torch.cat(edited).float()  # (N, C, H, W)
    if not bool(torch.isfinite(edited).all()):
        raise CheckpointError(f"{args.ckpt} made non-finite images: its weights are damaged; nothing was written")
    if out.suffix == ".pt":
        save_atomic({"images": edited, "sources": sources.float(), "instruction": args.instruction}, out)
    else:
        from torchvision.io import encode_png
        png = encode_png((edited[0] * 255).round().to(torch.uint8))  # (C, H, W) -> the same grey PNG it reads
        _write_atomic(out, lambda f: f.write(png.numpy().tobytes()))
    print(f"wrote {len(edited)} edited image{'s' * (len(edited) != 1)} to {out} ('{shorten(args.instruction)}', "
          f"{model.last_nfe} transformer evaluations per image)")
    return 0


def caption(args) -> int:
    from minimfm.runs import load_model
    model = load_model(args.ckpt, args.device)
    images = read_images(args.images, model.cfg.dataset)
    for start in range(0, len(images), CHUNK):
        for i, text in enumerate(model.caption(images[start:start + CHUNK]), start):
            print(f"{i}: {text}")
    return 0


def evaluate(args) -> int:
    from minimfm.evaluate import evaluate as run_evaluation, format_results
    from minimfm.runs import load_model
    from minimfm.tokenizers.store import get_tokenizer
    out = check_output(args.out, (".json",), inputs=(args.ckpt,)) if args.out else None
    model = load_model(args.ckpt, args.device)
    if args.mixed:
        from minimfm.evaluate_mixed import evaluate_mixed_tasks, format_mixed, mixed_tasks
        mixed_tasks(model, args.ckpt)  # refuse before minutes of evaluation, not after
    judge = get_tokenizer(model.cfg, "judge")
    n = model.cfg.eval_samples if args.n is None else args.n
    results = run_evaluation(model, judge, n_samples=n, n_captions=min(n, model.cfg.eval_captions),
                             cfg_scale=args.cfg_scale, steps=args.steps, seed=args.seed)
    results["ckpt"] = str(args.ckpt)
    text = format_results(results)
    if args.mixed:
        mixed = evaluate_mixed_tasks(model, judge, args.mixed, ckpt=args.ckpt, seed=args.seed,
                                     cfg_scale=args.cfg_scale, steps=args.steps)
        results.update(mixed)
        text += "\n" + format_mixed(mixed)
    _report(text, results, out)
    return 0


def _report(text: str, results: dict, out: Path | None) -> None:
    """Print a command's table, and write its figures as JSON when --out is given (checked by check_output)."""
    import json
    from minimfm.checkpoint import write_text_atomic
    print(text)
    if out:
        write_text_atomic(json.dumps(results, indent=2), out)
        print(f"wrote {out}")


def compare(args) -> int:
    from minimfm.compare import compare as run_comparison
    cfg = config_from_args(args)
    check_folders(cfg)
    out = run_comparison(cfg, name=args.name, budget_flops=args.budget_flops, budget_minutes=args.budget_minutes,
                         seeds=args.seeds, sweep_n=args.sweep_n, recipes=args.recipes, overwrite=args.overwrite)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.json, results.md, quality_vs_steps.png, quality_vs_compute.png, samples.png")
    return 0


def tune(args) -> int:
    from minimfm.modes import MODE_NAMES
    from minimfm.tuning import tune as run_tuning
    if args.mode is None:  # a search is per mode: falling back to the default (ar) would be a surprise
        raise ConfigError(f"--mode: tune searches one mode's recipe; give --mode {' or '.join(MODE_NAMES)}")
    cfg = config_from_args(args)
    check_folders(cfg)
    out = run_tuning(cfg, trials=args.trials, trial_steps=args.trial_steps, name=args.name, overwrite=args.overwrite)
    print((out / "best.md").read_text())
    print(f"wrote {out}/best.json and best.md; next: python -m minimfm compare --recipes {out.parent}")
    return 0


def claims(args) -> int:
    from minimfm.claims_runs import run_claims
    cfg = config_from_args(args)
    check_folders(cfg)
    out = run_claims(cfg, steps=args.claim_steps, n=args.n, compare_name=args.compare_name, seeds=args.claim_seeds,
                     claims=args.claims)
    print((out / "claims.md").read_text())
    print(f"wrote {out}/claims.json and claims.md")
    return 0


def bench(args) -> int:
    from minimfm.bench import bench as run_bench, format_bench
    out = check_output(args.out, (".json",)) if args.out else None
    result = run_bench(config_from_args(args), steps=args.steps, warmup=args.warmup)
    _report(format_bench(result), result, out)
    return 0


def course(args) -> int:
    from minimfm.course import prepare
    prepare(args.dataset, args.preset, dry_run=args.dry_run)
    return 0

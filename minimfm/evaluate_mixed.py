"""Scoring mixed-modal generation: interleaved sequences and instruction edits (issue #15's acceptance figures).

Interleaved (Chameleon's mixed-modal generation, Show-o's mixed-modality tasks): each test sequence comes from a
template with exact answers (minimfm/interleaved.py), and the model does in it what training asked of it: it
DRAWS the images interleaved.DRAWN marks ("then": both, "next": the second, "captions": the second, no digit
asked) and WRITES the captions of "captions" (interleaved.WRITES); the rest is given, teacher-forced. Figures:

    image accuracy      per drawn image whose text names a digit (interleaved.NAMED): the judge reads that digit
    text consistency    per written text: the one digit it names (evaluate.caption_class) is the digit of the
                        image just before it (its label when it was given, the judge's reading when drawn);
                        `text_consistency_after_drawn` counts only the texts that follow a drawn image

Editing (Transfusion §4.3): for exact triples from the test split (minimfm/edits.py), the model draws the
target after `[BOS] instruction [BOI] source [EOI] [BOI]` (generate.edit_prompt). Per instruction and overall:

    identity kept       the judge reads the output as the source's digit
    moved               the asked measure moved the asked way by MIN_CHANGE (edits.edit_effect)
    mse                 pixel MSE to the exact target

each beside the same figures for "copy the source", the baseline an editor must beat: it keeps identity as
well as the judge reads sources, moves nothing (0 by construction) and has the MSE of doing nothing.

The scoring functions are pure (outputs in, figures out; tests/test_evaluate_mixed.py feeds them made-up
outputs); `evaluate_interleaved` and `evaluate_edits` run a model to produce those outputs.
"""
from __future__ import annotations

from collections import defaultdict

import torch

from minimfm.config import ConfigError, parse_tasks, shorten
from minimfm.data import load_images
from minimfm.edits import build_edits, edit_effect
from minimfm.evaluate import caption_class
from minimfm.generate import EDIT_CFG_SCALE, Context, edit_prompt, generate
from minimfm.interleaved import DRAWN, NAMED, TEMPLATES, WRITES, build_interleaved, mixed_vocabulary
from minimfm.mixed_data import interleaved_example
from minimfm.tokenizers.text import SPECIAL_TOKENS

WRITTEN_MAX = 16  # words a written text may take before it is cut (a caption is at most ~10)


# -------------------------------------------------------------------------------------------- scoring
def _rate(hits: list[bool]) -> float | None:
    return sum(hits) / len(hits) if hits else None


def score_interleaved(records: list[dict]) -> dict:
    """Records, one per sequence: {"template", "images": [(named digit, judged digit) per drawn, named image],
    "texts": [(written text, digit of the image before it, that image drawn?) per written text]} -> overall and
    per-template image accuracy and text consistency (None where a template has none), with their counts."""
    images, texts, after_drawn = defaultdict(list), defaultdict(list), []
    for r in records:
        for named, judged in r["images"]:
            images[r["template"]].append(named == judged)
        for text, digit, drawn in r["texts"]:
            texts[r["template"]].append(caption_class(text, "mnist") == digit)
            if drawn:
                after_drawn.append(texts[r["template"]][-1])
    out = {"n_sequences": len(records),
           "image_accuracy": _rate(sum(images.values(), [])), "n_images": sum(map(len, images.values())),
           "text_consistency": _rate(sum(texts.values(), [])), "n_texts": sum(map(len, texts.values())),
           "text_consistency_after_drawn": _rate(after_drawn), "n_texts_after_drawn": len(after_drawn)}
    for t in sorted(set(images) | set(texts)):
        out[f"image_accuracy_{t}"] = _rate(images[t])
        out[f"text_consistency_{t}"] = _rate(texts[t])
    return out


def score_edits(sources: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor, instructions: list[str],
                labels: torch.Tensor, judged: torch.Tensor) -> dict:
    """Images [M, 1, H, W] in [0, 1] (outputs: what the editor made), the instruction and digit of each, and the
    judge's reading of each output [M] -> identity kept, moved, mse: overall and per instruction."""
    if not (len(sources) == len(targets) == len(outputs) == len(instructions) == len(labels) == len(judged)):
        raise ValueError("score_edits: sources, targets, outputs, instructions, labels and judged differ in length")
    kept = (judged.cpu() == labels.cpu()).float()  # (M,)
    mse = (outputs.float().cpu() - targets.float().cpu()).pow(2).flatten(1).mean(1)  # (M,)
    moved = torch.zeros(len(sources))
    for ins in dict.fromkeys(instructions):
        rows = torch.tensor([i == ins for i in instructions])
        moved[rows] = edit_effect(sources[rows].cpu(), outputs[rows].cpu(), ins)["moved"].float()
    out = {"n_edits": len(sources), "identity_kept": float(kept.mean()), "moved": float(moved.mean()),
           "mse": float(mse.mean())}
    for ins in dict.fromkeys(instructions):
        rows = torch.tensor([i == ins for i in instructions])
        out[ins] = {"n": int(rows.sum()), "identity_kept": float(kept[rows].mean()),
                    "moved": float(moved[rows].mean()), "mse": float(mse[rows].mean())}
    return out


def score_edits_with_baseline(sources, targets, outputs, instructions, labels, judge) -> dict:
    """score_edits for the model's outputs and for "copy the source", the judge run here on both."""
    with torch.no_grad():
        device = next(judge.parameters()).device
        read = lambda x: judge(x.to(device)).argmax(-1).cpu()  # noqa: E731 (a local one-liner)
        return {"model": score_edits(sources, targets, outputs, instructions, labels, read(outputs)),
                "copy_source": score_edits(sources, targets, sources, instructions, labels, read(sources))}


# -------------------------------------------------------------------------------------------- running
def check_vocabulary(model) -> None:
    """A model must read the template and instruction words (a caption-only checkpoint does not)."""
    lacks = [w for w in mixed_vocabulary("mnist") if w not in model.tok.index]
    if lacks:
        raise ValueError(f"this {model.mode} model's vocabulary lacks '{lacks[0]}': it was not trained on "
                         f"interleaved sequences or edits (train --init-from CKPT --tasks caption,interleaved,edit)")


def _write(ctx, max_words: int) -> list[int]:
    """Greedy words after the last position fed, until the model asks for [BOI] or [EOS] (not fed: the caller
    teacher-forces what comes next) or max_words; each chosen word is fed."""
    tok, words = ctx.tok, []
    specials = [tok.index[w] for w in SPECIAL_TOKENS if tok.index[w] not in (tok.boi_id, tok.eos_id)]
    while len(words) < max_words:
        logits = ctx.logits()
        logits[specials] = float("-inf")
        choice = int(logits.argmax())
        if choice in (tok.boi_id, tok.eos_id):
            break
        words.append(choice)
        ctx.feed_text([choice])
    return words


@torch.no_grad()
def run_interleaved(model, judge, sample, *, cfg_scale=None, steps=None, seed=0) -> tuple[dict, list]:
    """One template sequence through the model: (its record for score_interleaved, its images in order as
    pictures [1, H, W]: the given ones and the drawn ones)."""
    tok, template = model.tok, sample.template
    drawn, named = iter(DRAWN[template]), iter(NAMED[template])
    ctx = Context(model, cfg_scale=cfg_scale, steps=steps, generator=torch.Generator(model.device).manual_seed(seed))
    # open the row as training does (mixed_data.Example: [MMU] for "captions", whose images training reads): another
    # task token here would be a sequence the model never saw
    task = interleaved_example(sample, tok).segments(tok, True)[0][:1] if model.task_tokens else []
    pending, record, pictures = task + [tok.bos_id], {"template": template, "images": [], "texts": []}, []
    previous, previous_drawn = None, False  # the digit of the image just read (judged when drawn)
    for seg in sample.segments:
        if seg.kind == "image":
            ctx.feed_text(pending + [tok.boi_id])
            previous_drawn, is_named = next(drawn), next(named)
            if previous_drawn:
                rep = ctx.draw()
                picture = model.decode_images(rep[None]).cpu()  # (1, C, H, W)
                previous = int(judge(picture.to(model.device)).argmax(-1))
                if is_named:
                    record["images"].append((seg.label, previous))
            else:
                picture = seg.image[None].float()
                rep = model.encode_images(picture)[0]
                previous = seg.label
            ctx.feed_image(rep)
            pictures.append(picture[0])
            pending = [tok.eoi_id]
        elif previous is not None and WRITES[template]:  # describes the image just read
            ctx.feed_text(pending)
            record["texts"].append((tok.decode(_write(ctx, WRITTEN_MAX)), previous, previous_drawn))
            pending = []
        else:
            pending += tok.encode(seg.text)
    return record, pictures


@torch.no_grad()
def evaluate_interleaved(model, judge, images: torch.Tensor, labels: torch.Tensor, n: int, *, seed: int = 0,
                         cfg_scale=None, steps=None, templates=TEMPLATES) -> dict:
    """n template sequences from (test) images [M, 1, H, W] and labels [M] through the model, scored."""
    check_vocabulary(model)
    samples = build_interleaved(images, labels, n, seed=seed, templates=templates, caption_seed=model.cfg.seed)
    judge = judge.to(model.device).eval()
    records = [run_interleaved(model, judge, s, cfg_scale=cfg_scale, steps=steps, seed=seed + i)[0]
               for i, s in enumerate(samples)]
    return score_interleaved(records)


@torch.no_grad()
def evaluate_edits(model, judge, images: torch.Tensor, labels: torch.Tensor, n: int, *, seed: int = 0,
                   cfg_scale=None, steps=None) -> dict:
    """n exact edit triples from (test) images through the model, scored beside the copy-the-source baseline;
    guidance `cfg_scale`, else generate.EDIT_CFG_SCALE (not the run's: see there)."""
    check_vocabulary(model)
    cfg_scale = EDIT_CFG_SCALE if cfg_scale is None else cfg_scale
    triples = build_edits(images, labels, n, seed=seed)
    outputs = []
    for i, t in enumerate(triples):
        source = model.encode_images(t.source[None])[0]
        g = generate(model, edit_prompt(model, model.tok.encode(t.instruction)), [source], max_tokens=0,
                     cfg_scale=cfg_scale, steps=steps, seed=seed + i)
        outputs.append(model.decode_images(g.images[-1][None]).cpu())
    sources = torch.stack([t.source for t in triples])
    targets = torch.stack([t.target for t in triples])
    scores = score_edits_with_baseline(sources, targets, torch.cat(outputs), [t.instruction for t in triples],
                                       torch.tensor([t.label for t in triples]), judge.eval())
    return {"cfg_scale": cfg_scale, **scores}


# -------------------------------------------------------------------------------------------- `evaluate --mixed`
def mixed_tasks(model, ckpt) -> tuple[str, ...]:
    tasks = parse_tasks(model.cfg.tasks, model.cfg.dataset)
    if tasks == ("caption",):
        raise ConfigError(f"--mixed: {shorten(str(ckpt))} was trained on captions only (--tasks caption); train "
                          f"with --tasks caption,interleaved,edit or --init-from it to score mixed sequences")
    return tasks


def evaluate_mixed_tasks(model, judge, n: int, *, ckpt, seed: int = 0, cfg_scale=None, steps=None) -> dict:
    """`evaluate --mixed N`: N interleaved sequences and N edit triples from the test split, for the tasks the
    run trained (an edit-only fine-tune is not scored on interleaved templates it never saw)."""
    tasks = mixed_tasks(model, ckpt)
    images, labels = load_images(model.cfg.dataset, "test", model.cfg.data_root)
    out = {}
    if "interleaved" in tasks:
        out["interleaved"] = evaluate_interleaved(model, judge, images, labels, n, seed=seed,
                                                  cfg_scale=cfg_scale, steps=steps)
    if "edit" in tasks:
        out["edits"] = evaluate_edits(model, judge, images, labels, n, seed=seed, cfg_scale=cfg_scale,
                                      steps=steps)
    return out


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_mixed(mixed: dict) -> str:
    lines = []
    if "interleaved" in mixed:
        r = mixed["interleaved"]
        lines.append(f"  interleaved: {r['n_sequences']} sequences, image accuracy {r['image_accuracy']:.3f} "
                     f"({r['n_images']} drawn images), text consistency {r['text_consistency']:.3f} "
                     f"({r['n_texts']} written texts; after a drawn image {_fmt(r['text_consistency_after_drawn'])}"
                     f", {r['n_texts_after_drawn']})")
        for t in TEMPLATES:
            a, w = r.get(f"image_accuracy_{t}"), r.get(f"text_consistency_{t}")
            if a is not None or w is not None:
                lines.append(f"    {t:<9} image accuracy {_fmt(a)}  text consistency {_fmt(w)}")
    if "edits" in mixed:
        m, c = mixed["edits"]["model"], mixed["edits"]["copy_source"]
        lines.append(f"  edits (guidance {mixed['edits']['cfg_scale']}): {m['n_edits']} triples, identity kept "
                     f"{m['identity_kept']:.3f} (copy "
                     f"{c['identity_kept']:.3f}), moved as asked {m['moved']:.3f} (copy {c['moved']:.3f}), MSE to "
                     f"target {m['mse']:.4f} (copy {c['mse']:.4f})")
        for ins, r in m.items():
            if isinstance(r, dict):
                lines.append(f"    {ins:<36} n {r['n']:>3}  kept {r['identity_kept']:.2f}  moved {r['moved']:.2f}"
                             f"  mse {r['mse']:.4f} (copy {c[ins]['mse']:.4f})")
    return "\n".join(lines)

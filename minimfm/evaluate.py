"""Evaluation with the judge: does the image show what the prompt asked for, and can the model read images?

Generation is prompted with the captions of real test images (balanced over classes), so each generated
image has a target class AND target attributes. The judge (minimfm/judge.py, a CNN trained on the real
training split) scores the class; the same attribute functions that wrote the training captions
(minimfm/data.py) score the attributes. The Fréchet distance uses judge features and is reported beside the
floor of real training images measured against the same test set with the same number of images, because
the estimate is biased upwards for small sample sizes.

Captions are scored twice: caption accuracy asks only for the class word; caption attribute accuracy asks for the
class AND every attribute the caption names (MNIST thickness and slant, CIFAR-10 brightness and colour) to match
the pixels of the image, measured by the same functions. The caption templates leave an attribute out now and
then ("the digit 7, written bold" says nothing about slant), so an attribute a caption does not name is not
scored, but a caption that names none counts as wrong: it has said nothing checkable beyond the class.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minimfm.data import CaptionedDataset, attributes, class_words, mentioned_attributes
from minimfm.judge import frechet_distance, judge_features


def balanced_indices(labels: torch.Tensor, n: int) -> list[int]:
    """n indices, the first n // classes of each class in dataset order (deterministic, balanced)."""
    classes = int(labels.max()) + 1
    per = max(1, n // classes)
    fewest = int(torch.bincount(labels, minlength=classes).min())
    if n < 1 or per > fewest:
        raise ValueError(f"--n {n}: a class-balanced draw takes 1 to {classes * fewest} of these {len(labels)} images")
    picked = [torch.nonzero(labels == c)[:per, 0] for c in range(classes)]
    return torch.stack(picked, 1).flatten().tolist()[:n]  # interleave classes: 0, 1, ..., 9, 0, 1, ...


def caption_class(caption: str, dataset: str) -> int | None:
    """The class a caption names, or None when it names none or several."""
    words = set(caption.replace(",", " ").split())
    named = {c for c, names in enumerate(class_words(dataset)) if words & set(names)}
    return named.pop() if len(named) == 1 else None


def caption_attributes_right(caption: str, truth: dict[str, str], dataset: str) -> dict[str, bool]:
    """For each attribute the caption names, whether it is the image's own (`truth`, from its pixels)."""
    return {k: v == truth[k] for k, v in mentioned_attributes(caption, dataset).items()}


@torch.no_grad()
def evaluate(model, judge, *, n_samples: int, n_captions: int, cfg_scale: float | None = None,
             steps: int | None = None, seed: int = 0, batch_size: int = 100, verbose: bool = True,
             split: str = "test") -> dict:
    """All metrics of one model as a flat dict (see README "Evaluation" for definitions).

    `split` is where the prompts, the captioned images and the Fréchet reference come from: "test" for every
    reported figure, "validation" (held-out training images, minimfm/data.py) when choosing a recipe (`tune`)."""
    if n_samples < 1 or n_captions < 0 or batch_size < 1:
        raise ValueError(f"evaluate: needs n_samples >= 1, n_captions >= 0, batch_size >= 1; got {n_samples}, "
                         f"{n_captions}, {batch_size}")
    cfg = model.cfg
    test = CaptionedDataset(cfg.dataset, split, cfg.data_root, seed=cfg.seed)
    judge = judge.to(model.device)
    sample_kwargs = {} if steps is None else {"steps": steps}

    # --- text-to-image: prompted with real test captions
    idx = balanced_indices(test.labels, n_samples)
    prompts = [test.caption(i) for i in idx]
    images, nfe, seconds = [], 0, 0.0
    for start in tqdm(range(0, len(idx), batch_size), desc="generating", disable=not verbose, leave=False):
        chunk = prompts[start:start + batch_size]
        tick = time.time()
        images.append(model.generate_images(chunk, cfg_scale=cfg_scale, seed=seed + start, **sample_kwargs).cpu())
        seconds += time.time() - tick
        nfe = model.last_nfe
    images = torch.cat(images)
    target = test.labels[idx]
    predicted = judge(images.to(model.device)).argmax(-1).cpu()
    got = attributes(cfg.dataset, images)
    # score only the attributes each prompt names (its template may leave some out); they equal the source image's
    want = [mentioned_attributes(p, cfg.dataset) for p in prompts]
    keys = list(test.attributes[0])
    per_attr = {}
    for k in keys:
        asked = [(g[k], w[k]) for g, w in zip(got, want) if k in w]
        per_attr[k] = sum(a == b for a, b in asked) / max(1, len(asked))

    # --- Fréchet distance in judge feature space, and the real-data floor at the same sample size
    test_feats = judge_features(judge, test.images.to(model.device)).cpu()
    gen_feats = judge_features(judge, images.to(model.device)).cpu()
    from minimfm.data import load_images
    train_images, train_labels = load_images(cfg.dataset, "train", cfg.data_root)
    # class-balanced like the generated set: ImageFolder (CIFAR-10) stores the split sorted by class
    floor_idx = balanced_indices(train_labels, len(images))
    floor_feats = judge_features(judge, train_images[floor_idx].to(model.device)).cpu()

    # --- image-to-text: caption real test images, and perplexity of their true captions (n_captions=0 skips)
    cap_idx = balanced_indices(test.labels, n_captions) if n_captions else []
    correct, all_right, nll, count, examples = 0, 0, 0.0, 0, []
    named = {k: [] for k in keys}  # per attribute: right or wrong, over the captions that name it
    for start in tqdm(range(0, len(cap_idx), batch_size), desc="captioning", disable=not verbose, leave=False):
        chunk = cap_idx[start:start + batch_size]
        rep = model.encode_images(test.images[chunk])
        texts = [model.tok.decode(ids) for ids in model.caption_ids(rep)]
        for t, i in zip(texts, chunk):
            class_right = caption_class(t, cfg.dataset) == int(test.labels[i])
            right = caption_attributes_right(t, test.attributes[i], cfg.dataset)
            for k, ok in right.items():
                named[k].append(ok)
            correct += class_right
            all_right += class_right and bool(right) and all(right.values())
        s, c = model.caption_nll(rep, [model.tok.encode(test.caption(i)) for i in chunk])
        nll, count = nll + float(s.sum()), count + int(c.sum())
        examples += [(test.caption(i), t) for i, t in zip(chunk[:2], texts[:2])]

    return {
        "mode": model.mode, "dataset": cfg.dataset,
        "cfg_scale": cfg.cfg_scale if cfg_scale is None else cfg_scale,
        "steps": steps if steps is not None else getattr(model, "default_steps", None),
        "n_samples": len(idx), "n_captions": len(cap_idx),
        "prompted_accuracy": float((predicted == target).float().mean()),
        "attribute_match": sum(per_attr.values()) / len(per_attr),
        **{f"attribute_match_{k}": v for k, v in per_attr.items()},
        "frechet_distance": frechet_distance(gen_feats, test_feats),
        "frechet_floor": frechet_distance(floor_feats, test_feats),
        "caption_accuracy": correct / len(cap_idx) if cap_idx else None,
        "caption_attribute_accuracy": all_right / len(cap_idx) if cap_idx else None,
        **{f"caption_attribute_accuracy_{k}": sum(v) / len(v) if v else None for k, v in named.items()},
        "caption_perplexity": float(torch.tensor(nll / count).exp()) if cap_idx else None,
        "nfe_per_image": nfe,
        "seconds_per_image": seconds / len(idx),
        "caption_examples": examples[:6],
    }


def prefix_caption_logits(model, captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A multimodal model's (B, P, V) logits and (B, P) text targets over the caption of a text-to-image sequence:
    the positions up to [BOI], which (causal) never see the image. This is the prompt the samplers read."""
    batch = model.pack(captions, torch.ones(len(captions), dtype=torch.bool))
    P = model.layout.prompt_length()
    h = model.transformer(model.text_emb(batch.tokens[:, :P]), model.mask(batch.modality)[:, :P, :P],
                          batch.positions[:, :P])  # (B, P, D)
    return model.text_head(h), batch.text_targets[:, :P]


@torch.no_grad()
def text_perplexity(model, n_captions: int, batch_size: int = 500) -> float:
    """Held-out caption perplexity with no image in sight: the text metric of Transfusion §4.2 (there on C4 and
    Wikipedia), here on `n_captions` class-balanced test captions (drawn with the run's seed).

    Every model scores the same tokens: the caption WORDS, each given [BOS] and the words before it. A multimodal
    model reads the caption as the prefix of a text-to-image sequence (causal, so it cannot see the image that
    follows); the text-only baseline (minimfm/text_only.py) reads `[BOS] caption`. Each word's probability is
    renormalised over the caption words, special tokens left out: after [BOS] a multimodal model also expects
    [BOI] (every image-to-text row and every dropped caption starts `[BOS] [BOI]`), and a caption ends in [BOI]
    in one format and [EOS] in the other. Neither is text the two kinds of model share, so neither is scored or
    allowed to take probability mass from the words.
    """
    from minimfm.tokenizers.text import SPECIAL_TOKENS
    if n_captions < 1 or batch_size < 1:
        raise ValueError(f"text_perplexity: needs n_captions >= 1 and batch_size >= 1, got {n_captions}, {batch_size}")
    cfg, special = model.cfg, len(SPECIAL_TOKENS)  # ids 0..7 are the special tokens (TextTokenizer)
    test = CaptionedDataset(cfg.dataset, "test", cfg.data_root, seed=cfg.seed)
    captions = [model.tok.encode(test.caption(i)) for i in balanced_indices(test.labels, n_captions)]
    forward = getattr(model, "caption_logits", None) or (lambda ids: prefix_caption_logits(model, ids))
    nll, count = 0.0, 0
    for start in range(0, len(captions), batch_size):
        logits, targets = forward(captions[start:start + batch_size])  # (B, T, V), (B, T)
        scored = targets >= special  # caption words only (IGNORE is negative)
        logits = logits[scored].float()  # (n, V)
        logits[:, :special] = float("-inf")
        nll += float(F.cross_entropy(logits, targets[scored], reduction="sum"))
        count += int(scored.sum())
    return float(torch.tensor(nll / count).exp())


def format_results(r: dict) -> str:
    def num(key: str, fmt: str) -> str:
        return "not measured" if r.get(key) is None else format(r[key], fmt)
    rows = [("prompted accuracy (judge)", f"{r['prompted_accuracy']:.3f}"),
            ("attribute match", f"{r['attribute_match']:.3f}"),
            ("Fréchet distance (judge feats)", f"{r['frechet_distance']:.2f}  (real-data floor {r['frechet_floor']:.2f})"),
            ("caption accuracy (class word)", num("caption_accuracy", ".3f")),
            ("caption accuracy (+ attributes)", num("caption_attribute_accuracy", ".3f")),
            ("caption perplexity", num("caption_perplexity", ".3f")),
            ("function evaluations / image", f"{r['nfe_per_image']}"),
            ("seconds / image (generation)", f"{r['seconds_per_image']:.4f}")]
    head = f"{r['mode']} on {r['dataset']}: {r['n_samples']} images (cfg scale {r['cfg_scale']}), " \
           f"{r['n_captions']} captions"
    return "\n".join([head] + [f"  {k:<32} {v}" for k, v in rows])

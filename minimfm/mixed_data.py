"""Mixed-modal training batches: captions, interleaved text and images, and instruction edits in one batch
(Transfusion §2: "a sequence of text and images"; §4.3: editing learnt from ~8k (image, instruction, edited
image) examples; Show-o's mixed-modality tasks).

Every example becomes a row of segments (minimfm/segments.py) plus its images in reading order, each marked
GENERATED (noised over the whole schedule, masked: what the model learns to draw) or READ (context, the
image-to-text treatment: clean for masked modelling, at most half the noise for diffusion):

    caption      [T2I] [BOS] a bold three [BOI] ▣ [EOI] [EOS]            the image generated
                 [MMU] [BOS] [BOI] ▢ [EOI] a bold three [EOS]            the image read
    interleaved  [BOS] a three, [BOI] ▣ [EOI] then a seven [BOI] ▣ ...   per template (interleaved.LEARNED)
    edit         [T2I] [BOS] make it bolder [BOI] ▢ [EOI] [BOI] ▣ [EOI] [EOS]   source read, target generated

(task tokens only for the modes that use them: [T2I] when the row generates an image, else [MMU]). The edit row
puts its instruction first so that no two tasks open alike: the "captions" template opens with an image, and an
edit row that opened with its source image too left the model unable to tell, after that image, what to write
(the first mixed run wrote instructions where a caption belonged). Rows of a step are split among the tasks in
the shares --task-weights gives (equal by default), each task walking its own seeded permutation, and every draw
comes from the step's generator: like train.TrainingData, a batch is a function of (seed, step), so resumed runs
stay exact. Each micro-batch is packed ragged on its own (its longest row sets T).

Images are encoded once, like train.TrainingData: the split (captions, interleaved digits and edit sources are
all split images, found by index) and then the edit targets; a row holds indices into that table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minimfm.config import Config, ConfigError, parse_task_weights, parse_tasks
from minimfm.data import CaptionedDataset
from minimfm.edits import build_edits
from minimfm.interleaved import LEARNED, Interleaved, build_interleaved, mixed_vocabulary
from minimfm.segments import IMAGE, SegmentBatch, Segments, pack, wrap
from minimfm.tokenizers.text import TextTokenizer

@dataclass
class Example:
    """One row before packing: `parts` as segments.wrap takes them (word-id lists and IMAGE), `images` the
    encoded-table row of each image in reading order, `generate` per image: generated (True) or read."""
    parts: list
    images: list[int]
    generate: list[bool]

    def segments(self, tok: TextTokenizer, task_tokens: bool) -> Segments:
        task = None if not task_tokens else tok.t2i_id if any(self.generate) else tok.mmu_id
        return wrap(self.parts, tok, task=task)


def text_tokenizer(cfg: Config) -> TextTokenizer:
    """The caption vocabulary for --tasks caption (today's checkpoints), the mixed one (caption words first,
    then the instruction and template words) as soon as interleaved or edit rows are read."""
    if parse_tasks(cfg.tasks, cfg.dataset) == ("caption",):
        return TextTokenizer.for_dataset(cfg.dataset)
    return TextTokenizer(mixed_vocabulary(cfg.dataset))


def caption_example(caption: list[int], index: int, t2i: bool) -> Example:
    """sequence.pack's two orders as an example: the caption then its image (generated), or the reverse (read)."""
    return Example([caption, IMAGE] if t2i else [IMAGE, caption], [index], [t2i])


def interleaved_example(sample: Interleaved, tok: TextTokenizer) -> Example:
    """An interleaved.Interleaved sample; its images are split images, found by their `index`."""
    parts, images = [], []
    for seg in sample.segments:
        if seg.kind == "image":
            parts.append(IMAGE)
            images.append(seg.index)
        else:
            parts.append(tok.encode(seg.text))
    return Example(parts, images, list(LEARNED[sample.template]))  # drawn in training (interleaved.LEARNED)


def edit_example(instruction: list[int], source: int, target: int) -> Example:
    """The instruction, the source image (read), the edited image (generated); instruction first (module doc)."""
    return Example([instruction, IMAGE, IMAGE], [source, target], [False, True])


def walk(step: int, per_step: int, n: int, seed: int) -> list[int]:
    """`per_step` indices for step `step`, walking seeded per-epoch permutations of range(n) (train.batch_indices
    for one task's share of the rows): a function of the step only."""
    idx, pos = [], step * per_step
    while len(idx) < per_step:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        take = perm[offset:offset + per_step - len(idx)].tolist()
        idx += take
        pos += len(take)
    return idx


@dataclass
class MixedBatch:
    """One step's rows, not yet packed: micro-batches slice rows, then pack (MixedTrainingData.micro_batch)."""
    rows: list[Segments]
    images: list[list[int]]     # per row: encoded-table index of each image
    generate: list[list[bool]]  # per row: each image generated or read
    flush_right: list[bool]     # caption rows in the text-to-image order end flush right, as sequence.pack


class MixedTrainingData:
    """The tasks' examples and every image they use, encoded once with the model's frozen image tokenizer."""

    def __init__(self, cfg: Config, model, verbose: bool = True):
        self.tasks = parse_tasks(cfg.tasks, cfg.dataset)
        # rows cycle through this pattern (weights 1,1,2: caption, interleaved, edit, edit), so a micro-batch of
        # consecutive rows keeps the mix; equal weights give the plain cycle of earlier runs (resumes stay exact)
        weights = parse_task_weights(cfg.task_weights, self.tasks)
        self.pattern = [task for task, w in zip(self.tasks, weights) for _ in range(w)]
        self.tok, self.n_image, self.task_tokens = model.tok, model.n_image, model.task_tokens
        missing = [w for w in mixed_vocabulary(cfg.dataset) if w not in self.tok.index]
        if missing and self.tasks != ("caption",):
            raise ConfigError(f"--tasks {cfg.tasks}: the model's vocabulary lacks '{missing[0]}' (build it with "
                              f"mixed_data.text_tokenizer, or grow it: finetune.grow_vocabulary)")
        ds = CaptionedDataset(cfg.dataset, "train", cfg.data_root, seed=cfg.seed, limit=cfg.limit_train or None)
        images, labels = ds.images, ds.labels
        self.examples: dict[str, list[Example]] = {}
        if "caption" in self.tasks:
            self.captions = [self.tok.encode(ds.caption(i)) for i in range(len(ds))]
            self.examples["caption"] = []  # built per step: the order and the caption dropout are drawn then
        if "interleaved" in self.tasks:
            samples = build_interleaved(images, labels, cfg.task_examples, seed=cfg.seed, caption_seed=cfg.seed)
            self.examples["interleaved"] = [interleaved_example(s, self.tok) for s in samples]
        targets = images[:0]
        if "edit" in self.tasks:
            try:
                triples = build_edits(images, labels, cfg.task_examples, seed=cfg.seed)
            except ValueError as e:
                raise ConfigError(f"--task-examples {cfg.task_examples}: {e} (fewer examples, or a larger "
                                  f"--limit-train)") from None
            targets = torch.stack([t.target for t in triples])  # (n, 1, H, W) exact edits of split images
            self.examples["edit"] = [edit_example(self.tok.encode(t.instruction), t.index, len(images) + i)
                                     for i, t in enumerate(triples)]
        reps = []
        with torch.no_grad():
            for chunk in tqdm(torch.cat([images, targets.to(images.dtype)]).split(1000), desc="encoding images",
                              disable=not verbose, leave=False):
                reps.append(model.encode_images(chunk).cpu())
        self.reps = torch.cat(reps)  # (n_split + n_edits, N) codes or (..., N, d) latents
        self.n_split = len(images)

    def __len__(self) -> int:
        return self.n_split

    def batch(self, step: int, cfg: Config) -> tuple[MixedBatch, torch.Generator]:
        """Step `step`'s rows (row r does task pattern[r mod len(pattern)]) and the step's generator, as
        train.TrainingData.batch."""
        B = cfg.batch_size
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        t2i = (torch.rand(B, generator=g) < cfg.t2i_ratio).tolist()  # drawn for every row: the stream does not
        drop = (torch.rand(B, generator=g) < cfg.caption_dropout).tolist()  # depend on the task mix
        task_of = [self.pattern[r % len(self.pattern)] for r in range(B)]
        picked = {}
        for k, task in enumerate(self.tasks):
            n = len(self.captions) if task == "caption" else len(self.examples[task])
            picked[task] = iter(walk(step, task_of.count(task), n, cfg.seed + 104729 * k))
        rows, images, generate, right = [], [], [], []
        for r, task in enumerate(task_of):
            i = next(picked[task])
            if task == "caption":  # a dropped caption is empty: the unconditional model, for guidance
                ex = caption_example([] if (drop[r] and t2i[r]) else self.captions[i], i, t2i[r])
            else:
                ex = self.examples[task][i]
            rows.append(ex.segments(self.tok, self.task_tokens))
            images.append(ex.images)
            generate.append(ex.generate)
            right.append(task == "caption" and t2i[r])
        return MixedBatch(rows, images, generate, right), g

    def micro_batch(self, inputs: list, a: int, b: int, device
                    ) -> tuple[SegmentBatch, torch.Tensor, torch.Tensor]:
        """Rows [a, b) of a step packed for the model's forward: (SegmentBatch, reps (M, N[, d]), generate (M,))."""
        mb: MixedBatch = inputs[0]
        batch = pack(mb.rows[a:b], self.tok, self.n_image, flush_right=mb.flush_right[a:b])
        index = torch.tensor([i for row in mb.images[a:b] for i in row], dtype=torch.long)
        generate = torch.tensor([f for row in mb.generate[a:b] for f in row], dtype=torch.bool)
        return batch.to(device), self.reps[index.to(self.reps.device)], generate


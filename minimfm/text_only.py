"""The text-only baseline of claim (f): the same transformer, trained on the same captions, never shown an image.

Transfusion §4.2 compares text perplexity at equal compute and finds Chameleon (discrete image tokens in the same
sequence) behind Transfusion (continuous images, diffusion loss): images cost the text side less when they are not
tokens competing with words. To say how much images cost at all, the claim needs the model that saw none: the same
width, depth, heads, optimiser, learning-rate schedule, batch size, step count and data order (step s reads the
captions of `train.batch_indices(s)`, exactly the rows every multimodal run of that seed reads), each row packed as

    [BOS] caption [EOS] [PAD]…          (right-padded, causal attention)

It is its own small module, not a mode: there is no image tokenizer, layout or sampler, and a Config switch would
reach into every mode. The loop is train.py's, cut down to what text needs (no image encoding, no samples); it is
not resumable mid-run, because a text-only step costs a small fraction of a multimodal one (a sequence of L + 2
positions instead of L + N + 4).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from minimfm.checkpoint import load_checkpoint, save_atomic, write_text_atomic
from minimfm.config import Config
from minimfm.sequence import IGNORE
from minimfm.tokenizers.text import TextTokenizer
from minimfm.transformer import Transformer, init_weights


class TextOnlyModel(nn.Module):
    """Text embedding + the shared Transformer + text head: MultimodalModel's text side, nothing else."""

    mode = "text-only"

    def __init__(self, cfg: Config, tok: TextTokenizer, max_text_len: int):
        super().__init__()
        self.cfg, self.tok, self.max_text_len = cfg, tok, max_text_len
        self.layout = SimpleNamespace(length=max_text_len + 2)  # [BOS] caption [EOS]: what flops.step_flops reads
        D = cfg.d_model
        self.text_emb = nn.Embedding(len(tok), D)
        self.transformer = Transformer(D, cfg.n_layer, cfg.n_head, cfg.mlp_ratio, cfg.dropout)
        self.text_head = nn.Linear(D, len(tok), bias=False)
        for m in (self.text_emb, self.text_head):
            init_weights(m)

    @property
    def device(self) -> torch.device:
        return self.text_emb.weight.device

    def extra_step_flops(self, batch_size: int) -> float:
        return 0.0  # no per-token head that runs more than once

    def pack(self, captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) tokens `[BOS] caption [EOS] [PAD]…` and (B, T) next-token targets (IGNORE after [EOS])."""
        T, tok = self.layout.length, self.tok
        tokens = torch.full((len(captions), T), tok.pad_id, dtype=torch.long)
        targets = torch.full((len(captions), T), IGNORE, dtype=torch.long)
        for b, ids in enumerate(captions):
            if len(ids) > self.max_text_len:
                raise ValueError(f"caption of {len(ids)} tokens does not fit max_text_len={self.max_text_len}")
            seq = [tok.bos_id] + list(ids) + [tok.eos_id]
            tokens[b, :len(seq)] = torch.tensor(seq)
            targets[b, :len(seq) - 1] = torch.tensor(seq[1:])
        return tokens.to(self.device), targets.to(self.device)

    def caption_logits(self, captions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits and (B, T) targets: what evaluate.text_perplexity scores."""
        tokens, targets = self.pack(captions)
        T = tokens.shape[1]
        # right padding: a causal mask alone keeps every real token from seeing a [PAD] key
        causal = torch.ones(T, T, dtype=torch.bool, device=self.device).tril().expand(len(captions), T, T)
        positions = torch.arange(T, device=self.device).expand(len(captions), T)
        return self.text_head(self.transformer(self.text_emb(tokens), causal, positions)), targets

    def forward(self, captions: list[list[int]]) -> torch.Tensor:
        logits, targets = self.caption_logits(captions)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


def build_text_only(cfg: Config) -> TextOnlyModel:
    from minimfm.runs import caption_room
    return TextOnlyModel(cfg, TextTokenizer.for_dataset(cfg.dataset), caption_room(cfg.dataset))


def train_text_only(cfg: Config, verbose: bool = True) -> Path:
    """Train the text-only baseline for cfg.max_steps into runs_dir / cfg.name; a finished run is left as it is."""
    from tqdm.auto import tqdm

    from minimfm.data import CaptionedDataset
    from minimfm.runs import select_device
    from minimfm.train import EMA, batch_indices, check_finite, lr_at, make_optimizer, run_folder
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = run_folder(cfg)
    ckpt_path = run / "ckpt.pt"
    if ckpt_path.is_file() and load_checkpoint(ckpt_path, kind="text_only")["step"] == cfg.max_steps:
        return run
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the same init seed as a multimodal run of this seed (its text side differs anyway)
    model = build_text_only(cfg).to(device)
    ds = CaptionedDataset(cfg.dataset, "train", cfg.data_root, seed=cfg.seed, limit=cfg.limit_train or None)
    captions = [model.tok.encode(ds.caption(i)) for i in range(len(ds))]
    optimizer = make_optimizer(model, cfg, device)
    ema = EMA(model, cfg.ema) if cfg.ema else None
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps({**cfg.to_dict(), "text_only": True}, indent=2), run / "config.json")
    rows, seconds = [], 0.0
    model.train()
    for step in tqdm(range(cfg.max_steps), desc=f"text-only {cfg.dataset}", disable=not verbose):
        tick = time.time()
        idx = batch_indices(step, cfg, len(captions))  # the rows every multimodal run of this seed reads at step
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout, if any, is a function of the step (as train.py)
        optimizer.zero_grad(set_to_none=True)
        loss = model([captions[i] for i in idx.tolist()])
        loss.backward()
        logs = {"loss": loss.item()}
        if cfg.grad_clip:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        check_finite(logs, step + 1, "no checkpoint had been written yet")
        optimizer.step()
        if ema is not None:
            ema.update(model)
        seconds += time.time() - tick
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            rows.append({"step": step + 1, "lr": lr_at(step, cfg), "text_loss": logs["loss"], **logs})
    write_text_atomic("".join(json.dumps(r) + "\n" for r in rows), run / "metrics.jsonl")
    save_atomic({"kind": "text_only", "dataset": cfg.dataset, "config": cfg.to_dict(),
                 "text_tokenizer": model.tok.state_dict(), "max_text_len": model.max_text_len,
                 "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                 "step": cfg.max_steps, "train_seconds": seconds}, ckpt_path)
    return run


def load_text_only(path: str | Path, device: torch.device | str = "cpu") -> TextOnlyModel:
    """The text-only model a checkpoint holds (its EMA weights when it has them), in eval mode."""
    from minimfm.runs import load_weights
    ckpt = load_checkpoint(path, kind="text_only")
    cfg = Config.from_dict(ckpt["config"])
    model = TextOnlyModel(cfg, TextTokenizer.from_state_dict(ckpt["text_tokenizer"]), ckpt["max_text_len"])
    load_weights(model, ckpt["model"], f"the weights in {path}")
    if ckpt.get("ema"):
        for name, p in model.named_parameters():
            if name in ckpt["ema"]:
                p.data.copy_(ckpt["ema"][name])
    return model.to(device).eval()

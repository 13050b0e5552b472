"""Fine-tuning a trained model on new tasks (Transfusion §4.3: a pretrained model learns image editing from a
fine-tune on ~8k edit examples), which first needs words the base model never saw.

The base model's text vocabulary is the caption words; instructions and the interleaved templates add a few more
(`interleaved.mixed_vocabulary`, versioned, appended after the caption words). Growing the vocabulary appends
rows to the text embedding and the text head and copies the old rows, so every existing id means what it meant:

    text_emb.weight   (V, D) -> (V + n, D)    rows [0, V) copied, rows [V, V + n) freshly initialised (N(0, 0.02))
    text_head.weight  (V, D) -> (V + n, D)    the same: old tokens keep their logits exactly

The softmax over the larger vocabulary does change a little (the new words' small logits take some mass), which
the fine-tune then teaches. `train --init-from CKPT --tasks edit` (or caption,interleaved,edit) starts a new run
from a base checkpoint this way.
"""
from __future__ import annotations

import torch

from minimfm.checkpoint import CheckpointError, load_checkpoint
from minimfm.runs import build_model, check_model_checkpoint, load_weights, model_from_checkpoint
from minimfm.tokenizers.text import TextTokenizer

TEXT_ROWS = ("text_emb.weight", "text_head.weight")  # the only tensors with one row per text token


def grow_vocabulary(model, tok: TextTokenizer):
    """A copy of `model` reading and writing `tok`'s words: `tok` must extend the model's vocabulary (its old
    words first, in order), so existing ids are unchanged; new rows of the text embedding and head come from a
    fresh initialisation (the global torch RNG), every other weight is copied."""
    old = model.tok.vocab
    if tok.vocab[:len(old)] != old:
        first = next(i for i, word in enumerate(old) if i >= len(tok) or tok.vocab[i] != word)
        now = f"'{tok.vocab[first]}'" if first < len(tok) else "missing"
        raise ValueError(f"the new vocabulary does not extend the model's: id {first} is {now}, was '{old[first]}'")
    grown = build_model(model.cfg, model.image_tokenizer, tok, model.layout.max_text_len).to(model.device)
    state = model.state_dict()
    for name in TEXT_ROWS:
        rows = grown.state_dict()[name].clone()  # (V + n, D): new rows keep their fresh init
        rows[:len(old)] = state[name]
        state[name] = rows
    grown.load_state_dict(state)
    return grown.train(model.training)


def init_from(model, path: str) -> None:
    """Load a base checkpoint's weights (its EMA when it has one) into `model`, growing the base's vocabulary to
    the model's. The mode, the architecture and the image tokenizer must be the same; one-line errors if not."""
    ckpt = check_model_checkpoint(load_checkpoint(path, kind="model", dataset=model.cfg.dataset), path)
    if ckpt["mode"] != model.mode:
        raise CheckpointError(f"--init-from {path} is a '{ckpt['mode']}' model, this run trains '{model.mode}'")
    base = model_from_checkpoint(ckpt, model.device)
    if model.tok.vocab[:len(base.tok)] != base.tok.vocab:
        raise CheckpointError(f"--init-from {path}: its vocabulary ({len(base.tok)} words) is not a prefix of "
                              f"this run's ({len(model.tok)}); fine-tune with the tasks it was trained with or more")
    ours, theirs = model.image_tokenizer.state_dict(), base.image_tokenizer.state_dict()
    if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k].to(ours[k].device)) for k in ours):
        raise CheckpointError(f"--init-from {path} was trained with another image tokenizer; use the same "
                              f"tokenizer settings (--latent-kind, --quantizer, --vq-codebook-size, ...)")
    load_weights(model, grow_vocabulary(base, model.tok).state_dict(), f"--init-from: the weights in {path}")

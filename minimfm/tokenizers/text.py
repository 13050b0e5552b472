"""Word-level text tokenizer over the caption grammar, plus the special tokens every mode needs.

Captions come from a small grammar (see minimfm/data.py), so a word-level vocabulary of a few dozen words is
exact: no sub-word merges to learn and every token is readable in a printout. A word outside the grammar is an
error that names the word and the closest known words: silently mapping it to [UNK] would produce an
unconditional image that looks like a model failure.
"""
from __future__ import annotations

import difflib

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[BOI]", "[EOI]", "[MASK]", "[T2I]", "[MMU]")


class UnknownWordError(ValueError):
    """A prompt contains a word the model never saw."""


class TextTokenizer:
    """Maps caption words to ids and back. Ids 0..7 are the special tokens, in SPECIAL_TOKENS order.

    [PAD] fills unused positions; [BOS]/[EOS] bound a sequence; [BOI]/[EOI] bound an image span (Chameleon,
    Transfusion); [MASK] is the masked mode's placeholder; [T2I]/[MMU] are Show-o's task tokens
    (text-to-image, multimodal understanding).
    """

    def __init__(self, words: list[str]):
        clash = [w for w in words if w in SPECIAL_TOKENS]
        if clash:
            raise ValueError(f"caption words may not be special tokens: {clash}")
        self.vocab = list(SPECIAL_TOKENS) + list(dict.fromkeys(words))
        self.index = {w: i for i, w in enumerate(self.vocab)}
        for name in SPECIAL_TOKENS:  # tok.pad_id, tok.bos_id, ... tok.mmu_id
            setattr(self, name.strip("[]").lower() + "_id", self.index[name])

    @classmethod
    def for_dataset(cls, dataset: str) -> "TextTokenizer":
        from minimfm.data import caption_vocabulary
        return cls(caption_vocabulary(dataset))

    def __len__(self) -> int:
        return len(self.vocab)

    @staticmethod
    def split(text: str) -> list[str]:
        """Lower-case words, with commas as their own token ("seven, thin" -> seven , thin)."""
        return text.lower().replace(",", " , ").split()

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in self.split(text):
            if word not in self.index:
                known = [w for w in self.vocab if w not in SPECIAL_TOKENS]
                close = difflib.get_close_matches(word, known, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise UnknownWordError(f"unknown word '{word}' in prompt '{text}'{hint} "
                                       f"(known words: {' '.join(sorted(known))})")
            ids.append(self.index[word])
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        words = [self.vocab[int(i)] for i in ids]
        if skip_special:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words).replace(" ,", ",")

    def state_dict(self) -> dict:
        """Plain data, stored inside model checkpoints so a model always travels with its vocabulary."""
        return {"vocab": self.vocab}

    @classmethod
    def from_state_dict(cls, state: dict) -> "TextTokenizer":
        vocab = state["vocab"]
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError("tokenizer state does not start with minimfm's special tokens")
        return cls(vocab[len(SPECIAL_TOKENS):])

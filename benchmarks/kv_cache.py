"""How much does a KV cache buy when decoding an image token by token (Chameleon-style)?

A random transformer with an embedding table and output head reads a 12-token "caption", then greedily
decodes 49 image tokens (a 7x7 code grid) twice: (a) with a KVCache, feeding only the newest token
each step, and (b) recomputing the whole sequence every step. Both must produce the same tokens.
`--batch` decodes B sequences at once; several values print one line each.

    python benchmarks/kv_cache.py [--d-model 128 --n-layer 4 --n-head 4 --repeats 3 --threads 2 --batch 1 32]

Recomputing does ~29x the matmul work here (1,764 token-forwards against 60), but at this size and
batch 1 each step is a few tiny matmuls, so per-call overhead dominates and the measured speed-up is
much smaller. It grows with batch (the overhead is paid once per step for all B rows), d_model and
sequence length.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from minimfm.masks import causal_mask  # noqa: E402
from minimfm.transformer import KVCache, Transformer, init_weights  # noqa: E402

PREFIX, NEW, VOCAB = 12, 49, 512


class TinyLM(nn.Module):
    """Embedding -> Transformer -> linear head: just enough around the transformer to decode tokens."""

    def __init__(self, d_model: int, n_layer: int, n_head: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.transformer = Transformer(d_model, n_layer, n_head)
        self.head = nn.Linear(d_model, VOCAB, bias=False)
        init_weights(self.embed)
        init_weights(self.head)

    def forward(self, tokens, mask, positions, cache=None):
        return self.head(self.transformer(self.embed(tokens), mask, positions, cache=cache))


def decode_with_cache(model, prefix, mask):
    T0 = prefix.shape[1]
    cache = KVCache(len(model.transformer.blocks))
    positions = torch.arange(T0 + NEW).expand(prefix.shape[0], -1)  # (B, T)
    logits = model(prefix, mask[:, :T0, :T0], positions[:, :T0], cache=cache)
    out = []
    for t in range(T0, T0 + NEW):
        token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(token)
        if t < T0 + NEW - 1:  # the last token needs no forward pass
            logits = model(token, mask[:, t:t + 1, :t + 1], positions[:, t:t + 1], cache=cache)
    return torch.cat(out, dim=1)


def decode_without_cache(model, prefix, mask):
    tokens = prefix
    positions = torch.arange(PREFIX + NEW).expand(prefix.shape[0], -1)  # (B, T)
    for _ in range(NEW):
        T = tokens.shape[1]
        logits = model(tokens, mask[:, :T, :T], positions[:, :T])
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[:, PREFIX:]


def timed(fns, args, repeats: int):
    """Median seconds per decoder. Runs alternate, so a burst of load from a neighbour hits both."""
    results = [fn(*args) for fn in fns]  # warm-up: first-call allocations and kernel selection
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn(*args)
            ts.append(time.perf_counter() - start)
    return results, [statistics.median(ts) for ts in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (default 2, the cores of the reference machine); 0 = torch's choice")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], metavar="B",
                        help="sequences decoded at once; several values measure each (e.g. --batch 1 8 32)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = TinyLM(args.d_model, args.n_layer, args.n_head).eval()
    for B in args.batch:
        prefix = torch.randint(VOCAB, (B, PREFIX), generator=torch.Generator().manual_seed(B))
        # caption is text (0), the 49 codes are image 1; Chameleon reads both causally
        modality = torch.tensor([[0] * PREFIX + [1] * NEW]).expand(B, -1)  # (B, T)
        mask = causal_mask(modality)  # built once, sliced per step by both decoders
        with torch.inference_mode():
            (cached, full), (t_cache, t_full) = timed([decode_with_cache, decode_without_cache],
                                                      (model, prefix, mask), repeats=args.repeats)
        if not torch.equal(cached, full):
            row, first = (cached != full).nonzero()[0].tolist()
            sys.exit(f"MISMATCH at batch {B}: cached and full decoding differ first at row {row}, "
                     f"image token {first}")
        # throughput counts every row: B sequences of NEW tokens per decode
        rate_cache, rate_full = B * NEW / t_cache, B * NEW / t_full
        print(f"batch {B:>3}: KV cache {rate_cache:.0f} tok/s   no cache {rate_full:.0f} tok/s   "
              f"speed-up {rate_cache / rate_full:.1f}x ({NEW} tokens after a {PREFIX}-token prefix, "
              f"d_model={args.d_model}, n_layer={args.n_layer}, torch threads={torch.get_num_threads()})",
              flush=True)


if __name__ == "__main__":
    main()

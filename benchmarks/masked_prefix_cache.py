"""What does caching the caption once save in MaskGIT decoding (masked mode)?

Show-o recomputes the whole sequence, caption included, at each of the T steps. Under the omni mask the caption
never attends to the image, so its keys/values are the same every step: minimfm computes them once and each step
feeds only the N image positions. This script times both on a random-weight masked model with the tiny preset's
shape (untrained weights change nothing about the cost) and checks they produce the same codes.

    python benchmarks/masked_prefix_cache.py [--preset tiny --steps 8 --batch 10 --cfg-scale 3 --repeats 3]

The saving is bounded by the prompt's share of the sequence: with MNIST's prompt of P = 11 positions
([PAD]… [T2I] [BOS] caption [BOI]) and N = 49 codes, a step processes 49 instead of 60 positions as queries,
so expect a modest speed-up here (it grows with longer prompts, e.g. interleaved documents).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from minimfm.config import make_config  # noqa: E402
from minimfm.data import prompt_for  # noqa: E402
from minimfm.runs import build_model  # noqa: E402
from minimfm.tokenizers.vq import VQTokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="T, MaskGIT decoding steps")
    parser.add_argument("--batch", type=int, default=10, help="prompts per sample_images call")
    parser.add_argument("--cfg-scale", type=float, default=3.0, help="guidance scale (0 = no unconditional rows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is steadier on a busy shared machine")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = make_config(args.preset, mode="masked")
    torch.manual_seed(0)
    vq = VQTokenizer(1, codebook_size=cfg.vq_codebook_size, code_dim=cfg.vq_code_dim)
    model = build_model(cfg, vq).to(args.device).eval()
    prompts = model.encode_prompts([prompt_for(cfg.dataset, c % 10) for c in range(args.batch)])

    def run(use_cache: bool) -> torch.Tensor:
        generator = torch.Generator(args.device).manual_seed(0)
        codes, _ = model.sample_images(prompts, cfg_scale=args.cfg_scale, generator=generator, steps=args.steps,
                                       use_cache=use_cache)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return codes

    results = [run(True), run(False)]  # warm-up: first-call allocations and kernel selection
    if not torch.equal(*results):
        sys.exit("MISMATCH: cached and recomputed prefixes decode different codes")
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for use_cache in (True, False):  # alternate, so a burst of load from a neighbour hits both
            start = time.perf_counter()
            run(use_cache)
            times[use_cache].append(time.perf_counter() - start)
    cached, full = (statistics.median(times[k]) / args.batch for k in (True, False))
    P, N = model.layout.prompt_length(), model.n_image
    print(f"prefix cache: {cached:.4f} s/image   recompute: {full:.4f} s/image   "
          f"speed-up {full / cached:.2f}x (T={args.steps}, prompt {P} + image {N} positions, batch {args.batch}, "
          f"cfg {args.cfg_scale}, d_model={cfg.d_model}, n_layer={cfg.n_layer}, device {args.device}, "
          f"torch threads={torch.get_num_threads()})")


if __name__ == "__main__":
    main()

"""Seconds per training step: minimfm's diffusion mode against transfusion-pytorch 0.20.0 (lucidrains).

One optimiser step (forward + backward + AdamW step) of each model on the same machine, in one run, alternating
(the order flips every step, so slow drift of the machine hits both), after warm-up steps; the median is reported.

Matched: width d_model, depth n_layer, heads n_head (the peer's dim_head = d_model / n_head), feed-forward width
(the peer's GEGLU with expansion 4 has as many weights as minimfm's 4x MLP, up to rounding), batch size, the number
of positions the transformer reads (minimfm's layout.length; asserted with a hook on the peer), one text-to-image
sequence per row with a 7x7 grid of 16-dim latents (MNIST-shaped), text next-token loss + flow-matching loss with
weight 1 each, AdamW (same lr, betas and decay; the peer decays every weight, minimfm only matrices: same cost),
no caption dropout, no gradient clipping, fp32 on CPU.

Not matched (the peer's design, kept at its defaults): its adaptive layer norm runs on every token with a
conditioning vector 4·d_model wide (two linear maps per sub-layer, about twice the weights of the attention and MLP
together), plus U-Net skip projections and attention over earlier layers' outputs; minimfm's default adds the time
embedding to image positions once (`--time-cond adaln` gives its DiT adaLN-Zero, computed once per sequence). So the
peer has ~3x the parameters and does ~3x the matmul work per token at the same width: the table prints each model's
estimated FLOPs per step beside its time. Text layout differs: the peer spends positions on [meta] and the image
shape ("7,7"), minimfm on caption padding; the peer's text part is sized so both read the same sequence length.
Its 2-D position signal is its own axial positional MLP (add_pos_emb, as in its train_mnist.py), minimfm's a learned
row + column embedding. The peer picks its batch-packing strategy by timing candidates on the first call: warm-up.

    python benchmarks/peer_speed.py [--d-model 192 --n-layer 4 --n-head 4 --batch 64 --steps 10 --warmup 3 --threads 0]
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
from minimfm.bench import matmul_peak  # noqa: E402
from minimfm.compare import matmul_parameters, step_flops  # noqa: E402
from minimfm.config import make_config  # noqa: E402
from minimfm.runs import build_model  # noqa: E402
from minimfm.tokenizers.latent import PatchLatent  # noqa: E402
from minimfm.train import make_optimizer  # noqa: E402

PEER = "transfusion-pytorch 0.20.0"
CAPTION = "a bold seven leaning right"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def minimfm_side(args):
    cfg = make_config("tiny", mode="diffusion", latent_kind="patch", d_model=args.d_model, n_layer=args.n_layer,
                      n_head=args.n_head, batch_size=args.batch, time_cond=args.time_cond)
    model = build_model(cfg, PatchLatent(1, patch=4)).train()  # 7x7 grid of 16-dim latents (MNIST-shaped)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    B, caption = args.batch, model.tok.encode(CAPTION)
    latents = torch.randn(B, model.n_image, model.latent_dim)
    t2i, drop = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)  # all text-to-image, like the peer

    def step(i: int) -> None:
        loss, _ = model.training_loss([caption] * B, latents, t2i, drop, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, cfg, latents, caption, step


def peer_side(args, ours, cfg, latents, caption):
    from transfusion_pytorch import Transfusion
    (h, w), d, T, N = ours.grid, ours.latent_dim, ours.layout.length, ours.n_image
    # the peer's sequence: [sos] text [meta] "7,7" [som] image [eom] [eos], minus the last token when training
    shape_chars = len(f"{h},{w}")
    n_text = T - N - shape_chars - 4
    if n_text < 1:
        sys.exit(f"minimfm's sequence ({T}) is too short to give the peer any text")
    peer = Transfusion(
        num_text_tokens=len(ours.tok), dim_latent=d, modality_default_shape=(h, w), modality_num_dim=2,
        add_pos_emb=True,  # its own 2-D position signal for the image (rotary gives all image tokens one position)
        prob_uncond=0.0,   # minimfm side runs with drop = all False
        transformer=dict(dim=args.d_model, depth=args.n_layer, heads=args.n_head,
                         dim_head=args.d_model // args.n_head, ff_expansion_factor=cfg.mlp_ratio),
    ).train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    text = torch.tensor((caption * n_text)[:n_text])  # the caption's ids, repeated or cut to fill the text room
    batch = [[text, latents[b].view(h, w, d)] for b in range(args.batch)]
    seen = []
    peer.transformer.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0].shape[1]))

    def step(i: int) -> None:
        torch.manual_seed(i)  # the peer draws its noise and times from the global generator
        loss = peer(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return peer, step, seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--d-model", type=int, default=192)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--time-cond", default="add", choices=("add", "adaln"), help="minimfm's timestep conditioning")
    args = p.parse_args()
    try:
        import transfusion_pytorch  # noqa: F401
    except ImportError:
        sys.exit(f'{PEER} is not installed: pip install -e ".[bench]"')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours, cfg, latents, caption, our_step = minimfm_side(args)
    peer, peer_step, seen = peer_side(args, ours, cfg, latents, caption)
    steps = {"minimfm": our_step, PEER: peer_step}
    times = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name in (list(steps) if i % 2 == 0 else list(steps)[::-1]):  # alternate who goes first
            start = time.perf_counter()
            steps[name](i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    T = ours.layout.length
    assert set(seen) == {T}, f"peer read sequences of length {sorted(set(seen))}, minimfm {T}"

    # FLOPs per step with minimfm's formula, B·T·(6·N + 12·n_layer·d·T); every peer weight except its text
    # embedding runs per token (its conditioning MLPs too), so N is all its non-embedding parameters: an estimate
    peer_n = n_params(peer) - sum(m.weight.numel() for m in peer.modules() if isinstance(m, nn.Embedding))
    flops = {"minimfm": step_flops(ours, args.batch),
             PEER: args.batch * T * (6 * peer_n + 12 * args.n_layer * args.d_model * T)}
    peak = matmul_peak(torch.device("cpu")) / 1e9  # the same measurement `python -m minimfm bench` uses
    cond = sum(p.numel() for n, p in peer.named_parameters() if any(k in n for k in ("to_film", "to_ada_ln_zero")))

    print(f"\nd_model {args.d_model}, n_layer {args.n_layer}, n_head {args.n_head}, batch {args.batch}, "
          f"sequence {T}, threads {torch.get_num_threads()}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':<28}{'params':>11}{'matmul params':>15}{'s/step':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}"
          f"{'of peak':>9}")
    for name, model, n_mm in (("minimfm", ours, matmul_parameters(ours)), (PEER, peer, peer_n)):
        sec = statistics.median(times[name])
        gflops = flops[name] / sec / 1e9
        print(f"{name:<28}{n_params(model):>11,}{n_mm:>15,}{sec:>9.3f}{flops[name] / 1e9:>12.2f}{gflops:>9.1f}"
              f"{gflops / peak:>9.1%}")
    print(f"peer's per-token adaptive-norm weights (to_film, to_ada_ln_zero): {cond:,}")
    print(f"fp32 matmul peak (1024/2048 square, same threads): {peak:.1f} GFLOP/s; "
          f"GFLOP/s of the peer is an estimate (minimfm's formula over its non-embedding weights)")
    ratio = statistics.median(times[PEER]) / statistics.median(times["minimfm"])
    if ratio >= 1:
        print(f"minimfm is {ratio:.2f}x faster per training step than {PEER}")
    else:
        print(f"minimfm is {1 / ratio:.2f}x slower per training step than {PEER}")


if __name__ == "__main__":
    main()

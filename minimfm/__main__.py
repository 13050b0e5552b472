"""`python -m minimfm <command>`: train, sample, caption, evaluate, compare, claims, bench,
tokenizer.

Every error a user can cause (bad flag, missing dataset, wrong checkpoint, unknown prompt word) ends the
program with one line on stderr and a non-zero exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from minimfm.config import ConfigError, add_config_flags, config_from_args


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print just the error, on one line, and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m minimfm",
                           description="One transformer that reads and writes text and images "
                                       "(autoregressive, masked and diffusion modes).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    p = sub.add_parser("train", help="train a model in one mode (finds or builds its tokenizer and judge)")
    add_config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run folder and start afresh")

    p = sub.add_parser("compare", help="train ar, masked and diffusion under one budget and compare them")
    add_config_flags(p, skip=("mode", "run_name"))
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=float, default=None,
                        help="training FLOPs per mode (default: what --max-steps costs the ar mode)")
    budget.add_argument("--budget-minutes", type=float, default=None,
                        help="training minutes per mode instead (speed measured first on a few steps)")
    p.add_argument("--name", default=None, help="folder under --runs-dir (default: compare-<dataset>-<preset>)")
    p.add_argument("--sweep-n", type=int, default=100,
                   help="images per point of the step sweep, the CFG check and the mid-training evaluations")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier comparison of the same name")

    p = sub.add_parser("claims", help="small controlled runs that test five claims of the papers")
    add_config_flags(p, skip=("mode", "run_name"))
    p.add_argument("--claim-steps", type=int, default=600, help="training steps of each claim run")
    p.add_argument("--compare-name", default=None,
                   help="comparison folder whose step sweep and CFG check feed claims c and d "
                        "(default: compare-<dataset>-<preset>)")
    p.add_argument("--n", type=int, default=200, help="generated images and captions per claim evaluation")

    p = sub.add_parser("bench", help="training speed of a config: tokens/s, images/s, MFU of the measured peak")
    add_config_flags(p)
    p.add_argument("--steps", type=int, default=5, help="timed training steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocation, compilation)")
    p.add_argument("--out", default=None, help="also write the figures as JSON here")

    p = sub.add_parser("tokenizer", help="train an image tokenizer or the evaluation judge")
    p.add_argument("action", choices=["train"], help="what to do")
    p.add_argument("--kind", required=True, choices=["vq", "latent", "judge"],
                   help="vq: discrete codes (ar, masked); latent: continuous latents (diffusion); "
                        "judge: the evaluation classifier")
    add_config_flags(p)
    p.add_argument("--overwrite", action="store_true", help="retrain even if a checkpoint exists")

    p = sub.add_parser("sample", help="generate images from prompts with a trained model")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one caption-style prompt, e.g. 'a bold seven leaning right'")
    group.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--n", type=int, default=8, help="images per prompt")
    p.add_argument("--out", required=True, help="OUT.png writes a captioned grid; OUT.pt the image tensor")
    p.add_argument("--cfg-scale", type=float, default=None, help="override the run's guidance scale")
    p.add_argument("--steps", type=int, default=None, help="override T (masked) or S (diffusion)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    p = sub.add_parser("caption", help="caption images with a trained model")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--images", required=True, help="a .pt file from `sample` or a .png image")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")

    p = sub.add_parser("evaluate", help="judge a trained model: prompted accuracy, captions, Fréchet distance")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--cfg-scale", type=float, default=None, help="override the run's guidance scale")
    p.add_argument("--steps", type=int, default=None, help="override T (masked) or S (diffusion)")
    p.add_argument("--n", type=int, default=None, help="generated images (default: the run's eval_samples)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from minimfm.checkpoint import CheckpointError
    from minimfm.data import DatasetMissingError
    from minimfm.tokenizers.text import UnknownWordError
    from minimfm.commands import NotBuiltError
    try:
        from minimfm import commands
        return getattr(commands, args.command)(args) or 0
    except (ConfigError, CheckpointError, DatasetMissingError, UnknownWordError, NotBuiltError,
            FileNotFoundError, ValueError) as e:
        print(f"minimfm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minimfm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

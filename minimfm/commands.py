"""What each `python -m minimfm` subcommand does; argument parsing lives in __main__.py."""
from __future__ import annotations

from minimfm.config import config_from_args


class NotBuiltError(RuntimeError):
    """A command whose implementation has not landed yet; says which issue brings it."""


def tokenizer(args) -> int:
    from minimfm.tokenizers.store import build_tokenizer, get_tokenizer, tokenizer_path
    cfg = config_from_args(args)
    path = tokenizer_path(cfg, args.kind)
    if path.is_file() and not args.overwrite:
        print(f"{path} exists (use --overwrite to retrain); its metrics:")
        from minimfm.checkpoint import load_checkpoint
        metrics = load_checkpoint(path, kind=args.kind, dataset=cfg.dataset)["metrics"]
    else:
        if args.kind != "judge":
            get_tokenizer(cfg, "judge")  # reconstructions are scored by the judge, so make sure it exists
        _, metrics = build_tokenizer(cfg, args.kind)
        print(f"wrote {path}")
    for key, value in metrics.items():
        print(f"  {key:>16}: {value:.4f}" if isinstance(value, float) else f"  {key:>16}: {value}")
    return 0


def train(args) -> int:
    raise NotBuiltError("`train` needs a generation mode; it arrives with the autoregressive mode (issue 5)")


def sample(args) -> int:
    raise NotBuiltError("`sample` arrives with the first generation mode (issue 5)")


def caption(args) -> int:
    raise NotBuiltError("`caption` arrives with the first generation mode (issue 5)")


def evaluate(args) -> int:
    raise NotBuiltError("`evaluate` arrives with the first generation mode (issue 5)")

"""`python -m minimfm <command>`: train, sample, generate, edit, caption, evaluate, compare, tune, claims, bench,
tokenizer, course.

Every error a user can cause (bad flag, missing dataset, wrong checkpoint, unknown prompt word, a file that is
not what it should be, a full disk, a diverging loss) ends the program with one line on stderr (at most
MAX_MESSAGE characters, echoed input cut to ~80) and a non-zero exit code, never a traceback; and no such error
deletes or replaces a file it should not. Each flag's range is checked here, as it is parsed (Config fields in
Config.validate); files are checked by each command before it starts (minimfm/commands.py).
tests/test_cli_errors.py runs the CLI on a table of bad inputs and holds it to this.
"""
from __future__ import annotations

import argparse
import math
import re
import sys

from minimfm.commands import CHUNK, MAX_EDITS, MAX_GRID, MAX_IMAGES, MAX_SEQUENCES
from minimfm.config import DEVICES, MAX_SAMPLING_STEPS, PRESETS, ConfigError, add_config_flags, check_run_name, shorten
from minimfm.modes import REGISTRY

MAX_MESSAGE = 300


def one_line(message: str) -> str:
    """An error line as printed: one line, every quoted echo of user input cut to 80 characters, and the whole
    line, "minimfm CMD: error: " included, under MAX_MESSAGE (a 5,000-word prompt must not print a
    27,000-character line)."""
    text = " ".join(str(message).split())
    text = re.sub(r"'([^']{81,})'", lambda m: f"'{shorten(m.group(1))}'", text)
    return shorten(text, MAX_MESSAGE - 1)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print just the error, on one line, and exit 2."""

    def error(self, message: str):
        self.exit(2, one_line(f"{self.prog}: error: {message}") + "\n")


def whole(low: int, high: int | None = None):
    """argparse type: a whole number in [low, high]; argparse puts the flag in front of the message."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{shorten(text)}'") from None
        if value < low or (high is not None and value > high):
            allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {allowed}, got {value}")
        return value
    return parse


def number(low: float, open_low: bool = False):
    """argparse type: a finite float >= low (> low when open_low); nan and inf are refused, not trained on."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{shorten(text)}'") from None
        if not math.isfinite(value) or value < low or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if open_low else '>='} {low:g}, "
                                             f"got {shorten(text)}")
        return value
    return parse


def run_name(text: str) -> str:
    """argparse type: a folder name under --runs-dir (see config.check_run_name)."""
    try:
        return check_run_name(text, "name")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("name: ")) from None


def claim_selection(text: str) -> tuple[str, ...]:
    """argparse type: --claims a,b,j (see claims.parse_claims)."""
    from minimfm.claims import parse_claims
    try:
        return parse_claims(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--claims: ")) from None


SEED = whole(0, 2**31 - 1)


def add_sampling_flags(p: argparse.ArgumentParser, steps_help: str,
                       cfg_help: str = "override the run's guidance scale (>= 0)") -> None:
    """The flags every command that samples from a checkpoint shares (sample, generate, edit)."""
    p.add_argument("--cfg-scale", type=number(0), default=None, help=cfg_help)
    p.add_argument("--steps", type=whole(1, MAX_SAMPLING_STEPS), default=None, help=steps_help)
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto picks cuda, then mps, then cpu")


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
    budget.add_argument("--budget-flops", type=number(0, open_low=True), default=None,
                        help="training FLOPs per mode (default: what --max-steps costs the ar mode)")
    budget.add_argument("--budget-minutes", type=number(0, open_low=True), default=None,
                        help="training minutes per mode instead (speed measured first on a few steps)")
    p.add_argument("--name", type=run_name, default=None,
                   help="folder under --runs-dir (default: compare-<dataset>-<preset>)")
    p.add_argument("--seeds", type=whole(1, 100), default=None,
                   help="training seeds per mode (--seed, --seed + 1, ...): every metric as mean ± 95 %% interval "
                        "over them, modes compared by a paired t-test (default 3; smoke: 1)")
    p.add_argument("--sweep-n", type=whole(1, 10_000), default=None,
                   help="images per point of the quality-vs-compute curve, the step sweep and the CFG check: one "
                        "number for every point, so Fréchet distances compare (default: --eval-samples)")
    p.add_argument("--recipes", default=None, metavar="FILE_OR_DIR",
                   help="a `tune` best.json, or a folder of them (e.g. runs): adds each mode's tuned row beside its "
                        "default row, and the papers' variants (diffusion-ddpm), all at the same budget")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier comparison of the same name")

    p = sub.add_parser("tune", help="choose one mode's recipe on a validation split: K short trials, the same "
                                    "budget for every mode (minimfm/tuning.py)")
    add_config_flags(p, skip=("run_name",))
    p.add_argument("--trials", type=whole(1, 500), default=8,
                   help="trials: the default recipe, then a seeded random draw of the mode's space (default 8)")
    p.add_argument("--trial-steps", type=whole(1), default=None,
                   help="training FLOPs of every trial, as steps of the ar model (default: --max-steps // 3)")
    p.add_argument("--name", type=run_name, default=None,
                   help="folder under --runs-dir (default: tune-<dataset>-<preset>-<mode>)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier search of the same name")

    p = sub.add_parser("claims", help="small controlled runs, with seeds, that test claims of the papers (a-j)")
    add_config_flags(p, skip=("mode", "run_name"))
    p.add_argument("--claim-steps", type=whole(1), default=600,
                   help="training steps of each diffusion claim run (other modes: the same training FLOPs)")
    p.add_argument("--claim-seeds", type=whole(1, 100), default=None,
                   help="seeds per claim run (--seed, --seed + 1, ...): means ± 95 %% interval, a paired t-test "
                        "over seeds decides 'beyond noise' (default 3; smoke: 1)")
    p.add_argument("--claims", type=claim_selection, default=None,
                   help="comma-separated subset to run, e.g. a,b,j (default: all of a-j; each run costs minutes)")
    p.add_argument("--compare-name", type=run_name, default=None,
                   help="comparison folder whose step sweep and CFG check feed claims c and d "
                        "(default: compare-<dataset>-<preset>)")
    p.add_argument("--n", type=whole(1, 10_000), default=200,
                   help="generated images and captions per claim evaluation (1 to 10,000)")

    p = sub.add_parser("bench", help="training speed of a config: tokens/s, images/s, MFU of the measured peak")
    add_config_flags(p)
    p.add_argument("--steps", type=whole(1), default=5, help="timed training steps (the median is reported)")
    p.add_argument("--warmup", type=whole(0), default=2, help="untimed steps first (allocation, compilation)")
    p.add_argument("--out", default=None, help="also write the figures as JSON here (OUT.json)")

    p = sub.add_parser("tokenizer", help="train an image tokenizer or the evaluation judge")
    p.add_argument("action", choices=["train"], help="what to do")
    p.add_argument("--kind", required=True, choices=["vq", "latent", "judge"],
                   help="vq: discrete codes (ar, masked); latent: continuous latents (diffusion); "
                        "judge: the evaluation classifier")
    add_config_flags(p)
    p.add_argument("--overwrite", action="store_true", help="retrain even if a checkpoint exists")

    p = sub.add_parser("course", help="build every checkpoint and tokenizer the notebooks need, before class")
    p.add_argument("action", choices=["prepare"], help="what to do")
    p.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist", help="the chapters' dataset")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="default: the notebooks' choice ($MINIMFM_PRESET, else small on a GPU and tiny on a CPU)")
    p.add_argument("--dry-run", action="store_true", help="list the items and which are built; build nothing")

    steps_help = (f"override the sampling steps, 1 to {MAX_SAMPLING_STEPS}: " +
                  ", ".join(f"{s.name}: --{s.steps_field.replace('_', '-')}" for s in REGISTRY.values() if s.has_steps)
                  + "; " + ", ".join(s.name for s in REGISTRY.values() if not s.has_steps) + " has none")
    p = sub.add_parser("sample", help="generate images from prompts with a trained model")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompt", help="one caption-style prompt, e.g. 'a bold seven leaning right'")
    group.add_argument("--prompts-file", help="a UTF-8 text file with one prompt per line")
    p.add_argument("--n", type=whole(1, MAX_IMAGES), default=8,
                   help=f"images per prompt; in all at most {MAX_GRID} for a .png grid and {MAX_IMAGES:,} for a "
                        f".pt file (made in batches of {CHUNK}, with a progress bar)")
    p.add_argument("--out", required=True, help="OUT.png writes a captioned grid; OUT.pt the image tensor "
                                                "(never over the checkpoint or another input)")
    add_sampling_flags(p, steps_help)

    p = sub.add_parser("caption", help="caption images with a trained model")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--images", required=True,
                   help=f"a .pt file from `sample` (images [N, C, H, W], floats in [0, 1], N <= {MAX_IMAGES:,}) "
                        f"or one .png / .jpg image")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto picks cuda, then mps, then cpu")

    p = sub.add_parser("generate", help="interleaved text and images from a prompt: the model decides when an "
                                        "image comes ([BOI]) and what it writes after it")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--prompt", required=True, help="known text the model continues, e.g. 'a bold three,'; a "
                   "[BOI] in it asks for an image there, the text after it given too ('a three, [BOI] then a "
                   "seven [BOI]')")
    p.add_argument("--out", default="generated.png",
                   help="OUT.png: one strip per sequence, the text beside the images; OUT.pt beside it holds the "
                        "texts and images (neither ever over the checkpoint)")
    p.add_argument("--n", type=whole(1, MAX_SEQUENCES), default=1,
                   help=f"sequences, seeds --seed, --seed + 1, ... (1 to {MAX_SEQUENCES})")
    p.add_argument("--max-tokens", type=whole(0, 256), default=48, help="text tokens the model may choose (0 to 256)")
    p.add_argument("--max-images", type=whole(0, 16), default=4, help="images in a sequence after which the model may not choose [BOI] "
                   "again (0 to 16; a [BOI] written in --prompt is always drawn)")
    add_sampling_flags(p, steps_help)

    p = sub.add_parser("edit", help="edit an image by instruction ('make it bolder'): needs a model fine-tuned "
                                    "on edits (train --init-from CKPT --tasks caption,edit)")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--image", required=True, help=f"one 28x28 grey .png, or a .pt from `sample` / `generate` "
                                                  f"(up to {MAX_EDITS} images, edited one by one)")
    p.add_argument("--instruction", required=True, help="e.g. 'make it bolder', 'move it left', 'lean it right'")
    p.add_argument("--out", required=True, help="OUT.png (one image, a plain grey PNG) or OUT.pt (never over the "
                                                "checkpoint or the input)")
    add_sampling_flags(p, steps_help, "guidance scale (>= 0; default 1, no guidance: generate.EDIT_CFG_SCALE says "
                                      "why edits do not use the run's)")

    p = sub.add_parser("evaluate", help="judge a trained model: prompted accuracy, captions, Fréchet distance")
    p.add_argument("--ckpt", required=True, help="RUN/ckpt.pt")
    p.add_argument("--out", default=None, help="write the results as JSON here (OUT.json; checked before the "
                                               "evaluation starts)")
    p.add_argument("--cfg-scale", type=number(0), default=None,
                   help="override the run's guidance scale (>= 0); --mixed edits use 1 unless it is given")
    p.add_argument("--steps", type=whole(1, MAX_SAMPLING_STEPS), default=None, help=steps_help)
    p.add_argument("--n", type=whole(1, 10_000), default=None,
                   help="generated images, 1 to 10,000 (MNIST: 8,920, a class-balanced draw of its test split; "
                        "default: the run's eval_samples)")
    p.add_argument("--seed", type=SEED, default=0, help="sampling seed")
    p.add_argument("--mixed", type=whole(1, 10_000), default=None,
                   help="also score N interleaved sequences and N edit triples from the test split (runs trained "
                        "with --tasks interleaved / edit)")
    p.add_argument("--device", default="auto", choices=DEVICES, help="auto picks cuda, then mps, then cpu")
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
    from minimfm.train import TrainingDivergedError
    try:
        from minimfm import commands
        return getattr(commands, args.command)(args) or 0
    # The errors a user can cause, each with a message written for them. OSError covers what no check can see
    # coming (a disk that fills, a permission that changes mid-run); a bug elsewhere still shows its traceback.
    except (ConfigError, CheckpointError, DatasetMissingError, UnknownWordError,
            TrainingDivergedError, ValueError, OSError) as e:
        print(one_line(f"minimfm {args.command}: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minimfm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

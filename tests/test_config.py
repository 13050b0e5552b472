import subprocess
import sys

import pytest

from minimfm.__main__ import build_parser
from minimfm.config import PRESETS, ConfigError, config_from_args, make_config


def test_presets_are_valid_and_distinct():
    sizes = [make_config(p).d_model for p in PRESETS]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # smoke < tiny < small < full


def test_flag_overrides_preset():
    args = build_parser().parse_args(["train", "--preset", "smoke", "--n-layer", "3", "--mode", "masked",
                                      "--ema", "0.99", "--compile", "false"])
    cfg = config_from_args(args)
    assert (cfg.n_layer, cfg.mode, cfg.ema, cfg.compile, cfg.preset) == (3, "masked", 0.99, False, "smoke")
    assert cfg.d_model == PRESETS["smoke"]["d_model"]


@pytest.mark.parametrize("bad, message", [
    (dict(mode="foo"), "--mode"), (dict(n_layer=0), "--n-layer"), (dict(d_model=30, n_head=4), "divisible"),
    (dict(t2i_ratio=1.5), "--t2i-ratio"), (dict(ema=1.0), "--ema")])
def test_bad_values_raise_one_line(bad, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_config("tiny", **bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [["train", "--n-layer", "banana"], ["train", "--mode", "foo"],
                                  ["train", "--d-model", "30", "--n-head", "4"], ["train", "--no-such-flag", "1"]])
def test_cli_bad_flag_exits_nonzero_with_one_line(argv):
    r = subprocess.run([sys.executable, "-m", "minimfm", *argv], capture_output=True, text=True)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr, r.stderr


def test_help_lists_subcommands():
    r = subprocess.run([sys.executable, "-m", "minimfm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("train", "sample", "caption", "evaluate", "tokenizer"):
        assert cmd in r.stdout


@pytest.mark.parametrize("overrides, flag", [(dict(fsq_levels="8,1"), "--fsq-levels"), (dict(fsq_levels="x"), "--fsq-levels"),
                                             (dict(lfq_bits=17), "--lfq-bits"),
                                             (dict(tokenizer_downsample=3), "--tokenizer-downsample")])
def test_tokenizer_options_are_checked(overrides, flag):
    with pytest.raises(ConfigError, match=flag):
        make_config("smoke", **overrides)

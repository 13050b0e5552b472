"""Run train() in this process (plain python or under torchrun) and record what each rank did, for
tests/test_distributed.py: the final parameters of every rank, and which ranks wrote a checkpoint."""
import json
import os
import sys
from pathlib import Path

import torch

import minimfm.train as T
from minimfm.config import Config

cfg = Config.from_dict(json.loads(sys.argv[1]))
stop_after = int(sys.argv[2]) or None
rank = int(os.environ.get("RANK", "0"))
out = Path(cfg.runs_dir) / cfg.name
built = {}
real_build, real_save = T.build_model, T.save_atomic


def build_and_keep(*args, **kwargs):
    built["model"] = real_build(*args, **kwargs)
    return built["model"]


def save_and_record(obj, path):
    with open(out / f"saved-by-rank{rank}", "a") as f:
        f.write(f"{obj['step']}\n")
    real_save(obj, path)


T.build_model, T.save_atomic = build_and_keep, save_and_record
T.train(cfg, resume=True, verbose=False, stop_after=stop_after)
torch.save({k: v.detach().cpu() for k, v in built["model"].state_dict().items()}, out / f"params-rank{rank}.pt")

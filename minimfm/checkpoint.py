"""Checkpoints that survive crashes and say what they are.

Every file minimfm writes is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)` (no pickled code runs). Each carries a `kind` ("vq", "latent", "judge",
"model") and a `dataset`, and loading checks both, so a VQ checkpoint is never mistaken for a judge.
Writes go to a temporary file in the same folder and are renamed into place: a process killed mid-save
leaves the previous checkpoint intact (rename is atomic on POSIX).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or of the wrong kind; the message is one line for the user."""


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write `obj` with torch.save to a temp file next to `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, dataset: str | None = None,
                    map_location="cpu") -> dict:
    """Load a minimfm checkpoint safely and check that it is the `kind` (and `dataset`) expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before failing; the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, AttributeError) as e:
        why = "holds objects other than tensors and plain data" if isinstance(e, pickle.UnpicklingError) \
            else "truncated or corrupt file"
        raise CheckpointError(f"{path} is not a readable minimfm checkpoint ({why}: {type(e).__name__})") from None
    if not isinstance(obj, dict) or "kind" not in obj:
        raise CheckpointError(f"{path} is not a minimfm checkpoint (no 'kind' field)")
    if kind is not None and obj["kind"] != kind:
        raise CheckpointError(f"{path} is a '{obj['kind']}' checkpoint, expected '{kind}'")
    if dataset is not None and obj.get("dataset") != dataset:
        raise CheckpointError(f"{path} was trained on '{obj.get('dataset')}', expected '{dataset}'")
    return obj

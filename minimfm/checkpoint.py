"""Checkpoints that survive crashes and say what they are.

Every file minimfm writes is a plain dict of tensors, numbers, strings and lists, so it loads with
`torch.load(weights_only=True)` (no pickled code runs). Each carries a `kind` ("vq", "latent", "judge",
"model") and a `dataset`, and loading checks both, so a VQ checkpoint is never mistaken for a judge.
Writes go to a temporary file in the same folder and are renamed into place: a process killed mid-save, or a
disk that fills up, leaves the previous checkpoint intact (rename is atomic on POSIX).
"""
from __future__ import annotations

import errno
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or of the wrong kind; the message is one line for the user."""


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it, so put it straight back
    os.umask(mask)
    return mask


def save_atomic(obj, path: str | os.PathLike) -> None:
    """Write `obj` with torch.save to a temp file next to `path`, fsync it, then rename over `path`.

    A full disk raises CheckpointError (one line) after removing the temp file; `path` is untouched.
    """
    _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """The same for a text file (JSON results, config.json, metrics.jsonl): never half-written."""
    _write_atomic(path, lambda f: f.write(text.encode()))


def _write_atomic(path: str | os.PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is as readable as any other file
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            raise CheckpointError(f"disk full while writing {path} ({os.strerror(e.errno)}); {kept}") from None
        raise


def load_plain(path: str | os.PathLike, what: str = "minimfm checkpoint", fix: str = "",
               map_location="cpu", mmap: bool = False):
    """torch.load(weights_only=True) of a file minimfm wrote (or should have); any unreadable file, a plain
    pickle, a text file or a truncated zip, becomes one CheckpointError line that says what the file was meant to be
    and, with `fix`, what to do about it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip (or, in its legacy format, a pickle)
        raise CheckpointError(f"{path} is not a readable {what} (not a file written by torch.save)"
                              + (f"; {fix}" if fix else ""))
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols before failing; the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, AttributeError,
            KeyError, UnicodeDecodeError) as e:  # what torch.load raises on damaged files, depending on the damage
        why = "holds objects other than tensors and plain data, or is damaged" \
            if isinstance(e, pickle.UnpicklingError) else "truncated or corrupt"
        raise CheckpointError(f"{path} is not a readable {what} ({why}: {type(e).__name__})"
                              + (f"; {fix}" if fix else "")) from None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is an existing minimfm checkpoint (memory-mapped: no tensor is read)."""
    try:
        obj = load_plain(path, mmap=True)
    except CheckpointError:
        return False
    return isinstance(obj, dict) and "kind" in obj


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, dataset: str | None = None,
                    map_location="cpu") -> dict:
    """Load a minimfm checkpoint safely and check that it is the `kind` (and `dataset`) expected."""
    path = Path(path)
    obj = load_plain(path, "minimfm checkpoint", map_location=map_location)
    if not isinstance(obj, dict) or "kind" not in obj:
        raise CheckpointError(f"{path} is not a minimfm checkpoint (no 'kind' field)")
    if kind is not None and obj["kind"] != kind:
        raise CheckpointError(f"{path} is a '{obj['kind']}' checkpoint, expected '{kind}'")
    if dataset is not None and obj.get("dataset") != dataset:
        raise CheckpointError(f"{path} was trained on '{obj.get('dataset')}', expected '{dataset}'")
    return obj

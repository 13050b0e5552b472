"""One process trains a run folder at a time.

A learner who starts `python -m minimfm course prepare` in a terminal and opens notebook 04 while it runs would
otherwise have two processes training `runs/mnist-masked-tiny/`: the notebook resumes the last checkpoint, trims
the metrics log back to it and writes its own checkpoints over the other run's. So training writes its process id
and host into `<run>/.training.lock` once the folder is made, and removes it when it ends; a run whose lock names
a live process on this host (or any process on another host: its liveness cannot be checked from here) is refused
in one line. A lock left by a killed process is stale and taken over.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path

from minimfm.checkpoint import CheckpointError

LOCK = ".training.lock"


def lock_holder(run: Path) -> str | None:
    """'process 123 on host' while another live process trains `run`, else None (no lock, our own, or stale)."""
    try:
        pid_text, host = (run / LOCK).read_text().split()[:2]
        pid = int(pid_text)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # no lock, or one cut short: nobody to wait for
        return None
    if host == socket.gethostname():
        if pid == os.getpid():
            return None  # this process (a notebook kernel retrying after an error)
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return None  # stale: the process that wrote it is gone
        except PermissionError:
            pass  # it exists, under another user
    return f"process {pid} on {host}"


def check_not_training(run: Path) -> None:
    holder = lock_holder(run)
    if holder:
        raise CheckpointError(f"{run} is being trained by {holder} ({run / LOCK}): wait for it to finish, or train "
                              f"another --run-name; delete the lock file only if that process is gone")


@contextmanager
def training_lock(run: Path):
    """Hold `run`'s lock for the duration of the block (the folder exists); removed however the block ends."""
    check_not_training(run)
    path = run / LOCK
    path.write_text(f"{os.getpid()} {socket.gethostname()}\n")
    try:
        yield
    finally:
        if path.is_file() and lock_holder(run) is None:  # ours (or stale): never remove another process's lock
            path.unlink(missing_ok=True)

"""Atomic writes: readers see the old file (or folder) or the complete new one, never half of it.

Files: ``atomic_path`` (a temporary sibling renamed over the target; ``write_json`` and
``torch_save`` use it). Folders: ``staged_folder`` builds the folder in a staging sibling and
installs it with a policy: ``replace_folder`` (the old folder set aside and restored if the
rename fails) or ``merge_into_folder`` (only the staged entries replace their namesakes).

Temporaries are hidden siblings named ``.<target>.tmp-*``. An interrupted run (SIGINT, or SIGTERM
after ``exit_on_sigterm``) removes its own on the way out; after a SIGKILL the next write of the same
target removes those older than ``STALE_FILE_S`` / ``STALE_FOLDER_S`` (never anything else).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import contextmanager

STALE_FILE_S = 3600.0  # a checkpoint or NIfTI temporary is written in seconds to minutes
STALE_FOLDER_S = 24 * 3600.0  # a staging folder lives as long as a whole denoise / evaluation run


def remove_stale_temporaries(path, max_age_s: float) -> list[str]:
    """Remove the leftovers ``.<name>.tmp-*`` of ``path`` (files or folders) older than ``max_age_s``."""
    path = os.path.abspath(os.fspath(path))
    folder, prefix = os.path.dirname(path), f".{os.path.basename(path)}.tmp-"
    if not os.path.isdir(folder):
        return []
    removed, now = [], time.time()
    for name in os.listdir(folder):
        leftover = os.path.join(folder, name)
        try:
            if not name.startswith(prefix) or now - os.lstat(leftover).st_mtime < max_age_s:
                continue
            if os.path.isdir(leftover) and not os.path.islink(leftover):
                shutil.rmtree(leftover)
            else:
                os.remove(leftover)
            removed.append(leftover)
        except FileNotFoundError:
            continue  # another process cleaned it up first
    return removed


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) so that ``finally`` blocks remove temporaries and staging
    folders, as they do on Ctrl-C; only in the main thread, where Python delivers signals."""
    def _exit(signum, frame):
        sys.exit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # not the main thread: leave the default
        pass


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` keeps the extension for writers that choose the format by it (e.g. ".nii").
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path, STALE_FILE_S)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would otherwise become the file's mode
        _fsync(tmp)  # the data is on disk before the rename makes it the file (power loss)
        os.replace(tmp, path)
        try:
            _fsync(folder)  # the rename itself
        except OSError:  # some file systems refuse fsync on a directory
            pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_output_folder(path, what: str = "output folder") -> None:
    """Refuse, before any work, an output folder that is an existing file or whose nearest existing
    ancestor this process cannot write to (its staging folder is created next to it)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{path}: exists and is not a folder; choose another {what}.")
    ancestor = os.path.dirname(path)
    while not os.path.isdir(ancestor):
        if os.path.lexists(ancestor):
            raise ValueError(f"{ancestor}: is not a folder, so {path} cannot be created; choose another {what}.")
        ancestor = os.path.dirname(ancestor)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{ancestor}: not writable (permission denied), so {path} cannot be written; "
                         f"choose another {what}.")


def staging_dir(path) -> str:
    """A new empty folder next to ``path`` to build ``path`` in before renaming it into place.

    Its mode is what a plain mkdir gives (0o777 minus the umask): mkdtemp's 0o700 would otherwise
    become the finished folder's mode and hide it from other users.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path, STALE_FOLDER_S)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def replace_folder(staging: str, path: str) -> None:
    """Install ``staging`` as ``path``; an existing ``path`` is set aside first and put back if the rename fails."""
    if not os.path.lexists(path):
        os.replace(staging, path)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=os.path.dirname(path))
    os.rmdir(old)
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except OSError:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def merge_into_folder(staging: str, path: str, names) -> None:
    """Move the staged entries ``names`` into ``path`` (the whole staging folder when ``path`` does not
    exist yet); an entry already there is set aside inside ``staging`` and removed with it."""
    if not os.path.exists(path):
        os.replace(staging, path)
        return
    for name in names:
        target = os.path.join(path, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):
            old = tempfile.mkdtemp(prefix=".old-", dir=staging)
            os.replace(target, os.path.join(old, "x"))
        os.replace(os.path.join(staging, name), target)


@contextmanager
def staged_folder(path, install=replace_folder):
    """Yield a new empty staging folder next to ``path``; when the block ends without an error,
    ``install(staging, path)`` puts it in place. The staging folder never outlives the block."""
    path = os.path.abspath(os.fspath(path))
    staging = staging_dir(path)
    try:
        yield staging
        install(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def torch_save(obj, path) -> None:
    """``torch.save`` atomically: readers never see half a checkpoint."""
    import torch  # here: the rest of this module needs no torch

    with atomic_path(path, ".pt") as tmp:
        torch.save(obj, tmp)


def write_json(obj, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

"""Atomic file writes: readers see the old file or the complete new one, never half a file.

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


def write_json(obj, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

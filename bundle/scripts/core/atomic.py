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
        try:
            yield tmp
        except OSError as error:
            raise _named_after_target(error, tmp, path) from None
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
    if os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK):
        return  # staged inside it when its parent is read-only (``work_folder``)
    ancestor = os.path.dirname(path)
    while not os.path.isdir(ancestor):
        if os.path.lexists(ancestor):
            raise ValueError(f"{ancestor}: is not a folder, so {path} cannot be created; choose another {what}.")
        ancestor = os.path.dirname(ancestor)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(
            f"{ancestor}: not writable (permission denied), so {path} cannot be written; choose another {what}."
        )


def check_output_file(path, what: str = "output file") -> None:
    """Refuse, before any work, an output file path that is a folder or cannot be created."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{what}: expected a file path, got {path!r}.")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder; {what} must name a file.")
    check_output_folder(os.path.dirname(path), f"folder for the {what}")


def work_folder(path) -> str:
    """Where temporaries for ``path`` go: beside it, or inside it when only the folder itself is writable
    (an existing home folder whose parent is read-only)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.isdir(path) and os.path.isdir(parent) and not os.access(parent, os.W_OK | os.X_OK):
        return path
    return parent


def staging_dir(path) -> str:
    """A new empty folder next to ``path`` (see ``work_folder``) to build ``path`` in before installing it.

    Its mode is what a plain mkdir gives (0o777 minus the umask): mkdtemp's 0o700 would otherwise
    become the finished folder's mode and hide it from other users.
    """
    path = os.path.abspath(os.fspath(path))
    parent = work_folder(path)
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
    exist yet). An entry already there is set aside inside ``staging`` first; if any move fails, the
    entries moved so far are taken out again and the set-aside ones put back: an overwrite never loses
    the old output before the new one is complete."""
    if not os.path.exists(path):
        os.replace(staging, path)
        return
    moved, set_aside = [], []
    try:
        for name in names:
            target = os.path.join(path, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                old = os.path.join(tempfile.mkdtemp(prefix=".old-", dir=staging), "x")
                os.replace(target, old)
                set_aside.append((old, target))
            os.replace(os.path.join(staging, name), target)
            moved.append(target)
    except BaseException:
        for target in moved:
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.remove(target)
        for old, target in set_aside:
            os.replace(old, target)
        raise


@contextmanager
def folder_lock(path, what: str = "output folder"):
    """Hold an exclusive lock on writing ``path`` for the block; a second run that wants to write the same
    folder meanwhile is refused at once (it never waits, and never interleaves its files with ours).

    The lock is a hidden file ``.<name>.lock`` in its ``work_folder`` (or, for a folder to be created
    inside folders that do not exist yet, in the nearest existing one), removed when the block ends."""
    import fcntl

    path = os.path.abspath(os.fspath(path))
    holder = work_folder(path)
    while not os.path.isdir(holder):
        holder = os.path.dirname(holder)
    lock = os.path.join(holder, "." + os.path.relpath(path, holder).replace(os.sep, "_") + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"{path}: another run is writing this {what} now; wait for it or choose another.") from None
    try:
        yield
    finally:
        os.remove(lock)  # before releasing: a run that starts now makes a new lock file
        os.close(fd)


@contextmanager
def staged_folder(path, install=replace_folder):
    """Yield a new empty staging folder next to ``path``; when the block ends without an error,
    ``install(staging, path)`` puts it in place. The staging folder never outlives the block."""
    path = os.path.abspath(os.fspath(path))
    staging = staging_dir(path)
    try:
        yield staging
        install(staging, path)
    except OSError as error:
        raise _named_after_target(error, staging, path) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _named_after_target(error: OSError, temporary: str, target: str) -> OSError:
    """``error`` naming the file the user asked for instead of its hidden temporary (disk full while the
    staging copy of ``out/scan.nii`` was written says ``out/scan.nii``)."""
    name = os.fspath(error.filename) if isinstance(error.filename, (str, os.PathLike)) else ""
    if error.errno is None or not name.startswith(temporary):
        return error
    return type(error)(error.errno, error.strerror, target + name[len(temporary) :])


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

"""Atomic file writes: readers see the old file or the complete new one, never half a file."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` keeps the extension for writers that choose the format by it (e.g. ".nii").
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would otherwise become the file's mode
        os.replace(tmp, path)
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

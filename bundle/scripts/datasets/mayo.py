"""Index a Mayo low-dose CT copy (TCIA or AAPM-2016 layout) into an unpaired-training datalist.

Layouts, series folders and their pairing: see ``mayo_layout`` (``aapm2016``, the 2016 AAPM Grand
Challenge release; ``tcia``, TCIA "LDCT-and-Projection-data").

Policies (this project's choices, also recorded in the datalist's ``split`` entry):

* **Thickness**: where only one slice thickness exists it is used; where several exist (the
  AAPM release always has 1 mm and 3 mm) ``thickness`` must be given -- no silent default --
  and the error lists the available ones.
* **Split, validation hold-out, unpaired halves**: see ``mayo_split``.
* **Paths**: ``image``/``label`` are series folders relative to ``dataset_dir`` (the absolute
  root, POSIX separators); :func:`load_datalist` returns them absolute.

Every problem with the data raises :class:`MayoDataError` (a ``ValueError``) whose message names
the path and the problem; the datalist is written (atomically) only after all checks passed.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import PurePath

from ..core.atomic import write_json
from ..volumes.dicom_io import DicomDataError
from .data import DATALIST_KEYS, load_datalist  # datalists are read in one place (data.py)
from .mayo_layout import check_root, choose_thickness, detect_layout, dose_folders, find_series_folders, read_headers
from .mayo_split import (
    AAPM2016_DEFAULT_SPLIT,
    AAPM2016_PATIENTS,
    AUTHORS_SPLIT,
    REGION_PREFIX,
    MayoDataError,
    assign_roles,
    load_split,
    resolve_split,
)

__all__ = [
    "MayoDataError",
    "AUTHORS_SPLIT",
    "AAPM2016_PATIENTS",
    "AAPM2016_DEFAULT_SPLIT",
    "REGION_PREFIX",
    "DATALIST_KEYS",
    "load_split",
    "prepare_mayo",
    "load_datalist",
]


def _rel(path: str, root: str) -> str:
    return PurePath(os.path.relpath(path, root)).as_posix()


def _fmt(value, spec: str = "g") -> str:
    return "-" if value in (None, "") else format(value, spec)


def _print_summary(rows: list[dict], datalist: dict, notes: list[str], out) -> None:
    header = ("patient", "role", "dose", "slices", "thick mm", "kVp", "kernel", "CTDIvol", "mAs")
    table = [header] + [
        (
            r["patient"],
            r["role"],
            r["dose"],
            str(r["slices"]),
            _fmt(r["thickness"]),
            _fmt(r["kvp"]),
            r["kernel"] or "-",
            _fmt(r["ctdi"], ".1f"),
            _fmt(r["mas"], ".0f"),
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    print(
        f"Mayo LDCT: {datalist['dataset_dir']} (layout {datalist['layout']}, region {datalist['region']}, "
        f"thickness {datalist['thickness']})",
        file=out,
    )
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for key in DATALIST_KEYS:
        items = datalist[key]
        print(f"total {key}: {len(items)} patients, {sum(it['num_slices'] for it in items)} slices", file=out)
    for note in notes:
        print(note, file=out)


def prepare_mayo(
    root,
    out,
    region: str = "abdomen",
    thickness=None,
    split=None,
    seed: int = 0,
    *,
    num_validation: int | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Index a Mayo LDCT copy at ``root`` and write the datalist JSON ``out``; returns the datalist.

    ``region``: abdomen | chest | head (selects the built-in split); ``thickness``: e.g. "1mm" or
    "3mm", required only where several exist; ``split``: optional split JSON file; ``seed``:
    validation hold-out and unpaired halves. ``num_validation`` overrides the hold-out size
    (ignored with a split file). See the module docstring for the policies. Raises
    :class:`MayoDataError` (nothing written) on any problem.
    """
    try:
        return _prepare(root, out, region, thickness, split, seed, num_validation, progress, verbose)
    except MayoDataError:
        raise
    except DicomDataError as e:
        raise MayoDataError(str(e)) from e


def _datalist_item(chosen_folders: dict, root: str, p: str, dose: str | None) -> dict:
    """A training item (one dose level) or, with ``dose=None``, a paired low/full item."""
    per = chosen_folders[p]
    if dose is not None:
        s = per[dose].series
        return {"patient": p, "image": _rel(s.directory, root), "num_slices": s.num_slices}
    low, full = per["low"].series, per["full"].series
    return {
        "patient": p,
        "image": _rel(low.directory, root),
        "label": _rel(full.directory, root),
        "num_slices": low.num_slices,
    }


def _summary_rows(chosen_folders: dict, roles: dict[str, str]) -> list[dict]:
    rows = []
    for p in sorted(roles):
        for dose in ("full", "low"):
            f = chosen_folders[p][dose]
            s = f.series
            rows.append(
                {
                    "patient": p,
                    "role": roles[p],
                    "dose": f.dose_label,
                    "slices": s.num_slices,
                    "thickness": s.slice_thickness,
                    "kvp": s.kvp,
                    "kernel": s.kernel,
                    "ctdi": s.ctdi_vol,
                    "mas": s.exposure_mas,
                }
            )
    return rows


def _check_region(region) -> str:
    region = str(region).strip().lower()
    if region not in REGION_PREFIX:
        raise MayoDataError(f"region={region!r}: expected one of {', '.join(REGION_PREFIX)}.")
    return region


def _prepare(root, out, region, thickness, split, seed, num_validation, progress, verbose) -> dict:
    log = sys.stdout if verbose else io.StringIO()
    root = check_root(root)
    out = os.path.abspath(os.path.expanduser(os.fspath(out)))
    region, seed = _check_region(region), int(seed)
    layout = detect_layout(root)
    folders = find_series_folders(root, layout)
    present = sorted({f.patient for f in folders})
    notes: list[str] = []
    plan, source, absent, unsplit = resolve_split(root, layout, region, split, present, notes)
    train = [p for p in plan["train"] if p in present]
    test = [p for p in plan["test"] if p in present]
    used = set(train) | set(test) | {p for p in plan.get("validation", []) if p in present}
    chosen = choose_thickness(root, folders, used, thickness)
    chosen_folders = {p: dose_folders(root, folders, p, chosen) for p in sorted(used)}
    read_headers(chosen_folders, progress, notes)
    clean, noisy, validation, policy = assign_roles(root, split, plan, present, train, seed, num_validation)
    if not test:
        warnings.warn(f"{root}: no test patients present; 'test' is empty.", stacklevel=3)

    def items(patients, dose):
        return [_datalist_item(chosen_folders, root, p, dose) for p in patients]

    datalist = {
        "name": "Mayo low-dose CT",
        "description": f"{layout} layout, {region}, {chosen}; unpaired training halves, paired validation/test",
        "dataset_dir": root,
        "layout": layout,
        "region": region,
        "thickness": chosen,
        "split": {
            "source": source,
            "seed": seed,
            "train": sorted(clean + noisy),
            "clean_half": clean,
            "noisy_half": noisy,
            "validation": validation,
            "test": test,
            "validation_policy": policy,
            "absent": absent,
            "unsplit": unsplit,
        },
        "training_clean": items(clean, "full"),
        "training_noisy": items(noisy, "low"),
        "validation": items(validation, None),
        "test": items(test, None),
    }
    roles = {
        **dict.fromkeys(clean, "train-clean"),
        **dict.fromkeys(noisy, "train-noisy"),
        **dict.fromkeys(validation, "validation"),
        **dict.fromkeys(test, "test"),
    }
    write_json(datalist, out)
    _print_summary(_summary_rows(chosen_folders, roles), datalist, notes, log)
    print(f"wrote {out}", file=log)
    return datalist

"""What an evaluation reads: the datalist (the user's, or the embedded simulated set's), its paired items
(low dose as ``image``, full dose as ``label``) and the region, whose windows the metrics use
(``REGION_WINDOWS``)."""

from __future__ import annotations

import os
import warnings
from typing import List, Optional

from ..datasets.data import DataError, load_datalist, resolve_datalist

__all__ = [
    "REGION_WINDOWS",
    "simulated_datalist",
    "evaluation_datalist",
    "load_evaluation_datalist",
    "paired_items",
    "evaluation_region",
]

#: per region: (paper window, ldct-benchmark window); the first one is the clinical window of the figures
REGION_WINDOWS = {
    "abdomen": ("abdomen", "abdomen_ldct"),
    "chest": ("chest", "chest_ldct"),
    "head": ("head_ldct",),  # no paper window for head; the ldct-benchmark one only
}


def simulated_datalist(simulated_dir: str, simulation: Optional[dict] = None) -> str:
    """Path of the simulated set's ``datalist.json`` (built once and cached, see ``simulate``)."""
    resolve_datalist(None, simulated_dir, simulation)
    return os.path.join(os.path.abspath(simulated_dir), "datalist.json")


def evaluation_datalist(datalist, simulated_dir: str, simulation: Optional[dict] = None):
    """The user's datalist, or (when None) the embedded simulated set's."""
    return datalist if datalist else simulated_datalist(simulated_dir, simulation)


def load_evaluation_datalist(datalist):
    """(datalist dict with absolute paths, description of its source)."""
    if isinstance(datalist, dict):
        return datalist, str(datalist.get("dataset_dir") or datalist.get("description") or "in-memory datalist")
    if datalist is None:
        raise DataError("no datalist given (pass --datalist FILE).")
    path = os.path.abspath(os.fspath(datalist))
    return load_datalist(path), path


def paired_items(datalist: dict, split: str = "test", source: str = "datalist") -> List[dict]:
    """The split's items as ``{"patient", "image", "label"}``; errors name the datalist and the item.

    Patient IDs default to the image's file name and are made unique (``ID#2``...)."""
    items = datalist.get(split)
    if not isinstance(items, list) or not items:
        raise DataError(
            f"{source}: no paired {split!r} items (each needs 'image' = low dose and "
            f"'label' = full dose); found {'none' if items is None else repr(items)[:80]}."
        )
    out, seen = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("image") or not item.get("label"):
            raise DataError(
                f"{source}: {split}[{i}] = {item!r} is not a pair: it needs both 'image' (low dose) "
                "and 'label' (full dose)."
            )
        for key in ("image", "label"):
            if not os.path.exists(item[key]):
                raise FileNotFoundError(f"{item[key]}: no such file or directory ({source}, {split}[{i}] {key!r}).")
        pid = str(item.get("patient") or os.path.basename(os.path.normpath(item["image"])))
        if item.get("i0") is not None:  # one volume at several doses: a row per dose
            pid = f"{pid} I0 {float(item['i0']):g}"
        seen[pid] = seen.get(pid, 0) + 1
        if seen[pid] > 1:
            pid = f"{pid}#{seen[pid]}"
        out.append({"patient": pid, "image": item["image"], "label": item["label"]})
    return out


def evaluation_region(datalist: dict, region: Optional[str]) -> str:
    """The region whose windows score the evaluation: ``region``, else the datalist's, else "abdomen"."""
    from_list = datalist.get("region")
    from_list = str(from_list).strip().lower() if from_list else None
    if region is None:
        chosen = from_list or "abdomen"
    else:
        chosen = str(region).strip().lower()
        if from_list and from_list != chosen:
            warnings.warn(f"region={chosen!r} overrides the datalist's region {from_list!r}")
    if chosen not in REGION_WINDOWS:
        raise DataError(f"region={chosen!r}: expected one of {', '.join(REGION_WINDOWS)}.")
    return chosen

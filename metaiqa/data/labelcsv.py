"""The generic labelled CSV (`csv:labels.csv` or a bare ``labels.csv``) read by validate and fine-tune.

Columns (header names are case-insensitive; order and extra columns do not matter):

=============  ========  =====================================================================
column         required  meaning
=============  ========  =====================================================================
path           yes       image file, relative to the CSV's folder or absolute
mos            yes       opinion score, higher = better; used as given when all lie in [0, 1],
                         otherwise min..max is mapped to [0, 1] (with a warning)
scene          no        what the image shows (the pristine photo it was made from). Images of
                         one scene stay on one side of every split. Aliases: ``content``,
                         ``ref_id`` (the historical name). Empty: the image is its own scene.
distortion     no        distortion type (e.g. ``jpeg``, ``blur``): the per-distortion tables
                         and the tasks of meta-training. Alias: ``group`` (the historical name;
                         it never meant the scene).
level          no        distortion level, an integer (1 = mildest, 0 = pristine)
=============  ========  =====================================================================

Two aliases of one key in the same file (e.g. ``scene`` and ``ref_id``) must agree on every row
that fills both; different values are an error naming the line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from metaiqa.data.samples import DatasetError, Sample

log = logging.getLogger(__name__)

#: key -> the column names that may hold it, preferred name first.
SCENE_COLUMNS: tuple[str, ...] = ("scene", "content", "ref_id")
DISTORTION_COLUMNS: tuple[str, ...] = ("distortion", "group")
KNOWN_COLUMNS: tuple[str, ...] = ("path", "mos", *SCENE_COLUMNS, *DISTORTION_COLUMNS, "level")


class ConflictingColumns(DatasetError):
    """Two aliases of one column (e.g. scene and ref_id) hold different values in one row."""


def pick_alias(row: dict[str, str], names: tuple[str, ...], where: str) -> str | None:
    """The one value the columns `names` (aliases of one key) hold in `row`, or None when all are empty.

    ConflictingColumns names the line, the columns and their values when two filled ones differ.
    """
    filled = {n: row[n] for n in names if row.get(n)}
    if len(set(filled.values())) > 1:
        shown = ", ".join(f"{n}={v!r}" for n, v in filled.items())
        raise ConflictingColumns(
            f"{where}: columns {' and '.join(filled)} name the same thing ({names[0]}) but differ: {shown}; "
            f"keep one of {', '.join(names)}"
        )
    return next(iter(filled.values()), None)


def _lower_keys(row: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in row.items()}


def _warn_unknown(table: Path, header: list[str]) -> None:
    unknown = [c for c in header if c.lower() not in KNOWN_COLUMNS]
    if unknown:
        log.warning("%s: column(s) %s are not used; known columns: %s (scene = what the image shows, "
                    "distortion = distortion type)", table, unknown, ", ".join(KNOWN_COLUMNS))


def load_csv(path: Path) -> list[Sample]:
    """Generic ``path,mos[,scene][,distortion][,level]`` table (see the module docstring)."""
    from metaiqa.data import formats as f  # shares the table/number helpers; imported late, no cycle

    table = f._require_file(path, "csv")
    base = table.parent
    lines = list(f._read_table(table, ()))  # undecodable text -> UnreadableTable naming the byte
    header = f._header(table)
    missing = [c for c in ("path", "mos") if c not in {h.lower() for h in header}]
    if missing:
        raise f.MissingColumns(f"{table} line 1: missing column(s) {missing}; expected path, mos and optionally "
                               f"scene, distortion, level; found {header}")
    _warn_unknown(table, header)
    rows = []
    for line, raw in lines:
        row, where = _lower_keys(raw), f"{table} line {line}"
        if not row["path"]:
            raise DatasetError(f"{where}: empty path")
        img = Path(row["path"]).expanduser()
        img = img if img.is_absolute() else base / img
        if not img.is_file():
            raise f.MissingImage(f"{where}: image {row['path']!r} not found ({img})")
        mos = f._number(row["mos"], where, "mos")
        level = int(f._number(row["level"], where, "level")) if row.get("level") else None
        rows.append((img, mos, pick_alias(row, DISTORTION_COLUMNS, where), pick_alias(row, SCENE_COLUMNS, where), level))
    values = np.array([r[1] for r in rows], dtype=float)
    if len(values) and (values.min() < 0.0 or values.max() > 1.0):
        lo, hi = float(values.min()), float(values.max())
        log.warning("%s: mos values span [%g, %g], not [0, 1]; mapping min..max linearly to [0, 1] "
                    "(higher = better assumed)", table, lo, hi)
        mapped = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    else:
        mapped = values
    out = [Sample(img, float(m), g, r, lv) for (img, _, g, r, lv), m in zip(rows, mapped, strict=True)]
    return f._nonempty(out, table)

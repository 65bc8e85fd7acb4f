"""`metaiqa data inspect`: counts and label ranges of a synthetic data set, per type and level.

Reads OUT/dmos.csv with the csv module only (no images touched), so it is cheap on big sets.
A type is flagged non-monotone when its mean label does not fall strictly from each level
to the next -- the property the label committee is built to have.
"""

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from metaiqa.data.samples import DatasetError
from metaiqa.distortions.names import KADID_TYPES

REQUIRED = ("dist_img", "ref_img", "dmos", "dist_type", "level")


def inspect_dataset(root: Path) -> dict:
    """Summary dict: {"rows", "references", "metrics", "types": {type: {level: {n, min, mean, max}}}, "non_monotone"}."""
    path = Path(root) / "dmos.csv"
    if not path.is_file():
        raise DatasetError(f"no dmos.csv in {root}")
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    refs = set()
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        metrics = [c for c in reader.fieldnames if c not in REQUIRED]
        for i, row in enumerate(reader, start=2):
            try:
                label, level = float(row["dmos"]), int(row["level"])
            except (TypeError, ValueError):
                raise DatasetError(f"{path} line {i}: bad dmos/level {row.get('dmos')!r}/{row.get('level')!r}") from None
            if not np.isfinite(label):
                raise DatasetError(f"{path} line {i}: dmos is {row['dmos']!r}")
            values[row["dist_type"]][level].append(label)
            refs.add(row["ref_img"])
    types, flagged = {}, []
    order = {t: i for i, t in enumerate(KADID_TYPES)}
    for t, by_level in sorted(values.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
        stats = {
            lvl: {"n": len(v), "min": float(np.min(v)), "mean": float(np.mean(v)), "max": float(np.max(v))}
            for lvl, v in sorted(by_level.items())
        }
        types[t] = stats
        means = [s["mean"] for s in stats.values()]
        if any(b >= a for a, b in zip(means, means[1:], strict=False)):
            flagged.append(t)
    rows = sum(s["n"] for st in types.values() for s in st.values())
    return {"path": str(path), "rows": rows, "references": len(refs), "metrics": metrics, "types": types, "non_monotone": flagged}


def format_report(report: dict) -> str:
    """Human-readable table: one line per type, `mean [min..max]` per level."""
    levels = sorted({lvl for st in report["types"].values() for lvl in st})
    head = f"{'type':<28} {'n':>6}  " + "  ".join(f"{'level ' + str(lvl) + ' mean [min..max]':<22}" for lvl in levels)
    lines = [
        f"{report['path']}: {report['rows']} images, {report['references']} references, "
        f"{len(report['types'])} types; metrics: {', '.join(report['metrics']) or 'none'}",
        "label = committee score in [0, 1], higher = better",
        head,
    ]
    for t, st in report["types"].items():
        n = sum(s["n"] for s in st.values())
        cells = [
            f"{st[lvl]['mean']:.3f} [{st[lvl]['min']:.2f}..{st[lvl]['max']:.2f}]" if lvl in st else "-" for lvl in levels
        ]
        flag = "  <- NOT MONOTONE" if t in report["non_monotone"] else ""
        lines.append(f"{t:<28} {n:>6}  " + "  ".join(f"{c:<22}" for c in cells) + flag)
    if report["non_monotone"]:
        lines.append(f"non-monotone types ({len(report['non_monotone'])}): {', '.join(report['non_monotone'])}")
    else:
        lines.append("every type's mean label falls with each level")
    return "\n".join(lines) + "\n"

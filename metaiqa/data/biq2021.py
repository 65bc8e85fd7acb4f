"""BIQ2021 (Ahmed et al., J. Electronic Imaging 2022): 12,000 authentic photos with human MOS.

Layout as published: ``Images/`` and two tables with an official split,
``Train (Images and MOS).csv`` (10,000 rows) and ``Test (Images and MOS).csv`` (2,000),
columns ``Image Name,MOS`` (the train table has trailing empty columns). MOS is already in
[0, 1], higher is better. Every photo is its own content (``ref_id`` = file name), so
content-disjoint splits are image-disjoint. Names are matched case-insensitively (the table
lists ``ss02 (1014).jpg``, the file is ``.JPG``).

The test split is for reporting only: train, early-stop and select on the train split.
Research use; cite the paper.
"""

from __future__ import annotations

from pathlib import Path

from metaiqa.data.samples import Sample

TABLES = {"train": "Train (Images and MOS).csv", "test": "Test (Images and MOS).csv"}


def load_biq2021_split(root: Path, split: str) -> list[Sample]:
    """One official split (``train`` or ``test``) of a BIQ2021 copy at `root`."""
    from metaiqa.data import formats as f  # the shared table/number helpers live there

    if split not in TABLES:
        raise f.UnknownDataset(f"biq2021: unknown split {split!r}; known: {', '.join(TABLES)}")
    table = f._require_file(root / TABLES[split], f"biq2021 ({split} split)")
    images = f._ImageDir(f._require_dir(root / "Images", "biq2021"))
    out = []
    for line, row in f._read_table(table, ("Image Name", "MOS")):
        where = f"{table} line {line}"
        mos = f._number(row["MOS"], where, "MOS", 0.0, 1.0)
        name = row["Image Name"]
        out.append(Sample(images.find(name, where), mos, None, name))
    return f._nonempty(out, table)


def load_biq2021_test(root: Path) -> list[Sample]:
    """``biq2021:PATH``: the official test split (2,000 photos), the one to report on."""
    return load_biq2021_split(root, "test")


def load_biq2021_train(root: Path) -> list[Sample]:
    """``biq2021-train:PATH``: the official train split (10,000 photos); carve validation from it."""
    return load_biq2021_split(root, "train")

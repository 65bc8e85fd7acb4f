"""Data-set adapters: each format on disk -> a list of `Sample`s with MOS in [0, 1], higher = better.

Formats and how their scores are mapped (fixed source scales, so any subset of a set maps
identically):

- ``synth``    our `metaiqa data synth` output: ``dmos.csv`` already in [0, 1], higher better;
               `source` (the photo a reference crop was cut from) from ``manifest.json``.
- ``kadid10k`` ``dmos.csv`` (dist_img, ref_img, dmos, var); KADID's "dmos" is a 1..5 MOS,
               higher better -> (dmos - 1) / 4. group = KADID type slug from ``I81_03_05.png``.
- ``tid2013``  ``mos_with_names.txt`` (``MOS name`` lines); MOS on 0..9, higher better -> MOS / 9.
               group = one of `TID2013_TYPES` from the name ``i01_08_3.bmp``; names matched
               case-insensitively (the release mixes ``i25_`` and ``I25_``).
- ``koniq10k`` ``koniq10k_scores_and_distributions.csv`` (image_name, MOS on 1..5) -> (MOS - 1) / 4;
               images in ``1024x768/`` (preferred) or ``512x384/``.
- ``livec``    ``Data/AllImages_release.mat`` + ``Data/AllMOS_release.mat``; MOS 0..100 -> /100.
               All 1169 entries are kept, including the 7 training images ``t1..t7`` that many
               papers drop (use `select`-style filtering yourself to reproduce them); images are
               looked up in ``Images/`` then ``Images/trainingImages/``.
- ``biq2021``  BIQ2021's official test split (``biq2021-train`` its train split): MOS in [0, 1]
               as published; see `metaiqa.data.biq2021`.
- ``csv``      generic ``path,mos[,scene][,distortion][,level]`` (`metaiqa.data.labelcsv`; aliases
               ``content``/``ref_id`` for scene, ``group`` for distortion); paths relative to the
               CSV's folder or absolute; higher mos = better. Scores all in [0, 1] are used as given,
               otherwise the column's min..max is mapped to [0, 1] with a warning.

Image files are checked for existence at load time only (decoding 10k images is slow);
call `verify_images` to decode-check them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaiqa.data.samples import DatasetError, Sample
from metaiqa.distortions.names import KADID_TYPES

log = logging.getLogger(__name__)

#: TID2013's 24 distortion types in its order (type id = index + 1). Types that KADID-10k
#: also has reuse KADID's slug, so per-type results can be compared across the two sets.
TID2013_TYPES: tuple[str, ...] = (
    "white_noise",  # additive Gaussian noise
    "white_noise_color_component",  # noise in colour components stronger than in luminance
    "spatially_correlated_noise",
    "masked_noise",
    "high_frequency_noise",
    "impulse_noise",
    "quantization_noise",
    "gaussian_blur",
    "denoise",  # image denoising
    "jpeg",
    "jpeg2000",
    "jpeg_transmission_errors",
    "jpeg2000_transmission_errors",
    "non_eccentricity_patch",  # non eccentricity pattern noise
    "local_block_distortions",
    "mean_shift",  # intensity shift
    "contrast_change",
    "color_saturation",
    "multiplicative_noise",  # multiplicative Gaussian noise
    "comfort_noise",
    "noisy_image_compression",  # lossy compression of noisy images
    "color_quantization_dither",
    "chromatic_aberration",
    "sparse_sampling",  # sparse sampling and reconstruction
)


class UnknownDataset(DatasetError):
    """A data-set name or folder layout that no adapter reads."""


class DatasetNotFound(DatasetError):
    """A file or folder a data set needs does not exist."""


class MissingColumns(DatasetError):
    """A table lacks columns the format needs."""


class BadScore(DatasetError):
    """A score is not a finite number, or lies outside the format's scale."""


class MissingImage(DatasetError):
    """An image listed in the label file does not exist."""


class UnreadableImage(DatasetError):
    """An image file exists but cannot be decoded."""


class EmptyDataset(DatasetError):
    """The label file lists no images."""


# ----------------------------------------------------------------------------- helpers


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetNotFound(f"{what}: file {path} not found")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetNotFound(f"{what}: folder {path} not found")
    return path


class UnreadableTable(DatasetError):
    """A label file that is not UTF-8 text CSV (e.g. saved as Latin-1 or UTF-16), or cannot be read."""


def _read_table(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header; missing columns name expected and found.

    Text that is not UTF-8, a NUL byte or an unreadable file -> UnreadableTable naming the file.
    """
    try:
        yield from _table_rows(path, required)
    except UnicodeDecodeError as exc:
        raise UnreadableTable(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start:exc.start + 1].hex()} at offset {exc.start}); "
            "save the CSV as UTF-8"
        ) from None
    except csv.Error as exc:
        raise UnreadableTable(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise UnreadableTable(f"{path}: cannot read ({exc.strerror or exc})") from None


def _table_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        found = [(c or "").strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in found]
        if missing:
            raise MissingColumns(
                f"{path} line 1: missing column(s) {missing}; expected {list(required)}, found {found}"
            )
        reader.fieldnames = found
        for row in reader:
            if not any((v or "").strip() for k, v in row.items() if k is not None):
                continue  # blank line
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


def _number(value: Any, where: str, column: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite float within [lo, hi] (small tolerance) or BadScore naming file, line and value."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BadScore(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise BadScore(f"{where}: {column} is {value!r} (not a finite number)")
    eps = 1e-6
    if (lo is not None and x < lo - eps) or (hi is not None and x > hi + eps):
        raise BadScore(f"{where}: {column} {x:g} outside the format's scale [{lo:g}, {hi:g}]")
    return x


def _scale(x: float, lo: float, hi: float) -> float:
    return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))


class _ImageDir:
    """Looks image names up in one folder (one listdir), exact name first, then case-insensitively."""

    def __init__(self, *folders: Path) -> None:
        self.folders = [f for f in folders if f.is_dir()]
        self._exact: dict[str, Path] = {}
        self._lower: dict[str, Path] = {}
        for folder in reversed(self.folders):  # earlier folders win
            for name in os.listdir(folder):
                self._exact[name] = folder / name
                self._lower[name.lower()] = folder / name

    def find(self, name: str, where: str) -> Path:
        hit = self._exact.get(name) or self._lower.get(name.lower())
        if hit is None:
            places = " or ".join(str(f) for f in self.folders) or "(no image folder)"
            raise MissingImage(f"{where}: image {name!r} not found in {places}")
        return hit


_KADID_NAME = re.compile(r"^i(\d+)_(\d+)_(\d+)\.\w+$", re.IGNORECASE)


def _parse_name(name: str, where: str, types: Sequence[str], fmt: str) -> tuple[str, int]:
    """(group slug, level) from a KADID/TID-style name ``I01_08_3.ext``."""
    m = _KADID_NAME.match(name)
    if m is None:
        raise DatasetError(f"{where}: file name {name!r} is not {fmt}-style (like I01_08_3.png)")
    type_id, level = int(m.group(2)), int(m.group(3))
    if not 1 <= type_id <= len(types):
        raise DatasetError(f"{where}: distortion type {type_id} in {name!r} outside 1..{len(types)}")
    return types[type_id - 1], level


# ----------------------------------------------------------------------------- formats


def load_synth(root: Path) -> list[Sample]:
    """Output of `metaiqa data synth` (see module docstring)."""
    table = _require_file(root / "dmos.csv", "synth")
    images = _ImageDir(_require_dir(root / "images", "synth"))
    sources: dict[str, str] = {}
    manifest = root / "manifest.json"
    if manifest.is_file():
        try:
            refs = json.loads(manifest.read_text()).get("references", {})
            sources = {k: str(v["source"]) for k, v in refs.items() if isinstance(v, dict) and v.get("source")}
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{manifest}: not a valid synth manifest ({exc})") from exc
    out = []
    for line, row in _read_table(table, ("dist_img", "ref_img", "dmos", "dist_type", "level")):
        where = f"{table} line {line}"
        mos = _number(row["dmos"], where, "dmos", 0.0, 1.0)
        level = int(_number(row["level"], where, "level"))
        if not row["dist_type"]:
            raise DatasetError(f"{where}: empty dist_type")
        out.append(
            Sample(
                path=images.find(row["dist_img"], where),
                mos=_scale(mos, 0.0, 1.0),
                group=row["dist_type"],
                ref_id=Path(row["ref_img"]).stem,
                level=level,
                source=sources.get(row["ref_img"]),
            )
        )
    return _nonempty(out, table)


def load_kadid10k(root: Path) -> list[Sample]:
    table = _require_file(root / "dmos.csv", "kadid10k")
    images = _ImageDir(_require_dir(root / "images", "kadid10k"))
    out = []
    for line, row in _read_table(table, ("dist_img", "ref_img", "dmos")):
        where = f"{table} line {line}"
        group, level = _parse_name(row["dist_img"], where, KADID_TYPES, "KADID")
        mos = _number(row["dmos"], where, "dmos", 1.0, 5.0)
        out.append(Sample(images.find(row["dist_img"], where), _scale(mos, 1.0, 5.0), group,
                          Path(row["ref_img"]).stem, level))
    return _nonempty(out, table)


def load_tid2013(root: Path) -> list[Sample]:
    table = _require_file(root / "mos_with_names.txt", "tid2013")
    images = _ImageDir(_require_dir(root / "distorted_images", "tid2013"))
    out = []
    with table.open(encoding="utf-8-sig", errors="replace") as f:
        for line, text in enumerate(f, start=1):
            parts = text.split()
            if not parts:
                continue
            where = f"{table} line {line}"
            if len(parts) != 2:
                raise DatasetError(f"{where}: expected 'MOS filename', got {text.strip()!r}")
            mos = _number(parts[0], where, "MOS", 0.0, 9.0)
            name = parts[1]
            group, level = _parse_name(name, where, TID2013_TYPES, "TID2013")
            out.append(Sample(images.find(name, where), _scale(mos, 0.0, 9.0), group, name[:3].lower(), level))
    return _nonempty(out, table)


KONIQ_TABLE = "koniq10k_scores_and_distributions.csv"


def load_koniq10k(root: Path) -> list[Sample]:
    table = _require_file(root / KONIQ_TABLE, "koniq10k")
    folders = [root / "1024x768", root / "512x384"]
    existing = [f for f in folders if f.is_dir()]
    if not existing:
        raise DatasetNotFound(f"koniq10k: neither image folder {folders[0]} nor {folders[1]} exists")
    images = _ImageDir(existing[0])
    out = []
    for line, row in _read_table(table, ("image_name", "MOS")):
        where = f"{table} line {line}"
        mos = _number(row["MOS"], where, "MOS", 1.0, 5.0)
        out.append(Sample(images.find(row["image_name"], where), _scale(mos, 1.0, 5.0), None, row["image_name"]))
    return _nonempty(out, table)


def _loadmat_var(path: Path, var: str) -> np.ndarray:
    import scipy.io  # only this format needs it

    try:
        data = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for bad files
        raise DatasetError(f"{path}: not a readable MATLAB file ({exc})") from exc
    if var not in data:
        found = [k for k in data if not k.startswith("__")]
        raise MissingColumns(f"{path}: missing variable {var!r}; found {found}")
    return data[var]


def _mat_string(cell: Any) -> str:
    while isinstance(cell, np.ndarray):
        if cell.size == 0:
            return ""
        cell = cell.ravel()[0]
    return str(cell).strip()


def load_livec(root: Path) -> list[Sample]:
    names_file = _require_file(root / "Data" / "AllImages_release.mat", "livec")
    mos_file = _require_file(root / "Data" / "AllMOS_release.mat", "livec")
    names = [_mat_string(c) for c in _loadmat_var(names_file, "AllImages_release").ravel()]
    raw_mos = _loadmat_var(mos_file, "AllMOS_release").ravel()
    if len(names) != len(raw_mos):
        raise DatasetError(f"livec: {names_file} lists {len(names)} images but {mos_file} holds {len(raw_mos)} scores")
    images = _ImageDir(_require_dir(root / "Images", "livec"), root / "Images" / "trainingImages")
    out = []
    for i, (name, value) in enumerate(zip(names, raw_mos, strict=True), start=1):
        where = f"{names_file} entry {i}"
        if not name:
            raise DatasetError(f"{where}: empty image name")
        mos = _number(value, f"{mos_file} entry {i}", "MOS", 0.0, 100.0)
        out.append(Sample(images.find(name, where), _scale(mos, 0.0, 100.0), None, name))
    return _nonempty(out, names_file)


def load_csv(path: Path) -> list[Sample]:
    """Generic ``path,mos[,scene][,distortion][,level]`` table: see `metaiqa.data.labelcsv`."""
    from metaiqa.data.labelcsv import load_csv as load  # uses this module's helpers: import late, no cycle

    return load(path)


def _nonempty(samples: list[Sample], source: Path) -> list[Sample]:
    if not samples:
        raise EmptyDataset(f"{source}: lists no images (empty data set)")
    return samples


LOADERS: dict[str, Callable[[Path], list[Sample]]] = {
    "synth": load_synth,
    "kadid10k": load_kadid10k,
    "tid2013": load_tid2013,
    "koniq10k": load_koniq10k,
    "livec": load_livec,
    "csv": load_csv,
    "biq2021": lambda root: _biq2021().load_biq2021_test(root),
    "biq2021-train": lambda root: _biq2021().load_biq2021_train(root),
}


def _biq2021():
    from metaiqa.data import biq2021  # imports this module's helpers: import late, no cycle

    return biq2021


def load_dataset(name: str, root: str | os.PathLike) -> list[Sample]:
    """Read data set `name` (a key of `LOADERS`) from `root` (its folder; the file itself for csv)."""
    key = name.strip().lower()
    if key not in LOADERS:
        raise UnknownDataset(f"unknown data set {name!r}; known: {', '.join(LOADERS)}")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetNotFound(f"{key}: {root} not found")
    samples = LOADERS[key](root)
    log.info("loaded %d samples of %s from %s", len(samples), key, root)
    return samples


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise UnreadableTable(f"{path}: not a readable UTF-8 CSV ({type(exc).__name__}: {str(exc)[:200]})") from None


def detect_format(path: str | os.PathLike) -> str:
    """The format name a bare path holds (how `parse_data_spec` reads specs without NAME:)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFound(f"data {p} not found")
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "csv"
        raise UnknownDataset(f"{p}: not a .csv file; give a data-set folder or NAME:PATH ({', '.join(LOADERS)})")
    checks = [
        ("synth", p / "manifest.json"),
        ("kadid10k", p / "dmos.csv"),
        ("tid2013", p / "mos_with_names.txt"),
        ("koniq10k", p / KONIQ_TABLE),
        ("livec", p / "Data" / "AllMOS_release.mat"),
        ("biq2021", p / "Test (Images and MOS).csv"),
    ]
    for name, marker in checks:
        if marker.is_file():
            if name == "kadid10k" and "dist_type" in _header(marker):
                return "synth"  # a synth set whose manifest.json was lost
            return name
    raise UnknownDataset(
        f"{p}: no known data-set layout (looked for {', '.join(m.name for _, m in checks)}); "
        f"use NAME:PATH with NAME in {', '.join(LOADERS)}"
    )


def parse_data_spec(spec: str) -> list[Sample]:
    """``NAME:PATH`` or a bare PATH (format detected by `detect_format`) -> samples."""
    name, sep, rest = spec.partition(":")
    if sep and name.strip().lower() in LOADERS:
        return load_dataset(name, rest)
    if sep and not Path(spec).exists() and len(name) > 1:  # a one-letter prefix may be a Windows drive
        raise UnknownDataset(f"unknown data set {name!r} in spec {spec!r}; known: {', '.join(LOADERS)}")
    path = Path(spec).expanduser()
    fmt = detect_format(path)
    if fmt == "csv" and path.name == KONIQ_TABLE:
        return load_dataset("koniq10k", path.parent)
    return load_dataset(fmt, path)


def verify_images(samples: Sequence[Sample], progress: bool = False) -> None:
    """Decode-check every image (PIL verify); raises UnreadableImage naming the first bad file."""
    from PIL import Image
    from tqdm import tqdm

    for s in tqdm(samples, desc="verify", disable=not progress, leave=False):
        try:
            with Image.open(s.path) as im:
                im.verify()
        except Exception as exc:  # any decoder fault (the AVIF plugin raises RuntimeError) = unreadable
            raise UnreadableImage(f"{s.path}: unreadable image ({exc})") from exc


def describe(samples: Sequence[Sample]) -> dict[str, Any]:
    """JSON-able summary (counts, contents, per-group label ranges) for inspect and checkpoint sidecars."""
    groups: dict[str, list[float]] = {}
    for s in samples:
        groups.setdefault(s.group if s.group is not None else "(none)", []).append(s.mos)
    mos = np.array([s.mos for s in samples], dtype=float)
    return {
        "n": len(samples),
        "contents": len({s.content if s.content is not None else str(s.path) for s in samples}),
        "references": len({s.ref_id if s.ref_id is not None else str(s.path) for s in samples}),
        "mos": [float(mos.min()), float(mos.max())] if len(mos) else None,
        "groups": {
            g: {"n": len(v), "mos_min": float(min(v)), "mos_max": float(max(v)), "mos_mean": float(np.mean(v))}
            for g, v in sorted(groups.items())
        },
    }

"""`metaiqa data synth`: a KADID-style synthetic data set from pristine photographs.

Pipeline per reference photo: decode (EXIF-oriented), take `crops` crops of `size`x`size`
at more than one scale (resize the long side to `size * scale`, scales cycling through
CROP_SCALES, then a random position; nearly flat crops -- pixel std < FLAT_STD -- are
rejected and another position tried), apply every distortion type at levels 1..`levels`,
label each distorted image with the full-reference committee (`metaiqa.labels`) against
its pristine crop, write everything.

Layout of OUT (interface shared with `metaiqa.data.formats`):
    images/I01.png            pristine crop number 1 (ids widen to 3+ digits past 99)
    images/I01_10_03.png      crop 1, KADID type id 10 (jpeg), level 3 (1 mildest .. 5 worst)
    dmos.csv                  dist_img,ref_img,dmos,dist_type,level,<one column per committee metric>
    manifest.json             generator, version, settings, seed, committee, references
                              {ref_img: {source, box, scale, ...}}, distortions

`dmos` is the committee label in [0, 1], HIGHER = BETTER -- unlike KADID-10k's DMOS, which is
a 1..5 opinion scale. The per-metric columns hold the raw metric values.

Determinism: crop positions come from rng(seed, file index, crop index), distortions from
rng(seed, ref number, type id) -- the same generator state for every level of one series, so
levels share their random pattern (noise field, blur direction, block positions) and differ
only in strength. Results do not depend on --workers or on resuming.

Resume: rows already in dmos.csv are skipped; rows are appended (and flushed) as each
reference finishes and images are written atomically, so an interrupted run can simply be
started again with the same arguments. A run whose settings differ from the manifest's is
refused rather than mixed into the old set.

Bad references: files with an image extension that cannot be decoded, or whose shorter side
is below `size`, are refused with an error naming every such file (pass skip_bad=True /
--skip-bad to skip them with a warning instead; it is still an error if none is usable).
Files without an image extension (e.g. COPYRIGHT notes) are ignored.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.io import atomic_write_bytes

log = logging.getLogger(__name__)

GENERATOR = "metaiqa data synth"
VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CROP_SCALES = (2.0, 3.0)  # long side = size * scale (never upsampled beyond the original)
FLAT_STD = 12.0  # crops with a lower pixel std are nearly flat: try another position
CROP_TRIES = 40
PNG_COMPRESS_LEVEL = 3  # speed over size; PNG is lossless either way
CSV_BASE_COLUMNS = ("dist_img", "ref_img", "dmos", "dist_type", "level")
FIRST_USER_TYPE_ID = 26  # ids of user-registered distortions follow KADID's 25


class BadReference(MetaIQAError):
    """Reference photos that are not decodable images or are smaller than the crop size."""


class SettingsMismatch(MetaIQAError):
    """OUT already holds a data set made with different settings."""


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines the data set's content (workers and paths do not)."""

    size: int = 384
    crops: int = 1
    levels: int = 5
    seed: int = 0
    types: tuple[str, ...] = ()
    scales: tuple[float, ...] = CROP_SCALES
    flat_std: float = FLAT_STD


@dataclass
class RefJob:
    """One source photo and the references (crops) to make from it."""

    file_index: int
    path: Path
    source: str
    ref_numbers: list[int]
    todo: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)  # ref -> [(type, id, level)]


def type_ids(types: Sequence[str]) -> dict[str, int]:
    """KADID ids for KADID types; user types numbered from 26 in the given order."""
    from metaiqa.distortions import KADID_TYPES

    ids, nxt = {}, FIRST_USER_TYPE_ID
    for t in types:
        if t in KADID_TYPES:
            ids[t] = KADID_TYPES.index(t) + 1
        else:
            ids[t], nxt = nxt, nxt + 1
    return ids


def ref_name(number: int, width: int) -> str:
    return f"I{number:0{width}d}"


def dist_name(number: int, width: int, type_id: int, level: int) -> str:
    return f"{ref_name(number, width)}_{type_id:02d}_{level:02d}.png"


def find_references(root: Path) -> list[Path]:
    """Image files under `root` (recursively, sorted by relative path)."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"references directory not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return files


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Size after EXIF orientation (tags 5-8 swap width and height)."""
    w, h = im.size
    return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def check_references(paths: Iterable[Path], size: int, *, skip_bad: bool = False) -> list[Path]:
    """Keep references that decode and whose shorter side is >= size; refuse (or skip) the rest."""
    good, bad = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = _oriented_size(im)
                im.draft(None, (max(1, im.width // 8), max(1, im.height // 8)))  # cheap full decode (JPEG)
                im.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            bad.append(f"{p}: not a readable image ({exc.__class__.__name__}: {exc})")
            continue
        if min(w, h) < size:
            bad.append(f"{p}: {w}x{h} is smaller than the crop size {size}x{size}")
            continue
        good.append(p)
    if bad and not skip_bad:
        raise BadReference("unusable reference image(s) (fix or remove them, or pass --skip-bad):\n  " + "\n  ".join(bad))
    for msg in bad:
        log.warning("skipping reference %s", msg)
    if not good:
        raise BadReference("no usable reference images" + (": " + "; ".join(bad) if bad else ""))
    return good


def _flat_free_crop(arr: np.ndarray, size: int, rng: np.random.Generator, flat_std: float) -> tuple[int, int, float]:
    """Top-left (y, x) of a random size x size crop whose pixel std >= flat_std (best of CROP_TRIES otherwise)."""
    h, w = arr.shape[:2]
    best = (0, 0, -1.0)
    for _ in range(CROP_TRIES):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        std = float(arr[y : y + size, x : x + size].std())
        if std >= flat_std:
            return y, x, std
        if std > best[2]:
            best = (y, x, std)
    log.warning("no crop with pixel std >= %.1f found after %d tries; using one with std %.1f", flat_std, CROP_TRIES, best[2])
    return best


def make_crops(path: Path, file_index: int, settings: SynthSettings) -> list[tuple[np.ndarray, dict]]:
    """The `crops` pristine crops of one photo: crop c uses scale CROP_SCALES[c % n] and rng(seed, file, c)."""
    size = settings.size
    try:
        with Image.open(path) as im:
            full_w, full_h = _oriented_size(im)
            factors = []
            for c in range(settings.crops):
                mult = settings.scales[c % len(settings.scales)]
                factors.append(min(1.0, max(size * mult / max(full_w, full_h), size / min(full_w, full_h))))
            # decode once, at the coarsest JPEG draft scale that still covers the largest resize
            need = max(factors)
            im.draft(None, (int(np.ceil(im.width * need)), int(np.ceil(im.height * need))))
            img = ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadReference(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc
    resized: dict[float, np.ndarray] = {}
    out = []
    for c, f in enumerate(factors):
        tw, th = max(size, round(full_w * f)), max(size, round(full_h * f))
        if f not in resized:
            resized[f] = np.asarray(img if img.size == (tw, th) else img.resize((tw, th), Image.Resampling.LANCZOS))
        arr = resized[f]
        rng = np.random.default_rng([settings.seed, file_index, c])
        y, x, std = _flat_free_crop(arr, size, rng, settings.flat_std)
        meta = {"scale": round(f, 6), "resized": [tw, th], "box": [x, y, x + size, y + size], "std": round(std, 2)}
        out.append((np.ascontiguousarray(arr[y : y + size, x : x + size]), meta))
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file + rename: a reader (or a resumed run) never sees half an image (no fsync: regenerable)."""
    atomic_write_bytes(path, data, durable=False)


def process_job(job: RefJob, settings: SynthSettings, out: Path, width: int) -> list[tuple[int, dict, list[dict]]]:
    """Worker: crop one photo, distort, label, write images. Returns [(ref number, ref meta, csv rows)]."""
    from metaiqa.distortions import apply
    from metaiqa.labels import combine, committee_scores

    images = Path(out) / "images"
    results = []
    for c, (crop, meta) in enumerate(make_crops(job.path, job.file_index, settings)):
        number = job.ref_numbers[c]
        ref_file = images / f"{ref_name(number, width)}.png"
        if not ref_file.exists():
            _write_atomic(ref_file, _png_bytes(crop))
        todo = job.todo.get(number, [])
        if not todo:
            results.append((number, {"source": job.source, **meta}, []))
            continue
        dist = np.stack([apply(t, crop, lvl, np.random.default_rng([settings.seed, number, tid])) for t, tid, lvl in todo])
        scores = committee_scores(crop, dist)
        labels = combine(scores)
        rows = []
        for i, (t, tid, lvl) in enumerate(todo):
            name = dist_name(number, width, tid, lvl)
            _write_atomic(images / name, _png_bytes(dist[i]))
            row = {"dist_img": name, "ref_img": ref_file.name, "dmos": f"{labels[i]:.6f}", "dist_type": t, "level": lvl}
            row.update({m: f"{float(v[i]):.6f}" for m, v in scores.items()})
            rows.append(row)
        results.append((number, {"source": job.source, **meta}, rows))
    return results


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of an existing dmos.csv (empty list if the file does not exist)."""
    if not csv_path.exists():
        return []
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def _settings_dict(settings: SynthSettings) -> dict:
    d = asdict(settings)
    d.pop("types")
    d["scales"] = list(d["scales"])
    return d


def _check_manifest(manifest: dict, settings: SynthSettings, sources: list[str], committee: dict, out: Path) -> None:
    if manifest.get("generator") != GENERATOR:
        raise SettingsMismatch(f"{out / 'manifest.json'} was not written by {GENERATOR!r}; choose another --out")
    old = manifest.get("settings", {})
    new = _settings_dict(settings)
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    old_committee = manifest.get("committee", {})
    if old_committee.get("metrics") != committee["metrics"]:
        diff.append(f"committee: {old_committee.get('metrics')} -> {committee['metrics']}")
    elif old_committee != committee:  # same metrics, other maps or piq version: labels would not mix
        diff.append("label committee maps or piq version changed")
    if manifest.get("reference_files") != sources:
        diff.append("the set of reference files changed (numbering would shift)")
    if diff:
        raise SettingsMismatch(f"{out} holds a data set made with other settings ({'; '.join(diff)}); use a new --out")


def synthesize(
    references: Path,
    out: Path,
    settings: SynthSettings,
    *,
    workers: int = 1,
    skip_bad: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or complete) the data set in `out`. Returns a summary: counts, rows added, seconds."""
    import time

    from metaiqa.distortions import list_distortions
    from metaiqa.labels import committee_info

    t0 = time.perf_counter()
    if settings.size < 32:
        raise InvalidInput(f"--size must be at least 32, got {settings.size}")
    if not 1 <= settings.levels <= 5:
        raise InvalidInput(f"--levels must be 1..5, got {settings.levels}")
    if settings.crops < 1:
        raise InvalidInput(f"--crops must be at least 1, got {settings.crops}")
    if workers < 1:
        raise InvalidInput(f"--workers must be at least 1, got {workers}")
    types = settings.types or tuple(list_distortions())
    unknown = [t for t in types if t not in list_distortions()]
    if unknown:
        raise InvalidInput(f"unknown distortion type(s) {', '.join(unknown)}; known: {', '.join(list_distortions())}")
    if len(set(types)) != len(types):
        raise InvalidInput(f"distortion types listed twice: {', '.join(types)}")
    settings = SynthSettings(**{**asdict(settings), "types": tuple(types)})
    ids = type_ids(list_distortions())

    references, out = Path(references), Path(out)
    files = check_references(find_references(references), settings.size, skip_bad=skip_bad)
    sources = [p.relative_to(references).as_posix() for p in files]
    committee = committee_info()
    n_refs = len(files) * settings.crops
    width = max(2, len(str(n_refs)))

    manifest_path, csv_path = out / "manifest.json", out / "dmos.csv"
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SettingsMismatch(f"{manifest_path} is unreadable ({exc}); choose another --out") from exc
        _check_manifest(manifest, settings, sources, committee, out)
    elif out.exists() and any(out.iterdir()):
        raise SettingsMismatch(f"{out} exists, is not empty and has no manifest.json; choose another --out")
    else:
        manifest = {"references": {}}
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest.update(
        generator=GENERATOR,
        version=VERSION,
        settings=_settings_dict(settings),
        seed=settings.seed,
        committee=committee,
        reference_files=sources,
        distortions=sorted(set(manifest.get("distortions", [])) | set(types), key=lambda t: ids[t]),
        distortion_ids={t: ids[t] for t in list_distortions()},
        dmos="committee label in [0, 1], higher = better (not KADID's 1..5 scale)",
    )
    _write_json(manifest_path, manifest)

    columns = list(CSV_BASE_COLUMNS) + list(committee["metrics"])
    existing = read_rows(csv_path)
    if existing and list(existing[0].keys()) != columns:
        raise SettingsMismatch(f"{csv_path} has columns {list(existing[0].keys())}, expected {columns}")
    done = {r["dist_img"] for r in existing}

    jobs = []
    for fi, (path, source) in enumerate(zip(files, sources, strict=True)):
        numbers = [fi * settings.crops + c + 1 for c in range(settings.crops)]
        job = RefJob(fi, path, source, numbers)
        for n in numbers:
            todo = [(t, ids[t], lvl) for t in types for lvl in range(1, settings.levels + 1)]
            job.todo[n] = [x for x in todo if dist_name(n, width, x[1], x[2]) not in done]
        missing_ref = any(
            ref_name(n, width) + ".png" not in manifest["references"] or not (out / "images" / f"{ref_name(n, width)}.png").exists()
            for n in numbers
        )
        if missing_ref or any(job.todo.values()):
            jobs.append(job)

    total = n_refs * len(types) * settings.levels
    added = 0
    bar = _progress(total=total, initial=total - sum(len(v) for j in jobs for v in j.todo.values()), enabled=progress)
    write_header = not csv_path.exists() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as fcsv:
        writer = csv.DictWriter(fcsv, fieldnames=columns)
        if write_header:
            writer.writeheader()

        def record(results: list[tuple[int, dict, list[dict]]]) -> None:
            nonlocal added
            for number, meta, rows in results:
                writer.writerows(rows)
                manifest["references"][f"{ref_name(number, width)}.png"] = meta
                added += len(rows)
                bar.update(len(rows))
            fcsv.flush()
            os.fsync(fcsv.fileno())
            _write_json(manifest_path, manifest)

        try:
            if workers == 1 or len(jobs) <= 1:
                for job in jobs:
                    record(process_job(job, settings, out, width))
            else:
                with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
                    futures = [pool.submit(process_job, job, settings, out, width) for job in jobs]
                    for fut in futures:  # in reference order, so the csv's row order is deterministic
                        record(fut.result())
        finally:
            bar.close()
    summary = {
        "out": str(out),
        "references": n_refs,
        "types": len(types),
        "levels": settings.levels,
        "images_total": total,
        "images_added": added,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("data synth: %s", summary)
    return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="data synth", disable=not enabled, file=None, dynamic_ncols=True)

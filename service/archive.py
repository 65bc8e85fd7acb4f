"""Unpack an uploaded validation archive (zip of images + CSV `filename,mos`) without trusting it.

Refused before anything is written: entries with absolute paths, `..`, backslashes, drive
letters or NUL; symlinks; encrypted entries; more than `max_files` entries; declared sizes
above `max_total`; a per-entry compression ratio above `max_ratio` (zip bombs). While
extracting, the bytes that really come out are counted too, since headers can lie.
"""

import csv
import io
import math
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metaiqa.data.samples import Sample
from service.errors import ServiceError

CHUNK = 1 << 16
LABEL_COLUMNS = ("filename", "mos")


class BadArchive(ServiceError):
    """The upload is not a usable zip, or holds an unsafe/malformed entry or label file."""

    http_status = 422


class ArchiveTooLarge(ServiceError):
    http_status = 413


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 2000
    max_total: int = 500 * 2**20
    max_ratio: float = 200.0


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path of a zip entry, or BadArchive when it could land outside the target."""
    if not name or "\x00" in name or "\\" in name:
        raise BadArchive(f"unsafe path in archive: {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise BadArchive(f"unsafe path in archive: {name!r}")
    return p


def _skip(p: PurePosixPath) -> bool:
    return p.parts[0] == "__MACOSX" or p.name.startswith("._") or p.name == ".DS_Store"


def extract_archive(data: bytes, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Check every entry, then extract the regular files under `dest`; returns their paths."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise BadArchive(f"upload is not a readable zip archive ({exc})") from None
    with zf:
        entries = []
        for info in zf.infolist():
            p = safe_member_path(info.filename)
            if info.is_dir() or _skip(p):
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BadArchive(f"archive entry {info.filename!r} is a symbolic link; not allowed")
            if info.flag_bits & 0x1:
                raise BadArchive(f"archive entry {info.filename!r} is encrypted")
            entries.append((info, p))
            if len(entries) > limits.max_files:
                raise ArchiveTooLarge(f"archive holds more than {limits.max_files} files")
        declared = sum(info.file_size for info, _ in entries)
        if declared > limits.max_total:
            raise ArchiveTooLarge(
                f"archive expands to {declared} bytes, more than the limit of {limits.max_total} bytes"
            )
        for info, _ in entries:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise ArchiveTooLarge(
                    f"archive entry {info.filename!r} expands {ratio:.0f}x (limit {limits.max_ratio:.0f}x); "
                    "refusing a likely zip bomb"
                )
        dest = Path(dest).resolve()
        written, out = 0, []
        for info, p in entries:
            target = (dest / p).resolve()
            if not target.is_relative_to(dest):
                raise BadArchive(f"unsafe path in archive: {info.filename!r}")
            if target.exists():
                raise BadArchive(f"archive holds {info.filename!r} twice")
            target.parent.mkdir(parents=True, exist_ok=True)
            size = 0
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        written += len(chunk)
                        if size > info.file_size or written > limits.max_total:
                            raise ArchiveTooLarge(
                                f"archive entry {info.filename!r} expands beyond its declared size or the "
                                f"total limit of {limits.max_total} bytes"
                            )
                        dst.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
                raise BadArchive(f"archive entry {info.filename!r} cannot be read ({exc})") from None
            out.append(target)
        return out


def find_label_file(files: list[Path], root: Path) -> Path:
    csvs = [f for f in files if f.suffix.lower() == ".csv"]
    if len(csvs) != 1:
        found = ", ".join(str(f.relative_to(root)) for f in csvs) or "none"
        raise BadArchive(f"the archive must hold exactly one CSV file with columns filename,mos; found {found}")
    return csvs[0]


def read_labels(csv_path: Path, root: Path, max_rows: int) -> list[Sample]:
    """Rows `filename,mos[,group]`; filenames relative to the CSV's folder and inside the archive."""
    root = root.resolve()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise BadArchive(f"{csv_path.name}: not a UTF-8 text file ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise BadArchive(f"{csv_path.name}: missing column(s) {', '.join(missing)}; header is {header}")
    reader.fieldnames = header
    samples, seen = [], set()
    for line, row in enumerate(reader, start=2):
        if len(samples) >= max_rows:
            raise ArchiveTooLarge(f"{csv_path.name}: more than {max_rows} rows")
        name = (row.get("filename") or "").strip()
        if not name:
            raise BadArchive(f"{csv_path.name} line {line}: empty filename")
        rel = safe_member_path(name)
        path = (csv_path.parent / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise BadArchive(f"{csv_path.name} line {line}: {name!r} is not a file in the archive")
        if path in seen:
            raise BadArchive(f"{csv_path.name} line {line}: {name!r} listed twice")
        seen.add(path)
        raw = (row.get("mos") or "").strip()
        try:
            mos = float(raw)
        except ValueError:
            mos = math.nan
        if not math.isfinite(mos):
            raise BadArchive(f"{csv_path.name} line {line}: mos {raw!r} is not a finite number")
        group = (row.get("group") or "").strip() or None
        samples.append(Sample(path=path, mos=mos, group=group))
    if len(samples) < 3:
        raise BadArchive(f"{csv_path.name}: {len(samples)} labelled images; at least 3 are needed")
    return samples

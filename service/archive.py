"""Unpack an uploaded validation archive (zip of images + CSV `filename,mos`) without trusting it.

Refused before anything is written: entries with absolute paths, `..`, backslashes, drive
letters or NUL; names no common file system can hold (a component over 255 bytes, a path over
1024); the same path twice, or one path both a file and a folder (`a.jpg` and `a.jpg/b.jpg`);
symlinks; encrypted entries; more than `max_files` entries; declared sizes above `max_total`;
a per-entry compression ratio above `max_ratio` (zip bombs). While extracting, the bytes that
really come out are counted too, since headers can lie, and any file-system refusal becomes a
BadArchive naming the entry. Labels: MOS must be finite and within +-1e12.

Shared by the upload jobs (POST /v1/validate, POST /v1/fine-tune): `read_archive_form` (the
multipart field `archive` and the other fields), `int_field`, `unpack_job_input` (extract into
the job's folder with the validate_* limits, recording its disk use, and read the labels).
"""

import csv
import io
import math
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metaiqa.service.errors import BadField, ServiceError

from metaiqa.data.labelcsv import DISTORTION_COLUMNS, SCENE_COLUMNS, ConflictingColumns, pick_alias
from metaiqa.data.samples import Sample

CHUNK = 1 << 16
LABEL_COLUMNS = ("filename", "mos")
MAX_NAME_BYTES = 255  # one path component (NAME_MAX of common file systems)
MAX_PATH_BYTES = 1024
MAX_ABS_VALUE = 1e12  # MOS bound, as metaiqa.evaluation.report.MAX_ABS_VALUE (not imported: keeps scipy out of start-up)


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


def _shown(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:60] + "..." + name[-10:])


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path of a zip entry, or BadArchive when it could land outside the target
    or could not be created on any common file system (over-long names)."""
    if not name or "\x00" in name or "\\" in name:
        raise BadArchive(f"unsafe path in archive: {_shown(name)}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise BadArchive(f"unsafe path in archive: {_shown(name)}")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise BadArchive(f"path in archive longer than {MAX_PATH_BYTES} bytes: {_shown(name)}")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in p.parts):
        raise BadArchive(f"a file or folder name in archive path {_shown(name)} is longer than {MAX_NAME_BYTES} bytes")
    return p


def _skip(p: PurePosixPath) -> bool:
    return p.parts[0] == "__MACOSX" or p.name.startswith("._") or p.name == ".DS_Store"


def _check_entries(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every entry's path, type and sizes checked before anything is written."""
    entries = []
    for info in zf.infolist():
        p = safe_member_path(info.filename)
        if info.is_dir() or _skip(p):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BadArchive(f"archive entry {_shown(info.filename)} is a symbolic link; not allowed")
        if info.flag_bits & 0x1:
            raise BadArchive(f"archive entry {_shown(info.filename)} is encrypted")
        entries.append((info, p))
        if len(entries) > limits.max_files:
            raise ArchiveTooLarge(f"archive holds more than {limits.max_files} files")
    _check_layout([p for _, p in entries])
    declared = sum(info.file_size for info, _ in entries)
    if declared > limits.max_total:
        raise ArchiveTooLarge(f"archive expands to {declared} bytes, more than the limit of {limits.max_total} bytes")
    for info, _ in entries:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveTooLarge(
                f"archive entry {_shown(info.filename)} expands {ratio:.0f}x (limit {limits.max_ratio:.0f}x); "
                "refusing a likely zip bomb"
            )
    return entries


def _check_layout(paths: list[PurePosixPath]) -> None:
    """No path twice, and none both a file and a folder of another entry (`a.jpg`, `a.jpg/b.jpg`)."""
    files: set[PurePosixPath] = set()
    for p in paths:
        if p in files:
            raise BadArchive(f"archive holds {_shown(str(p))} twice")
        files.add(p)
    folders = {parent for p in paths for parent in p.parents if parent != PurePosixPath(".")}
    clash = sorted(files & folders)
    if clash:
        raise BadArchive(f"archive holds {_shown(str(clash[0]))} both as a file and as a folder")


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, written: int, limits: ArchiveLimits) -> int:
    """Write one entry, counting the bytes that really come out; returns the new running total."""
    size = 0
    with zf.open(info) as src, open(target, "xb") as dst:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            written += len(chunk)
            if size > info.file_size or written > limits.max_total:
                raise ArchiveTooLarge(
                    f"archive entry {_shown(info.filename)} expands beyond its declared size or the "
                    f"total limit of {limits.max_total} bytes"
                )
            dst.write(chunk)
    return written


def extract_archive(data: bytes, dest: Path, limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Check every entry, then extract the regular files under `dest`; returns their paths.

    Every failure is a BadArchive/ArchiveTooLarge naming the entry (a file system that refuses
    a name or a path gives BadArchive too, never an unhandled OSError).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise BadArchive(f"upload is not a readable zip archive ({exc})") from None
    with zf:
        entries = _check_entries(zf, limits)
        dest = Path(dest).resolve()
        written, out = 0, []
        for info, p in entries:
            try:
                target = (dest / p).resolve()
                if not target.is_relative_to(dest):
                    raise BadArchive(f"unsafe path in archive: {_shown(info.filename)}")
                target.parent.mkdir(parents=True, exist_ok=True)
                written = _extract_one(zf, info, target, written, limits)
            except FileExistsError:
                raise BadArchive(f"archive holds {_shown(info.filename)} twice") from None
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError, RuntimeError) as exc:
                raise BadArchive(f"archive entry {_shown(info.filename)} cannot be extracted "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
            out.append(target)
        return out


def find_label_file(files: list[Path], root: Path) -> Path:
    csvs = [f for f in files if f.suffix.lower() == ".csv"]
    if len(csvs) != 1:
        found = ", ".join(str(f.relative_to(root)) for f in csvs) or "none"
        raise BadArchive(f"the archive must hold exactly one CSV file with columns filename,mos; found {found}")
    return csvs[0]


def _label_path(name: str, csv_path: Path, root: Path, where: str) -> Path:
    if not name:
        raise BadArchive(f"{where}: empty filename")
    rel = safe_member_path(name)
    try:
        path = (csv_path.parent / rel).resolve()
        found = path.is_relative_to(root) and path.is_file()
    except OSError:
        found = False
    if not found:
        raise BadArchive(f"{where}: {_shown(name)} is not a file in the archive")
    return path


def _mos(raw: str, where: str) -> float:
    try:
        mos = float(raw)
    except ValueError:
        mos = math.nan
    if not math.isfinite(mos):
        raise BadArchive(f"{where}: mos {raw[:40]!r} is not a finite number")
    if abs(mos) > MAX_ABS_VALUE:
        raise BadArchive(f"{where}: mos {raw[:40]!r} is beyond +-{MAX_ABS_VALUE:g}; rescale the scores")
    return mos


def _label_rows(reader: csv.DictReader, csv_path: Path, root: Path, max_rows: int) -> list[Sample]:
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise BadArchive(f"{csv_path.name}: missing column(s) {', '.join(missing)}; header is {header[:20]}")
    reader.fieldnames = header
    samples, seen = [], set()
    for line, row in enumerate(reader, start=2):
        if len(samples) >= max_rows:
            raise ArchiveTooLarge(f"{csv_path.name}: more than {max_rows} rows")
        where = f"{csv_path.name} line {line}"
        name = (row.get("filename") or "").strip()
        path = _label_path(name, csv_path, root, where)
        if path in seen:
            raise BadArchive(f"{where}: {_shown(name)} listed twice")
        seen.add(path)
        mos = _mos((row.get("mos") or "").strip(), where)
        cells = {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
        try:  # the same column names as the CLI's labelled CSVs (scene/content/ref_id, distortion/group)
            group = pick_alias(cells, DISTORTION_COLUMNS, where)
            content = pick_alias(cells, SCENE_COLUMNS, where)
        except ConflictingColumns as exc:
            raise BadArchive(str(exc)) from None
        samples.append(Sample(path=path, mos=mos, group=group, ref_id=content))
    return samples


def read_labels(csv_path: Path, root: Path, max_rows: int) -> list[Sample]:
    """Rows `filename,mos[,scene][,distortion]`; filenames relative to the CSV's folder and inside the
    archive. `scene` (optional; also `content` or `ref_id`) names what an image shows: bootstrap
    intervals and splits keep a scene's images together (without it every image is its own scene).
    `distortion` (also `group`) names the distortion type."""
    root = root.resolve()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as exc:
        raise BadArchive(f"{csv_path.name}: not a UTF-8 text file ({exc})") from None
    try:
        samples = _label_rows(csv.DictReader(io.StringIO(text)), csv_path, root, max_rows)
    except csv.Error as exc:
        raise BadArchive(f"{csv_path.name}: not a readable CSV file ({exc})") from None
    if len(samples) < 3:
        raise BadArchive(f"{csv_path.name}: {len(samples)} labelled images; at least 3 are needed")
    return samples


# ---------------------------------------------------------------------------- upload jobs


def archive_limits(settings) -> ArchiveLimits:
    return ArchiveLimits(max_files=settings.validate_max_files, max_total=settings.validate_max_uncompressed_bytes,
                         max_ratio=settings.validate_max_ratio)


async def read_archive_form(request, settings) -> tuple[object, dict]:
    """(the UploadFile in multipart field `archive`, the other fields); BadField without one."""
    from metaiqa.service.deps import read_form
    from starlette.datastructures import UploadFile

    form = await read_form(request, settings)
    archive = form.get("archive")
    if not isinstance(archive, UploadFile):
        raise BadField("expected a zip file in multipart field 'archive'")
    return archive, {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}


def _number_field(fields: dict, name: str, default, lo, hi, parse, kind: str):
    raw = fields.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(str(raw))
    except ValueError:
        raise BadField(f"{name} {str(raw)[:40]!r} is not {kind}") from None
    if not lo <= value <= hi:  # NaN fails too
        raise BadField(f"{name} {value} is outside [{lo}, {hi}]")
    return value


def int_field(fields: dict, name: str, default: int, lo: int, hi: int) -> int:
    """An optional integer form field within [lo, hi]; BadField naming it otherwise."""
    return _number_field(fields, name, default, lo, hi, int, "an integer")


def float_field(fields: dict, name: str, default: float, lo: float, hi: float) -> float:
    """An optional number form field within [lo, hi] (NaN refused); BadField naming it otherwise."""
    return _number_field(fields, name, default, lo, hi, float, "a number")


def unpack_job_input(data: bytes, job, store, settings, max_rows: int | None = None) -> list[Sample]:
    """Extract an upload into `job.dir/input` and read its labels (run it off the event loop);
    the job's disk use is recorded in `store` as it grows."""
    root = job.dir / "input"
    root.mkdir()
    store.set_input_size(job, len(data))
    files = extract_archive(data, root, archive_limits(settings))
    store.set_input_size(job, sum(f.stat().st_size for f in files))
    return read_labels(find_label_file(files, root.resolve()), root, max_rows or settings.validate_max_files)

"""Writing and reading metaiqa's own files: atomic writes and JSON sidecars with a format check.

`atomic_write_bytes` writes a temp file in the target folder and renames it over the target,
so a reader (or a run killed at any moment) sees either the old or the new file, never half
of one. The temp file is created with mode 0o666 and the kernel applies the process umask,
exactly as for `open(path, "w")`: no umask is read or changed (changing it is process-wide and
races with other threads), and files stay readable by a service user where the umask allows.

`read_json_file` reads a JSON object that carries a "format" key and raises the caller's
exception class, naming the file, for every way it can be wrong.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Any

from metaiqa.errors import MetaIQAError

_TEMP_TRIES = 20


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusive temp file beside `path` (created with 0o666 & ~umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_TEMP_TRIES):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp name beside {path} after {_TEMP_TRIES} tries")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every OS/filesystem lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temp file + rename (parents are created).

    `durable=False` skips the fsyncs: still atomic for readers, but a power cut may leave the
    old version (fine for regenerable files such as synthetic images).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


class OutputNotWritable(MetaIQAError):
    """An output folder the user named cannot be created or written (a file in its place, no permission)."""


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder `path` (and parents) and prove a file can be written in it, before any work.

    Raises OutputNotWritable naming `what` (e.g. "--out") and the reason: a file in its place, a
    parent that is a file, no permission, a read-only file system.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputNotWritable(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = _open_temp(path / "write-test")
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(f"{what} {path} is not a writable folder ({exc.strerror or exc})") from None
    return path


def rescue_dir(prefix: str) -> Path:
    """A new private folder for results that could not be written where the user asked:
    under ~/.cache/metaiqa/rescued if possible, else the system temp folder."""
    import tempfile

    for base in (Path.home() / ".cache" / "metaiqa" / "rescued", Path(tempfile.gettempdir())):
        try:
            base.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        except OSError:
            continue
    raise OutputNotWritable(f"no writable folder for rescued results (tried ~/.cache/metaiqa/rescued and {tempfile.gettempdir()})")


def json_bytes(obj: Any) -> bytes:
    """The canonical way metaiqa writes JSON files: indented, sorted keys, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any, *, durable: bool = True) -> None:
    atomic_write_bytes(path, json_bytes(obj), durable=durable)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json_file(
    path: str | os.PathLike,
    formats: str | Collection[str],
    *,
    error: type[MetaIQAError] = MetaIQAError,
    what: str = "metaiqa file",
) -> dict[str, Any]:
    """A JSON object whose "format" is one of `formats`; else `error` naming the file and the fault.

    Missing file, unreadable file, invalid JSON/UTF-8, a non-object top level and a foreign or
    missing "format" each get their own message.
    """
    path = Path(path)
    wanted = (formats,) if isinstance(formats, str) else tuple(formats)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
        obj = json.loads(text)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc})") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{path}: {what} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(obj, dict):
        raise error(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    found = obj.get("format")
    if found not in wanted:
        shown = repr(found)[:80]
        raise error(f"{path}: not a {what} (format {shown}; expected {' or '.join(wanted)})")
    return obj

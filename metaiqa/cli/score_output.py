"""What `metaiqa score` / `metaiqa gate` print on stdout, and the path lists they read.

`ScoreWriter` streams: table, csv and jsonl rows are written and flushed as each result
arrives (json is one array, so it is written at the end). Writes go through tqdm's
external-write mode, so a progress bar on the same terminal is not garbled.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from metaiqa.errors import InvalidInput

log = logging.getLogger(__name__)

SCORE_FORMATS = ("table", "json", "jsonl", "csv")
GATE_FORMATS = ("table", "json", "csv")
SCORE_CSV_COLUMNS = ("path", "score", "width", "height", "error")
GATE_CSV_COLUMNS = ("path", "score", "result", "error")
_TABLE_WIDTHS = (6, 5, 6)  # score, width, height; path and error follow unpadded (rows stream)


class PathListError(InvalidInput):
    """A --files-from list that does not exist or cannot be read."""


def read_path_list(source: str) -> list[str]:
    """The entries of a path list (`-` = stdin), one per line.

    Surrounding whitespace is stripped; blank lines and lines starting with `#` are skipped.
    Lines are decoded like file names (os.fsdecode), so names that are not UTF-8 still work.
    """
    if source == "-":
        if sys.stdin is None:
            raise PathListError("'-' reads paths from stdin, but there is no stdin")
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
        data = stream.read() if stream is not None else os.fsencode(sys.stdin.read())
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise PathListError(f"--files-from {source}: is a folder; give a text file with one path per line")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PathListError(f"--files-from {source}: file not found") from None
        except OSError as exc:
            raise PathListError(f"--files-from {source}: cannot read ({exc.strerror or exc})") from None
    out = []
    for raw in data.splitlines():
        line = os.fsdecode(raw).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def fmt_score(score: float | None) -> str:
    return "-" if score is None else f"{score:.4f}"


def print_table(header: list[str], lines: list[list[str]], out: TextIO | None = None) -> None:
    """A table aligned over all its rows (for output that is only complete at the end)."""
    out = out or sys.stdout
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    for line in [header, *lines]:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")


def _table_line(cells: list[str]) -> str:
    fixed = [c.ljust(w) for c, w in zip(cells[:3], _TABLE_WIDTHS, strict=True)]
    return "  ".join(fixed + [c for c in cells[3:] if c]).rstrip() + "\n"


class ScoreWriter:
    """`metaiqa score` rows on stdout in one of SCORE_FORMATS; call write() per row, close() once."""

    def __init__(self, fmt: str, model: str, out: TextIO | None = None) -> None:
        if fmt not in SCORE_FORMATS:
            raise InvalidInput(f"unknown output format {fmt!r}; known: {', '.join(SCORE_FORMATS)}")
        self.fmt, self.model, self.out = fmt, model, out or sys.stdout
        self.rows: list[dict[str, Any]] = []  # kept for json only
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        self._started = False

    def _emit(self, text: str | None = None, csv_row: list[Any] | None = None) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self.out):
            if csv_row is not None:
                self._csv.writerow(csv_row)
            else:
                self.out.write(text)
            self.out.flush()

    def _header(self) -> None:
        if self._started:
            return
        self._started = True
        if self.fmt == "table":
            self._emit(_table_line(["score", "width", "height", "path", "error"]))
        elif self.fmt == "csv":
            self._emit(csv_row=list(SCORE_CSV_COLUMNS))

    def write(self, row: dict[str, Any]) -> None:
        row = {k: v for k, v in row.items() if not k.startswith("_")}
        self._header()
        if self.fmt in ("json", "jsonl"):
            row["model"] = self.model
            if self.fmt == "json":
                self.rows.append(row)
            else:
                self._emit(json.dumps(row) + "\n")
        elif self.fmt == "csv":
            score = "" if row["score"] is None else row["score"]
            self._emit(csv_row=[row["path"], score, row["width"] or "", row["height"] or "", row["error"] or ""])
        else:
            cells = [fmt_score(row["score"]), str(row["width"] or "-"), str(row["height"] or "-"), row["path"]]
            self._emit(_table_line([*cells, row["error"] or ""]))

    def close(self) -> None:
        self._header()
        if self.fmt == "json":
            self._emit(json.dumps(self.rows, indent=2) + "\n")


def write_gate(rows: list[dict[str, Any]], fmt: str, report: dict[str, Any], out: TextIO | None = None) -> None:
    """The gate's per-image results: table, json (the whole report) or csv (path,score,result,error)."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump({**report, "results": rows}, out, indent=2)
        out.write("\n")
        return
    result = {True: "pass", False: "fail", None: "error"}
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(GATE_CSV_COLUMNS)
        for r in rows:
            writer.writerow([r["path"], "" if r["score"] is None else r["score"], result[r["passed"]], r.get("error") or ""])
        return
    print_table(
        ["result", "score", "path", "note"],
        [[result[r["passed"]].upper(), fmt_score(r["score"]), r["path"], r.get("error") or ""] for r in rows],
        out,
    )


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a file that could not be scored (the OS message for OSErrors)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class HeatmapWriter:
    """An overlay PNG per scored row (NAME.METHOD.png, unique names); the score drawn on it is the
    row's (the scorer's backend, e.g. int8), the map the float32 model's over the same views."""

    def __init__(self, scorer, out_dir: Path, method: str | None, crops: int | None = None) -> None:
        from metaiqa.inference.heatmap import default_method

        self.scorer, self.out_dir, self.crops = scorer, out_dir, crops or scorer.crops
        self.method = method or default_method(scorer.preprocess)
        self.used: set[str] = set()
        out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        """Adds row["heatmap"] (the PNG's path); a file that fails now is logged, not raised."""
        from metaiqa.errors import InvalidInput
        from metaiqa.inference.decode import DecodeError, read_image_file
        from metaiqa.inference.heatmap import explain, overlay_png
        from metaiqa.models.checkpoint import atomic_write_bytes

        if row["score"] is None:
            return
        stem, method = Path(row["path"]).stem, self.method
        name, k = f"{stem}.{method}.png", 1
        while name in self.used:
            k += 1
            name = f"{stem}-{k}.{method}.png"
        self.used.add(name)
        try:
            image = read_image_file(row["path"], self.scorer.limits)
            res = explain(self.scorer.model, image, self.scorer.preprocess, method, crops=self.crops)
            atomic_write_bytes(self.out_dir / name, overlay_png(image, res.heat, method=method, score=row["score"]))
            row["heatmap"] = str(self.out_dir / name)
        except (DecodeError, InvalidInput, OSError) as exc:  # file changed since scoring, or the folder is not writable
            log.warning("no heatmap for %s: %s", row["path"], describe_error(exc))

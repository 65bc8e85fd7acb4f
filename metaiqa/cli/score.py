"""`metaiqa score` and `metaiqa gate`: score image files, or pass/fail them against a threshold.

Exit codes. score: 0 if at least one image was scored, 2 if none could be (bad input or
usage) or, with --strict, if any input could not be scored. gate: 0 if failures <=
--max-failures, 1 if more failed, 2 for usage errors or any unreadable input -- distinct from
"images failed the gate" so a pipeline can tell them apart. Results go to stdout (score's
table, csv and jsonl rows as each batch finishes); progress, warnings and logs go to stderr.
Inputs: PATH arguments, `-` (paths on stdin) and --files-from FILE, one path per line.
"""

import argparse
import glob
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaiqa.cli.score_output import (
    GATE_FORMATS,
    SCORE_FORMATS,
    HeatmapWriter,
    ScoreWriter,
    describe_error,
    read_path_list,
    write_gate,
)

log = logging.getLogger("metaiqa.cli.score")

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE = 0, 1, 2
# Every file extension Pillow registers for the accepted formats (inference.decode.PHOTO_FORMATS),
# spelled out so `metaiqa --help` does not import Pillow; a test keeps the two in step.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".avif", ".avifs", ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".tga", ".icb", ".vda", ".vst", ".qoi",
})
PROGRESS_MIN = 5  # show a progress bar from this many images on
# (the bundled names are spelled out here: importing metaiqa.models.pretrained would load torch)
MODEL_HELP = (
    "metaiqa-default (bundled, used when --model is not given): trained on human opinion scores of real "
    "photos, scores the whole image; metaiqa-prior (bundled): the synthetic-only meta-learned prior, scores "
    "one centre crop, a starting point for fine-tuning; or a name in --models-dir, or a checkpoint path"
)

SCORE_EPILOG = """\
examples:
  metaiqa score photo.jpg                          # the bundled metaiqa-default
  metaiqa score photo.jpg --model metaiqa-prior    # the bundled synthetic-only prior
  metaiqa score photo.jpg --model runs/prior/best.safetensors
  metaiqa score photos/ 'shots/**/*.png' --format json > scores.json
  metaiqa score photos/ --format csv --crops 4 --heatmap-dir heat/
  metaiqa score photos/ --format json | jq '.[] | select(.score < 0.4) | .path'
  find shots/ -name '*.jpg' | metaiqa score - --format jsonl    # paths on stdin, one JSON line each
  metaiqa score --files-from list.txt --strict                    # exit 2 if any file is unreadable

Paths may also come from stdin (`-`) or a file (--files-from FILE): one per line, relative to the
current folder; blank lines and lines starting with # are skipped. table, csv and jsonl rows are
printed as each batch of images (--batch-size) finishes, also with --heatmap-dir.
Folders are searched recursively for image files (jpg, png, webp, avif, tif, bmp, gif, ...);
quote globs so the shell does not expand them (** works). Unreadable files, and images the
model's policy refuses (longer than 12:1, whatever the model), are reported per file
(error column / "error" key) and never stop the batch. Exit code 0 if at least one image was
scored, 2 if none could be; with --strict, 2 if any input could not be scored.
"""

GATE_EPILOG = """\
examples:
  metaiqa gate upload/*.jpg --min-score 0.45 --model shop-v2 --models-dir models/
  metaiqa gate batch/ --min-score 0.5 --max-failures 3 --format json > gate.json
  metaiqa gate new.png --min-score 0.6 && publish new.png
  metaiqa gate --files-from batch.txt --min-score 0.5 --format csv > gate.csv   # path,score,result,error

Exit codes: 0 = at most --max-failures images scored below --min-score;
1 = more failed; 2 = usage error or an input could not be read (checked before the gate).
"""


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"scores lie in [0, 1]; got {value}")
    return value


def add_models_dir_arg(p: argparse.ArgumentParser) -> None:
    """--models-dir, shared by every command that names models (score, gate, calibrate)."""
    p.add_argument(
        "--models-dir",
        type=Path,
        default=os.environ.get("METAIQA_MODELS_DIR") or None,
        metavar="DIR",
        help="folder of named checkpoints NAME.safetensors (default: $METAIQA_MODELS_DIR)",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="image files, folders (recursive), quoted globs, or - to read paths from stdin (one a line)")
    p.add_argument("--files-from", metavar="FILE", action="append", default=[],
                   help="read paths from FILE, one a line (blank lines and # comments skipped; repeatable)")
    p.add_argument("--model", metavar="NAME|CKPT", help=MODEL_HELP)
    add_models_dir_arg(p)
    p.add_argument(
        "--crops",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="average N crops spread over each image (center_crop models such as metaiqa-prior; default 1; "
        "whole-image models already cover the frame)",
    )
    p.add_argument("--batch-size", type=_int_at_least(1), default=16, metavar="N", help="images per forward pass")
    p.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N", help="torch CPU threads")
    p.add_argument(
        "--backend", choices=("auto", "torch", "onnx", "int8"), default="auto",
        help="auto (default): the model's int8 export if it has one (NAME.int8.onnx beside it), "
        "else onnx, else torch; onnx: ONNX Runtime on a hash-verified float32 export "
        "(NAME.onnx beside the checkpoint, as metaiqa-default ships, else exported once into ~/.cache/metaiqa; "
        "runs with an export skip "
        "loading torch); int8: the int8 export only; torch: eager PyTorch",
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    """Add `score` and `gate` to the `metaiqa` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "score",
        help="score images (quality in [0, 1], higher is better)",
        description="Score image quality with a MetaIQA checkpoint: 0 = worst, 1 = best.",
        epilog=SCORE_EPILOG,
        formatter_class=fmt,
    )
    _add_model_args(p)
    p.add_argument("--format", choices=SCORE_FORMATS, default="table",
                   help="output on stdout: table, csv or jsonl (one JSON object a line) as results arrive, "
                   "or json (one array at the end)")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 (and say how many) if any input could not be scored; default: report it "
                   "in its row and exit 0 when at least one image was scored")
    p.add_argument(
        "--heatmap-dir", type=Path, metavar="DIR",
        help="also write a heat-map overlay PNG per image (NAME.METHOD.png; a colour bar and the score below it)",
    )  # fmt: skip
    p.add_argument(
        "--heatmap-method",
        choices=("views", "gradient", "gradcam"),
        default=None,
        help="views: local scores on the fixed 0-1 scale, red = bad, blue = good (default for whole-image "
        "models); gradient: |d score/d pixel|, relative to each image (default for centre-crop models); "
        "gradcam: coarser, relative",
    )
    p.set_defaults(func=cmd_score, parser=p)

    g = sub.add_parser(
        "gate",
        help="pass/fail images against a minimum score (exit 0/1, 2 on bad input)",
        description="Quality gate for CI and upload pipelines: every image must score at least --min-score.",
        epilog=GATE_EPILOG,
        formatter_class=fmt,
    )
    _add_model_args(g)
    g.add_argument("--min-score", type=_unit_float, required=True, metavar="T", help="pass if score >= T")
    g.add_argument(
        "--max-failures",
        type=_int_at_least(0),
        default=0,
        metavar="K",
        help="images allowed below T before the gate fails (default 0)",
    )
    g.add_argument("--format", choices=GATE_FORMATS, default="table",
                   help="output on stdout (csv columns: path,score,result,error; result = pass, fail or error)")
    g.set_defaults(func=cmd_gate, parser=g)


# --- inputs -----------------------------------------------------------------------------------


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursive, image extensions) and globs -> (unique paths, [(spec, problem)]).

    An explicitly named file is taken whatever its extension (it is then reported if it is
    not an image); folder and glob matches are filtered to image extensions.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []

    def walk(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and _is_image_name(p))

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            images = walk(path)
            if not images:
                problems.append((spec, "folder holds no image files"))
            found += images
        elif glob.has_magic(spec):
            matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
            images = [m for m in matches if m.is_file() and _is_image_name(m)]
            for m in matches:
                if m.is_dir():
                    images += walk(m)
            if not images:
                problems.append((spec, "no image files match this pattern"))
            found += images
        else:
            problems.append((spec, "no such file or directory"))
    unique = list(dict.fromkeys(found))
    return unique, problems


def input_specs(args: argparse.Namespace) -> list[str]:
    """PATH arguments with `-` replaced by the paths on stdin, then the --files-from lists' entries."""
    specs: list[str] = []
    for spec in args.paths:
        specs += read_path_list("-") if spec == "-" else [spec]
    for source in args.files_from:
        specs += read_path_list(source)
    return specs


def _load_scorer(args: argparse.Namespace):
    """The scorer for this run: the light ONNX path (no torch) when it applies, else `Scorer`."""
    from metaiqa.inference.backends import resolve_backend_name
    from metaiqa.models.pretrained import resolve_checkpoint

    path = resolve_checkpoint(args.model, args.models_dir)
    backend = getattr(args, "backend", "auto")
    if resolve_backend_name(backend) in ("onnx", "int8") and getattr(args, "heatmap_dir", None) is None:
        from metaiqa.inference.lite import LiteScorer
        from metaiqa.inference.onnx_load import INT8_USE

        scorer = LiteScorer.open(path, threads=args.threads, int8=INT8_USE[backend])
        if scorer is not None:
            log.info("model %s (%s), preprocess %s, %s (light path)", scorer.name, path, scorer.preprocess,
                     scorer.backend.name)
            return scorer
    from metaiqa.inference.scorer import Scorer

    scorer = Scorer.from_checkpoint(path, threads=args.threads, backend=backend)
    log.info("model %s (%s), preprocess %s, %s", scorer.name, path, scorer.preprocess, scorer.backend.name)
    return scorer


def iter_score_rows(scorer, paths: list[Path], args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """One row per path, yielded as each batch finishes: score, size, or the error that file raised.

    The next batch is read and prepared on a worker thread while this one is scored."""
    from tqdm import tqdm

    quiet = getattr(args, "quiet", False)
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=quiet or len(paths) < PROGRESS_MIN) as bar:
        done = 0
        for results in scorer.iter_paths_safe(paths, crops=args.crops, batch_size=args.batch_size):
            chunk = paths[done : done + len(results)]
            done += len(results)
            bar.update(len(results))
            for path, res in zip(chunk, results, strict=True):
                yield _row(path, res)


def _row(path: Path, res: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path), "score": None, "width": None, "height": None}
    if isinstance(res, Exception):
        row["error"] = describe_error(res)
        row["error_type"] = type(res).__name__
        log.warning("cannot score %s: %s", path, row["error"])
    else:
        row.update(score=round(res.score, 6), width=res.width, height=res.height, error=None)
        row["_raw"] = res.score  # the gate compares the unrounded score
    return row


def _problem_rows(problems: list[tuple[str, str]]) -> list[dict[str, Any]]:
    for spec, why in problems:
        log.warning("%s: %s", spec, why)
    return [
        {"path": spec, "score": None, "width": None, "height": None, "error": why, "error_type": "InputNotFound"}
        for spec, why in problems
    ]


# --- commands ---------------------------------------------------------------------------------


def _collect_inputs(args: argparse.Namespace) -> tuple[list[Path], list[tuple[str, str]]]:
    if not args.paths and not args.files_from:
        args.parser.error("give at least one PATH, - (paths on stdin) or --files-from FILE")
    return expand_inputs(input_specs(args))


def cmd_score(args: argparse.Namespace) -> int:
    paths, problems = _collect_inputs(args)
    if not paths:
        writer = ScoreWriter(args.format, args.model or "")
        for row in _problem_rows(problems):
            writer.write(row)
        writer.close()
        sys.stderr.write("metaiqa score: error: no image files to score\n")
        return EXIT_USAGE
    if args.heatmap_dir is not None:
        from metaiqa.io import ensure_writable_dir

        ensure_writable_dir(args.heatmap_dir, "--heatmap-dir")  # before scoring, not after
    scorer = _load_scorer(args)
    heat = HeatmapWriter(scorer, args.heatmap_dir, args.heatmap_method, args.crops) if args.heatmap_dir else None
    writer = ScoreWriter(args.format, scorer.name)
    n_rows = n_ok = 0
    for row in _problem_rows(problems):
        n_rows += 1
        writer.write(row)
    for row in iter_score_rows(scorer, paths, args):
        if heat is not None:
            heat.write(row)
        writer.write(row)
        n_rows += 1
        n_ok += row["score"] is not None
    writer.close()
    return _score_exit(n_ok, n_rows, args.strict)


def _score_exit(n_ok: int, n_rows: int, strict: bool) -> int:
    n_bad = n_rows - n_ok
    if n_bad:
        log.warning("scored %d of %d inputs; %d could not be read", n_ok, n_rows, n_bad)
    if strict and n_bad:
        sys.stderr.write(f"metaiqa score: error: {n_bad} of {n_rows} inputs could not be scored (--strict)\n")
        return EXIT_USAGE
    return EXIT_OK if n_ok else EXIT_USAGE


def cmd_gate(args: argparse.Namespace) -> int:
    paths, problems = _collect_inputs(args)
    rows = _problem_rows(problems)
    model = args.model or ""
    if paths:
        scorer = _load_scorer(args)
        model = scorer.name
        rows += list(iter_score_rows(scorer, paths, args))
    for r in rows:
        r["passed"] = None if r["score"] is None else bool(r.pop("_raw") >= args.min_score)
    n_pass = sum(r["passed"] is True for r in rows)
    n_fail = sum(r["passed"] is False for r in rows)
    n_error = sum(r["passed"] is None for r in rows)
    if n_error or not rows:
        verdict, code = "error", EXIT_USAGE
    elif n_fail > args.max_failures:
        verdict, code = "fail", EXIT_GATE_FAILED
    else:
        verdict, code = "pass", EXIT_OK
    report = {"verdict": verdict, "model": model, "min_score": args.min_score, "max_failures": args.max_failures,
              "passed": n_pass, "failed": n_fail, "unreadable": n_error}
    write_gate(rows, args.format, report)
    sys.stderr.write(
        f"gate {verdict.upper()}: {n_pass} passed, {n_fail} below {args.min_score} "
        f"(at most {args.max_failures} allowed), {n_error} unreadable\n"
    )
    return code

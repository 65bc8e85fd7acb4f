"""`metaiqa calibrate GOOD_DIR [BAD_DIR]`: suggest a `metaiqa gate --min-score` from your own images.

Scores are relative to a model and to a kind of photo, so a gate threshold is best read off
images the user has already judged. Exit codes: 0 = a threshold was suggested; 2 = usage
error, or no readable image in GOOD_DIR (or in BAD_DIR when one is given). Results go to
stdout; progress, warnings (one per unreadable file) and logs go to stderr.
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from metaiqa.cli.score import _int_at_least, add_models_dir_arg  # one parser per shared flag
from metaiqa.cli.score_output import describe_error
from metaiqa.errors import InvalidInput

log = logging.getLogger("metaiqa.cli.calibrate")

EXIT_OK, EXIT_USAGE = 0, 2
PROGRESS_MIN = 5
POOR_SEPARATION = 0.75  # balanced accuracy below this: warn that the model hardly tells the sets apart

EPILOG = """\
how the threshold is chosen (a gate passes an image when score >= threshold):
  GOOD_DIR only       the --percentile (default 5) of the good scores: about that share of
                      images like yours would be refused
  GOOD_DIR + BAD_DIR  the threshold with the best balanced accuracy, i.e. the mean of
                      "share of good that pass" and "share of bad that fail" (both mistakes
                      weigh the same whatever the folder sizes); the percentile rule is
                      reported next to it
Rates are computed at the printed (rounded) threshold. Folders are searched recursively for
image files; unreadable files are reported one by one and never stop the run.

examples:
  metaiqa calibrate accepted/                          # 5th percentile of accepted images
  metaiqa calibrate accepted/ rejected/ --plot calib.png
  metaiqa calibrate accepted/ rejected/ --model shop-v2 --models-dir models/ --format json
  metaiqa gate incoming/ --min-score 0.4810            # then use the suggested threshold

Exit codes: 0 = threshold suggested; 2 = usage error or no readable image in a folder.
"""


def _percentile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100), got {text!r}") from None
    if not 0.0 <= value < 100.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 100), got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `calibrate` to the `metaiqa` parser."""
    p = sub.add_parser(
        "calibrate",
        help="suggest a gate threshold from images you accept (and reject)",
        description="Score a folder of images you accept (and optionally one you reject) and suggest "
        "the --min-score for `metaiqa gate`, with the pass/fail rates it gives on each folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("good_dir", type=Path, metavar="GOOD_DIR", help="folder of images that should pass")
    p.add_argument(
        "bad_dir", type=Path, nargs="?", metavar="BAD_DIR", help="folder of images that should fail"
    )
    p.add_argument(
        "--percentile",
        type=_percentile,
        default=5.0,
        metavar="P",
        help="percentile of the good scores used as threshold without BAD_DIR, reported with it (default 5)",
    )
    p.add_argument(
        "--plot", type=Path, metavar="FILE", help="write a histogram PNG (good vs bad, threshold line)"
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output on stdout")
    p.add_argument(
        "--model",
        metavar="NAME|CKPT",
        help="checkpoint path, or a name in --models-dir (default: the bundled metaiqa-default); "
        "calibrate with the model the gate will use",
    )
    add_models_dir_arg(p)
    p.add_argument(
        "--crops",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="average N crops per image (center_crop policy); use the same value in the gate",
    )
    p.add_argument(
        "--batch-size", type=_int_at_least(1), default=16, metavar="N", help="images per forward pass"
    )
    p.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N", help="torch CPU threads")
    p.set_defaults(func=cmd_calibrate)


class NotAFolder(InvalidInput):
    """GOOD_DIR / BAD_DIR is not a folder, or holds no image files."""


def image_files(folder: Path, what: str) -> list[Path]:
    """Image files under `folder` (recursive, by extension, sorted); NotAFolder if none."""
    from metaiqa.cli.score import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise NotAFolder(f"{what} {str(folder)!r} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise NotAFolder(f"{what} {str(folder)!r} holds no image files ({exts})")
    return files


def score_sets(model: Any, sets: dict[str, list[Path]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per file: {path, set, score, error}; unreadable files get an error, never raise."""
    from tqdm import tqdm

    total = sum(len(v) for v in sets.values())
    quiet = getattr(args, "quiet", False)
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, unit="img", file=sys.stderr, disable=quiet or total < PROGRESS_MIN) as bar:
        for name, files in sets.items():
            results = model.scorer.score_paths_safe(
                files, crops=args.crops, batch_size=args.batch_size, progress=bar.update
            )
            for path, res in zip(files, results, strict=True):
                row: dict[str, Any] = {"path": str(path), "set": name, "score": None, "error": None}
                if isinstance(res, Exception):
                    row["error"] = describe_error(res)
                    log.warning("cannot score %s: %s", path, row["error"])
                else:
                    row["score"] = float(res.score)
                rows.append(row)
    return rows


def _stats(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    import numpy as np

    mine = [r for r in rows if r["set"] == name]
    scores = [r["score"] for r in mine if r["score"] is not None]
    out: dict[str, Any] = {"images": len(scores), "unreadable": len(mine) - len(scores)}
    if scores:
        out.update(min=min(scores), median=float(np.median(scores)), max=max(scores))
    return out


def _rates(r: Any) -> dict[str, Any]:
    """GateRates -> the JSON block (rates to 4 places; counts exact)."""
    out = r.as_dict()
    for key in ("good_pass_rate", "bad_fail_rate", "balanced_accuracy"):
        if out[key] is not None:
            out[key] = round(out[key], 4)
    return out


def gate_command(args: argparse.Namespace, threshold: float) -> str:
    """The `metaiqa gate` line that applies the threshold with the same model and crops."""
    import shlex

    parts = ["metaiqa", "gate", "PATHS", "--min-score", f"{threshold:g}"]
    if args.model:
        parts += ["--model", str(args.model)]
    if args.models_dir is not None and str(args.models_dir) != os.environ.get("METAIQA_MODELS_DIR"):
        parts += ["--models-dir", str(args.models_dir)]
    if args.crops:
        parts += ["--crops", str(args.crops)]
    return " ".join(p if p == "PATHS" else shlex.quote(p) for p in parts)


def build_report(rows: list[dict[str, Any]], suggestion: Any, model: Any, args: argparse.Namespace) -> dict:
    """Everything `--format json` prints (the table shows the same numbers)."""
    has_bad = suggestion.by_balanced_accuracy is not None
    return {
        "model": model.name,
        "crops": args.crops or 1,
        "method": suggestion.method,
        "threshold": suggestion.chosen.threshold,
        "good": {**_stats(rows, "good"), "pass_rate": round(suggestion.chosen.good_pass_rate, 4)},
        "bad": {**_stats(rows, "bad"), "fail_rate": round(suggestion.chosen.bad_fail_rate, 4)}
        if has_bad
        else None,
        "percentile": {"percentile": suggestion.percentile, **_rates(suggestion.by_percentile)},
        "balanced_accuracy": _rates(suggestion.by_balanced_accuracy) if has_bad else None,
        "gate_command": gate_command(args, suggestion.chosen.threshold),
        "plot": None,
        "results": [{**r, "score": None if r["score"] is None else round(r["score"], 6)} for r in rows],
    }


def _pct(n: int | None, total: int | None) -> str:
    return "-" if not total else f"{n}/{total} {100 * n / total:5.1f}%"


def _set_line(name: str, s: dict[str, Any] | None) -> str:
    unread = f" ({s['unreadable']} unreadable)" if s["unreadable"] else ""
    return (
        f"{name:<10} {s['images']} images scored{unread}: "
        f"min {s['min']:.4f}  median {s['median']:.4f}  max {s['max']:.4f}"
    )


def print_table(report: dict[str, Any]) -> None:
    """The human-readable report on stdout."""
    out = [f"{'model':<10} {report['model']}", _set_line("good", report["good"])]
    if report["bad"]:
        out.append(_set_line("bad", report["bad"]))
    pct = report["percentile"]
    rules = [(pct, f"percentile {pct['percentile']:g} of good", report["method"] == "percentile")]
    if report["balanced_accuracy"]:
        rules.insert(0, (report["balanced_accuracy"], "best balanced accuracy", True))
    header = ["threshold", "rule", "good pass", "bad fail", "balanced acc."]
    lines = [
        [
            f"{r['threshold']:.4f}",
            name + (" (suggested)" if chosen else ""),
            _pct(r["good_passed"], r["good_total"]),
            _pct(r["bad_failed"], r["bad_total"]),
            "-" if r["balanced_accuracy"] is None else f"{r['balanced_accuracy']:.3f}",
        ]
        for r, name, chosen in rules
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out.append("")
    for line in [header, *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    out += ["", f"gate with: {report['gate_command']}"]
    if report["plot"]:
        out.append(f"histogram: {report['plot']}")
    sys.stdout.write("\n".join(out) + "\n")


def write_plot(path: Path, scores: dict[str, list[float]], suggestion: Any, model: str) -> None:
    from metaiqa.evaluation.threshold_plot import histogram_png
    from metaiqa.models.checkpoint import atomic_write_bytes

    extra = {}
    if suggestion.method != "percentile":
        extra[f"percentile {suggestion.percentile:g} of good"] = suggestion.by_percentile.threshold
    label = (
        "best balanced accuracy"
        if suggestion.method != "percentile"
        else f"percentile {suggestion.percentile:g}"
    )
    png = histogram_png(
        scores["good"],
        scores.get("bad"),
        suggestion.chosen.threshold,
        label=label,
        extra=extra,
        title=f"model {model}",
    )
    atomic_write_bytes(path, png)


def _warn_if_poor(accuracy: float | None, model: str) -> None:
    if accuracy is None or accuracy >= POOR_SEPARATION:
        return
    how = (
        "no threshold does better than chance: it scores many bad images above good ones"
        if accuracy <= 0.5
        else "it hardly tells these folders apart"
    )
    log.warning(
        "balanced accuracy is only %.2f with model %s: %s; check the folders, or fine-tune the model "
        "on labelled images of your own (metaiqa fine-tune)",
        accuracy,
        model,
        how,
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from metaiqa.api import load
    from metaiqa.evaluation.threshold import suggest_threshold

    sets = {"good": image_files(args.good_dir, "GOOD_DIR")}
    if args.bad_dir is not None:
        sets["bad"] = image_files(args.bad_dir, "BAD_DIR")
    model = load(args.model, models_dir=args.models_dir, threads=args.threads)
    rows = score_sets(model, sets, args)
    scores = {k: [r["score"] for r in rows if r["set"] == k and r["score"] is not None] for k in sets}
    for name, folder in (("good", args.good_dir), ("bad", args.bad_dir)):
        if name in sets and not scores[name]:
            sys.stderr.write(
                f"metaiqa calibrate: error: no readable image in {folder} ({len(sets[name])} files)\n"
            )
            return EXIT_USAGE
    suggestion = suggest_threshold(scores["good"], scores.get("bad"), percentile=args.percentile)
    report = build_report(rows, suggestion, model, args)
    code = EXIT_OK
    if args.plot is not None:
        try:
            write_plot(args.plot, scores, suggestion, model.name)
            report["plot"] = str(args.plot)
        except OSError as exc:
            log.error("cannot write the plot %s: %s", args.plot, describe_error(exc))
            code = EXIT_USAGE
    if args.format == "json":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
    _warn_if_poor(suggestion.chosen.balanced_accuracy, model.name)
    return code

"""`metaiqa data synth` and `metaiqa data inspect`: build and check synthetic data sets."""

import argparse
import sys

SYNTH_EPILOG = """\
Output layout (KADID-10k style):
  OUT/images/I01.png           pristine crop 1 (wider ids past 99 references)
  OUT/images/I01_10_03.png     crop 1, KADID type id 10 (jpeg), level 3 (1 mildest .. 5 worst)
  OUT/dmos.csv                 dist_img,ref_img,dmos,dist_type,level,<committee metric columns>
  OUT/manifest.json            settings, seed, label committee, crop boxes per reference

dmos is the label-committee score in [0, 1], HIGHER = BETTER (unlike KADID-10k's 1..5
DMOS): the mean of fixed per-metric maps of full-reference metrics against the pristine
crop (see `python -c "import metaiqa.labels; help(metaiqa.labels)"`).

Re-running with the same arguments resumes: finished rows are skipped. Results do not
depend on --workers. References that are not images or are smaller than --size are refused
with an error naming the file (--skip-bad skips them with a warning instead); files without
an image extension (licence notes, ...) are ignored.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add `data synth` and `data inspect` to the `metaiqa` parser."""
    data = sub.add_parser("data", help="build and inspect data sets (synthetic distortions)")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: _usage(data))

    p = dsub.add_parser(
        "synth",
        help="make a KADID-style distorted data set from pristine photos, labelled by a full-reference committee",
        description="Crop pristine reference photos, apply every distortion type at every level, label each "
        "distorted image with a committee of full-reference metrics and write a KADID-style data set.",
        epilog=SYNTH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--references", required=True, metavar="DIR", help="folder of pristine photos (searched recursively)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; resumed if it holds a run)")
    p.add_argument("--crops", type=int, default=1, help="crops per photo, alternating scales 2x/3x the size (default 1)")
    p.add_argument("--size", type=int, default=384, help="crop side in pixels (default 384)")
    p.add_argument("--levels", type=int, default=5, help="levels 1..N per distortion type, N <= 5 (default 5)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for crop positions and distortions (default 0)")
    p.add_argument("--types", default=None, metavar="A,B,...", help="comma-separated distortion types (default: all)")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable references with a warning instead of failing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)

    q = dsub.add_parser(
        "inspect",
        help="per-distortion counts and label ranges of a synthetic data set; flags non-monotone types",
        description="Read DIR/dmos.csv and print, per distortion type and level, the count and the "
        "min/mean/max label; a type whose mean label does not fall with every level is flagged.",
    )
    q.add_argument("dir", metavar="DIR", help="data set folder (holding dmos.csv)")
    q.add_argument("--strict", action="store_true", help="exit 1 if any type is flagged as non-monotone")
    q.set_defaults(func=cmd_inspect)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_synth(args: argparse.Namespace) -> int:
    import json

    from metaiqa.data.synth import SynthSettings, synthesize

    types = tuple(t.strip() for t in args.types.split(",") if t.strip()) if args.types else ()
    settings = SynthSettings(size=args.size, crops=args.crops, levels=args.levels, seed=args.seed, types=types)
    summary = synthesize(
        args.references, args.out, settings, workers=args.workers, skip_bad=args.skip_bad, progress=not args.no_progress
    )
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from metaiqa.data.synth_inspect import format_report, inspect_dataset

    report = inspect_dataset(args.dir)
    sys.stdout.write(format_report(report))
    return 1 if args.strict and report["non_monotone"] else 0

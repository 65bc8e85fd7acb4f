"""`metaiqa fine-tune` (few-shot adaptation of a prior) and `metaiqa validate` (reports)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DATA_HELP = (
    "labelled images: NAME:PATH (NAME = synth, kadid10k, tid2013, koniq10k, livec, biq2021 (its official test "
    "split), biq2021-train, csv) or a bare PATH (folder with manifest.json -> synth, folder with dmos.csv -> "
    "kadid10k, BIQ2021 folder -> biq2021, file.csv -> csv with columns "
    "path,mos[,scene][,distortion][,level]: mos higher = better (in [0,1], else min-max mapped); scene = what "
    "the image shows, kept on one side of every split (aliases content, ref_id); distortion = distortion type "
    "(alias group; it is not the scene); level = 1 mildest, 0 pristine; see README 'Labelled CSV columns')"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add `fine-tune` and `validate` to the `metaiqa` parser."""
    ft = sub.add_parser(
        "fine-tune",
        help="adapt a quality prior to a new distortion or your own labelled images (few-shot)",
        description="Few-shot fine-tuning: takes SHOTS labelled images from --data (whole contents, drawn "
        "at random; the other contents stay untouched) and trains a copy of the prior with Adam on random "
        "crops + flips (MSE + a ranking loss: within content for synthetic data with several levels per "
        "content, across images when every image is its own content, e.g. real photos). "
        "How long to train is chosen on the shots alone, never on test data and never on fewer than two "
        "contents: the shots are split by content into FOLDS folds (each >= 2 contents, >= 3 images); "
        "for each fold a copy trains on the others for EPOCHS epochs and the held-out fold's SROCC is "
        "measured after every epoch; the epoch count with the best mean over folds wins (0 = keep the "
        "prior), and the saved model is a final fit on ALL shots for that many epochs. With too few shots "
        "to hold any out (< 10 images or < 4 contents) nothing is selected: all shots train for the fixed "
        "EPOCHS budget. The rule, the fold curve and the chosen epochs are recorded in the JSON sidecar "
        "with the config and data. Settings: defaults < --config YAML < --set key=value < the flags below.\n\n"
        "Joint mode (the recipe of the bundled default model): a config with a `human:` key, e.g. "
        "configs/fine_tune/default.yaml, trains on ALL human-rated images of --data (validation carved from "
        "them) while keeping synthetic orderings on reference photos; --out is then a run folder with "
        "best/last checkpoints, log.jsonl and resumable state (--resume). See metaiqa/meta/joint.py.",
    )
    ft.add_argument("--prior", metavar="CKPT",
                    help="prior checkpoint (.safetensors with its .json sidecar, e.g. from meta-train) or a model "
                    "name (default: the bundled metaiqa-prior; metaiqa-default, trained on real photos, is the "
                    "better start for photos)")
    ft.add_argument("--data", metavar="SPEC", help=DATA_HELP + "; in joint mode the human-rated training data")
    ft.add_argument("--shots", type=int, metavar="K",
                    help="labelled images used for adaptation; all of them train the final model (default 50)")
    ft.add_argument("--out", required=True, metavar="CKPT",
                    help="where to save the fine-tuned checkpoint (joint mode: the run folder)")
    ft.add_argument("--resume", action="store_true", help="joint mode: continue the run in --out from its state")
    ft.add_argument("--epochs", type=int,
                    help="largest epoch count the k-fold rule tries; with too few shots to select, the fixed "
                    "budget (default 30)")
    ft.add_argument("--lr", type=float, help="Adam learning rate of the backbone (default 0.0001)")
    ft.add_argument("--head-lr", type=float, help="Adam learning rate of the regression head (default 0.001)")
    ft.add_argument("--batch-size", type=int, help="images per step (default 16)")
    ft.add_argument("--folds", type=int,
                    help="content-disjoint folds of the cross-validation choosing the epoch count; fewer when "
                    "the shots have too few contents (default 4)")
    ft.add_argument("--seed", type=int, help="seed of the shots, folds, crops and batch order (default 0)")
    ft.add_argument("--config", metavar="YAML", help="config file, e.g. configs/fine_tune/fewshot.yaml")
    ft.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key (repeatable), e.g. --set ranking_weight=0.5")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_fine_tune)
    _register_validate(sub)


def _register_validate(sub: argparse._SubParsersAction) -> None:
    va = sub.add_parser(
        "validate",
        help="measure a model against labelled images: SROCC/KRCC/PLCC/RMSE, per distortion, report files",
        description="Scores every image of --data with the model's serving preprocessing, then reports SROCC, "
        "KRCC, PLCC (raw and after the VQEG 4-parameter logistic fit), RMSE, bootstrap 95% intervals, a "
        "per-distortion table and, with --splits N > 1, the median over N random content-disjoint subsets "
        "(80% of the contents each). Writes report.json, scatter.png, predictions.csv and a self-contained "
        "report.html to --out.",
    )
    va.add_argument("--model", metavar="NAME|CKPT",
                    help="metaiqa-default (bundled, used when no --model is given: trained on human scores of "
                    "real photos, scores the whole image), metaiqa-prior (bundled synthetic-only meta-learned "
                    "prior), or a checkpoint path")
    va.add_argument("--data", required=True, metavar="SPEC", help=DATA_HELP)
    va.add_argument("--splits", type=int, default=1, help="random content-disjoint subsets (80%% of contents each) to take the median over (default 1: none)")
    va.add_argument("--seed", type=int, default=0, help="seed of the splits and the bootstrap (default 0)")
    va.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals; 0 = off (default 1000)")
    va.add_argument("--crops", type=int, default=1, help="crops spread over each image and averaged, for center_crop models (default 1)")
    va.add_argument("--batch-size", type=int, default=16, help="images scored per forward pass (default 16)")
    va.add_argument("--out", default="report", metavar="DIR", help="folder for report.json, scatter.png, predictions.csv, report.html (default ./report)")
    va.add_argument("--no-report", action="store_true", help="print only; write no files")
    va.add_argument("--format", choices=("table", "json"), default="table", help="what to print on stdout: a readable table or the whole report as JSON (default table)")
    va.add_argument("--no-progress", action="store_true", help="no progress bar")
    va.set_defaults(func=cmd_validate)


def resolve_model(spec: str | None) -> Path:
    """A checkpoint path or a registered model name (None: the bundled default) -> tensor file."""
    from metaiqa.models.pretrained import resolve_checkpoint

    return resolve_checkpoint(spec)


def _is_joint(args: argparse.Namespace) -> bool:
    from metaiqa.config import read_layered_yaml

    from_yaml = bool(args.config) and "human" in read_layered_yaml(args.config)
    return from_yaml or any(o.split("=", 1)[0].strip() == "human" for o in args.overrides)


def cmd_joint(args: argparse.Namespace) -> int:
    """Joint mode: human scores + synthetic orderings (metaiqa.meta.joint), resumable run folder."""
    from metaiqa.config import load_config
    from metaiqa.io import ensure_writable_dir
    from metaiqa.meta.joint import JointConfig, JointTrainer

    ensure_writable_dir(args.out, "fine-tune --out run folder")  # before any training
    overrides = list(args.overrides) + [f"out_dir={args.out}"]
    if args.data:
        overrides.append(f"human={args.data}")
    if args.prior:
        overrides.append(f"init={args.prior}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(JointConfig, args.config, overrides)
    result = JointTrainer(cfg, resume=args.resume, progress=not args.no_progress).run()
    best_step = result["best_step"]
    which = "the starting model: no later step scored higher on validation" if best_step == 0 else \
        f"step {best_step}" if best_step > 0 else "see log.jsonl"
    sys.stdout.write(f"trained to step {result['step']}; saved {result['out_dir']}/best.safetensors = {which} "
                     f"(validation select {result['best_select']:.4f})\n")
    return 0


def cmd_fine_tune(args: argparse.Namespace) -> int:
    from metaiqa.config import load_config
    from metaiqa.data.formats import parse_data_spec
    from metaiqa.meta.finetune import FineTuneConfig, fine_tune_checkpoint
    from metaiqa.models.pretrained import PRIOR_MODEL

    if _is_joint(args):
        return cmd_joint(args)
    if not args.data:
        from metaiqa.errors import InvalidInput

        raise InvalidInput("--data is required (the labelled images to adapt to), unless the config is a joint recipe")

    flags = {"shots": args.shots, "epochs": args.epochs, "lr": args.lr, "head_lr": args.head_lr,
             "batch_size": args.batch_size, "folds": args.folds, "seed": args.seed}
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(FineTuneConfig, args.config, overrides)
    check_checkpoint_out(args.out)
    samples = parse_data_spec(args.data)
    res = fine_tune_checkpoint(resolve_model(args.prior or PRIOR_MODEL), samples, cfg, args.out, data_spec=args.data,
                               progress=not args.no_progress)
    sys.stdout.write(f"saved {res.path}\n" + describe_fine_tune(res.history, res.data))
    if res.rescued_from is not None:
        from metaiqa.io import OutputNotWritable

        asked, reason = res.rescued_from
        raise OutputNotWritable(f"could not write --out {asked} ({reason}); the fine-tuned checkpoint "
                                f"was saved to {res.path} (and its .json sidecar) instead")
    return 0


def check_checkpoint_out(out: str) -> None:
    """Refuse, before training, a --out checkpoint path that cannot be written (OutputNotWritable)."""
    from metaiqa.io import OutputNotWritable, ensure_writable_dir
    from metaiqa.models.checkpoint import checkpoint_paths

    tensor, sidecar = checkpoint_paths(out)
    ensure_writable_dir(tensor.parent, "fine-tune --out folder")
    for path in (tensor, sidecar):
        if path.is_dir():
            raise OutputNotWritable(f"fine-tune --out: {path} is a folder; name a .safetensors file")


def describe_fine_tune(history: dict[str, Any], data: dict[str, Any]) -> str:
    """Plain-text summary of a fine-tune: the shots, the rule and what it chose."""
    train = data["train"]
    lines = [f"  data: {train['n']} shots ({len(train['contents'])} contents), {data['test_images']} images untouched"]
    if history["rule"] == "kfold":
        lines.append(f"  rule: {history['rule_reason']} -> {history['chosen_epochs']} epochs "
                     f"(mean held-out SROCC {_f(history['cv_val_srocc'])}; the prior {_f(history['cv_zero_shot_srocc'])})")
    else:
        lines.append(f"  rule: fixed budget of {history['chosen_epochs']} epochs, no selection ({history['rule_reason']})")
    lines.append(f"  final fit: {history['chosen_epochs']} epochs on all {train['n']} shots, ranking {history['ranking']}")
    return "\n".join(lines) + "\n"


def cmd_validate(args: argparse.Namespace) -> int:
    from metaiqa.data.formats import parse_data_spec
    from metaiqa.evaluation.validate import validate_checkpoint

    if not args.no_report:
        from metaiqa.io import ensure_writable_dir

        ensure_writable_dir(args.out, "validate --out")  # before scoring, not after
    samples = parse_data_spec(args.data)
    report = validate_checkpoint(
        resolve_model(args.model), samples, splits=args.splits, seed=args.seed,
        out_dir=None if args.no_report else Path(args.out), crops=args.crops,
        progress=not args.no_progress, bootstrap=args.bootstrap, batch_size=args.batch_size,
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(format_table(report))
    return 0


def _f(v: Any, width: int = 0) -> str:
    s = "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    return s.rjust(width) if width else s


COLUMNS = (("SROCC", "srocc"), ("KRCC", "krcc"), ("PLCC", "plcc"), ("PLCC-fit", "plcc_fitted"),
           ("RMSE-fit", "rmse_fitted"))


def format_table(report: dict[str, Any]) -> str:
    """Readable plain-text summary: overall, intervals, split median, per distortion."""
    model = report.get("model") or {}
    lines = [f"model {model.get('name')} ({model.get('architecture')}), {report['n']} images, "
             f"{report['n_contents']} contents, crops={model.get('crops')}"]
    name_w = max([14, *(len(g) + 2 for g in report.get("per_group") or {})])
    head = "".join(h.rjust(10) for h, _ in COLUMNS)
    lines.append(" " * name_w + "       n" + head)

    def row(name: str, d: dict[str, Any]) -> str:
        return name.ljust(name_w) + _f(d.get("n"), 8) + "".join(_f(d.get(k), 10) for _, k in COLUMNS)

    lines.append(row("overall", report["overall"]))
    ci = report.get("ci") or {}
    cis = ["[" + ", ".join(_f(x) for x in (ci.get(k) or [None, None])) + "]" for _, k in COLUMNS]
    lines.append("  95% CI: " + "  ".join(f"{h} {c}" for (h, _), c in zip(COLUMNS, cis, strict=True)))
    sp = report.get("splits")
    if sp:
        lines.append(row(f"median/{sp['count']}", {"n": None, **sp["median"]}))
    if report.get("per_group"):
        lines.append("per distortion:")
        for g, d in report["per_group"].items():
            lines.append(row("  " + g, d))
    warning = (report.get("training_overlap") or {}).get("warning")
    if warning:
        lines.append(f"WARNING: {warning}")
    if report.get("files"):
        lines.append(f"report: {report['files'].get('html')}")
    return "\n".join(lines) + "\n"

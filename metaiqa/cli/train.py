"""`metaiqa meta-train`: meta-train a quality prior (also under torchrun for data parallelism)."""

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the `metaiqa` parser."""
    p = sub.add_parser(
        "meta-train",
        help="meta-train a quality prior on distortion-specific tasks (MAML / FOMAML / Reptile / supervised)",
        description="Meta-train a quality prior: each task is one distortion type, the inner loop adapts to "
        "its support images, the outer loop updates the prior with the query loss. Writes OUT/config.yaml, "
        "OUT/log.csv, OUT/last.* (every train.checkpoint_every iterations and on SIGINT/SIGTERM) and OUT/best.* "
        "(by validation SROCC). Data-parallel: torchrun --nproc-per-node N -m metaiqa meta-train ...",
    )
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/meta_train/synthetic.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set inner.lr=0.01 (repeatable)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--resume", action="store_true", help="continue bit-for-bit from OUT/last")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=meta_train)

    e = sub.add_parser(
        "export",
        help="copy a checkpoint for shipping (hash-verified, float16 by default)",
        description="Copy a checkpoint for deployment: the source is verified (sha256), the copy is "
        "written atomically as float16 (about half the size; scores change by < 1e-3) unless "
        "--float32, and its sidecar records where it came from. Put the result in a --models-dir "
        "to serve it by name.",
    )
    e.add_argument("src", help="checkpoint to export (NAME.safetensors, its .json, or a run folder)")
    e.add_argument("dst", help="output path, e.g. models/shop-v2.safetensors")
    e.add_argument("--float32", action="store_true", help="keep float32 weights")
    e.add_argument("--note", help="free text stored in the sidecar (e.g. what the model is for)")
    e.add_argument(
        "--onnx", action="store_true",
        help="write an ONNX Runtime export instead: DST.onnx + DST.onnx.json (float32; hash-verified, tied to "
        "the source checkpoint's sha256; used by --backend onnx when placed beside the checkpoint)",
    )  # fmt: skip
    e.add_argument(
        "--int8", action="store_true",
        help="with --onnx: a static int8 export (~3x the float32 views/s here; write it as NAME.int8.onnx beside "
        "NAME.safetensors so --backend auto uses it), calibrated on --calibration; check it with "
        "benchmarks/speed_variants.py before shipping",
    )  # fmt: skip
    e.add_argument("--calibration", metavar="DIR",
                   help="folder of photos like the ones you will score (4-64 used) for --int8's activation ranges")
    e.set_defaults(func=export, parser=e)

    u = sub.add_parser(
        "upgrade-checkpoint",
        help="rewrite old-format checkpoints so their hash covers model kwargs and preprocessing",
        description="Rewrite checkpoints of format metaiqa-checkpoint/1 in place in the current format: "
        "the tensors stay bit-identical, the architecture kwargs and scoring policy move under the "
        "sha256 (inside the tensor file). The old sidecar's sha256 must verify first.",
    )
    u.add_argument("paths", nargs="+", metavar="CKPT", help="NAME.safetensors or its .json sidecar")
    u.set_defaults(func=upgrade)


def meta_train(args: argparse.Namespace) -> int:
    from metaiqa.config import load_config
    from metaiqa.meta.config import MetaTrainConfig
    from metaiqa.meta.dist import shutdown
    from metaiqa.meta.trainer import MetaTrainer

    cfg = load_config(MetaTrainConfig, args.config, args.overrides)
    if args.out:
        cfg = cfg.model_copy(update={"out_dir": args.out})
    trainer = MetaTrainer(cfg, resume=args.resume, progress=not args.no_progress)
    try:
        summary = trainer.run()
    finally:
        shutdown(trainer.dist)
    if trainer.dist.is_main:
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def export(args: argparse.Namespace) -> int:
    if args.int8:
        if not args.onnx or not args.calibration:
            args.parser.error("--int8 needs --onnx and --calibration DIR (photos to calibrate on)")
        from metaiqa.inference.onnx_int8 import export_onnx_int8
        from metaiqa.inference.onnx_load import sidecar_path
        from metaiqa.models.pretrained import resolve_checkpoint

        out = export_onnx_int8(resolve_checkpoint(args.src, None), args.dst, args.calibration, note=args.note)
        sys.stderr.write(f"wrote {out} and {sidecar_path(out).name}\n")
        return 0
    if args.onnx:
        from metaiqa.inference.onnx_export import export_onnx, sidecar_path
        from metaiqa.models.pretrained import resolve_checkpoint

        out = export_onnx(resolve_checkpoint(args.src, None), args.dst, note=args.note)
        sys.stderr.write(f"wrote {out} and {sidecar_path(out).name}\n")
        return 0
    from metaiqa.models.checkpoint import export_checkpoint

    out = export_checkpoint(args.src, args.dst, half=not args.float32, note=args.note)
    sys.stderr.write(f"wrote {out} and {out.with_suffix('.json').name}\n")
    return 0


def upgrade(args: argparse.Namespace) -> int:
    from metaiqa.models.checkpoint import FORMAT, read_sidecar, upgrade_checkpoint

    for path in args.paths:
        before = read_sidecar(path)["format"]
        out = upgrade_checkpoint(path)
        state = "already current" if before == FORMAT else f"upgraded from {before}"
        sys.stderr.write(f"{out}: {state} ({FORMAT})\n")
    return 0

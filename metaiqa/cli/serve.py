"""`metaiqa serve`: run the REST service and web page with uvicorn.

The service package is imported inside the command (so `metaiqa --help` stays fast and
`metaiqa/` keeps not importing `service/` at module level). Flags reach every uvicorn worker
process as METAIQA_* environment variables, read by `metaiqa.service.app:create_app_from_env`;
precedence is defaults < YAML config < environment < flags.
"""

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger("metaiqa.cli.serve")

DEFAULT_CONFIG = Path("configs/serve.yaml")

EPILOG = """\
examples:
  metaiqa serve                                   # metaiqa-default + metaiqa-prior on http://127.0.0.1:8000
  metaiqa serve --model runs/shop/best.safetensors --models-dir models/
  metaiqa serve --host 0.0.0.0 --port 8080 --workers 2 --config configs/serve.yaml
  METAIQA_API_KEYS=k1,k2 METAIQA_MAX_BATCH=16 metaiqa serve

Every setting in configs/serve.yaml can also be given as METAIQA_<NAME> (e.g.
METAIQA_MAX_UPLOAD_BYTES). The config file is --config, else $METAIQA_CONFIG, else
./configs/serve.yaml when it exists.
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add `serve` to the `metaiqa` parser."""
    p = sub.add_parser(
        "serve",
        help="run the REST service and web page (uvicorn)",
        description="Serve /v1/score, /v1/heatmap, /v1/gate, /v1/validate, /v1/models, /healthz, /readyz, "
        "/metrics and the web page at /.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=_positive, default=1, help="uvicorn worker processes, each loads the models")
    p.add_argument(
        "--model",
        help="model for requests that name none: a bundled name, a name in --models-dir or a checkpoint path "
        "(default: metaiqa-default; both bundled models are always served, unless bundled_models: false)",
    )
    p.add_argument("--models-dir", type=Path, help="serve every checkpoint in this folder too (?model=NAME)")
    p.add_argument("--config", type=Path, help="YAML service settings (see configs/serve.yaml)")
    p.add_argument(
        "--backend", choices=("auto", "torch", "onnx", "int8"),
        help="run scores on onnx (ONNX Runtime on a hash-verified float32 export), int8 (a model's "
        "NAME.int8.onnx), torch (eager) or auto (int8 where a model has one, else onnx when onnxruntime "
        "is installed, else torch); default: the config's backend, else auto",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=cmd_serve)


def _config_path(arg: Path | None) -> Path | None:
    if arg is not None:
        return arg
    env = os.environ.get("METAIQA_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from metaiqa.service.settings import load_settings

    config = _config_path(args.config)
    overrides = {"model": args.model, "models_dir": args.models_dir, "backend": getattr(args, "backend", None)}
    settings = load_settings(config, **overrides)  # fail here, with exit code 2, on a bad config
    env = {"METAIQA_CONFIG": str(Path(config).resolve()) if config else None, "METAIQA_BACKEND": args.backend}
    if args.model:
        model = Path(args.model).expanduser()
        env["METAIQA_MODEL"] = str(model.resolve()) if model.exists() else args.model
    if args.models_dir:
        env["METAIQA_MODELS_DIR"] = str(args.models_dir.expanduser().resolve())
    for key, value in env.items():
        if value is not None:
            os.environ[key] = value
    if config:
        log.info("service settings from %s", config)
    if settings.api_keys:
        log.info("API keys required on /v1 (%d configured)", len(settings.api_keys))
    uvicorn.run(
        "metaiqa.service.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0

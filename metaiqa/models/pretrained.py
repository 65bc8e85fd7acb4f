"""Where checkpoints come from: the two bundled models, a models directory of named ones, or a path.

Bundled (in metaiqa/models/weights/, float16, hash-verified at load):
- metaiqa-default: trained on human opinion scores of real photos; scores the whole image
  ("views" policy). Used when no model is named.
- metaiqa-prior: the synthetic-only meta-learned prior (one centre crop); a starting point for
  fine-tuning on your own labelled images.

Names are plain file stems (`^[A-Za-z0-9][A-Za-z0-9._-]*$`), so a name taken from a request
can never point outside the models directory; the service should resolve with
`allow_paths=False` so clients cannot name arbitrary server files either.
"""

import logging
import os
import re
from pathlib import Path

from metaiqa.errors import MetaIQAError
from metaiqa.models.sidecar import checkpoint_paths

log = logging.getLogger(__name__)

DEFAULT_MODEL = "metaiqa-default"
#: Models shipped inside the package: the default (scores real photos) and the synthetic-only
#: meta-learned prior (a starting point for fine-tuning on your own data).
PRIOR_MODEL = "metaiqa-prior"
BUNDLED_MODELS = (DEFAULT_MODEL, PRIOR_MODEL)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: One line per bundled model, for GET /v1/models and the web page (a sidecar's own
#: "description" key takes precedence; `metaiqa score --help` spells the same out).
BUNDLED_DESCRIPTIONS = {
    DEFAULT_MODEL: "trained on human opinion scores of real photos; scores the whole image",
    PRIOR_MODEL: "synthetic-only meta-learned prior, scores one centre crop; a starting point for "
    "fine-tuning on your own labelled images",
}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotFound(MetaIQAError, LookupError):
    """A model name or checkpoint path that does not lead to a checkpoint; `available` lists names."""

    def __init__(self, message: str, available: list[str] | None = None):
        super().__init__(message)
        self.available = list(available or [])


def default_checkpoint_path(name: str = DEFAULT_MODEL) -> Path:
    """Where a bundled model lives (it may be absent in a development build)."""
    return WEIGHTS_DIR / f"{name}.safetensors"


def describe_model(name: str, meta: dict | None = None) -> str | None:
    """A one-line description: the sidecar's "description", else the bundled text, else its "note"."""
    meta = meta or {}
    text = meta.get("description")
    if isinstance(text, str) and text.strip():
        return text.strip()
    if name in BUNDLED_DESCRIPTIONS:
        return BUNDLED_DESCRIPTIONS[name]
    note = meta.get("note")
    return note.strip() if isinstance(note, str) and note.strip() else None


def is_valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name)) and name not in (".", "..")


def list_checkpoints(models_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Named checkpoints in `models_dir`: {stem: tensor path} for each NAME.safetensors with a sidecar.

    A missing folder gives {} (a service may start with only the default model).
    """
    if models_dir is None:
        return {}
    folder = Path(models_dir)
    if not folder.is_dir():
        log.debug("models directory %s does not exist", folder)
        return {}
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        if is_valid_name(path.stem) and path.with_suffix(".json").is_file():
            found[path.stem] = path
    return found


def _available(models_dir: str | os.PathLike | None) -> list[str]:
    names = list(list_checkpoints(models_dir))
    bundled = [n for n in BUNDLED_MODELS if default_checkpoint_path(n).is_file() and n not in names]
    return bundled + names


def resolve_checkpoint(
    spec: str | os.PathLike | None,
    models_dir: str | os.PathLike | None = None,
    *,
    allow_paths: bool = True,
) -> Path:
    """A model spec -> the checkpoint's tensor file path (absolute).

    None or "metaiqa-default": the bundled default; "metaiqa-prior": the bundled synthetic prior.
    A name: `models_dir/NAME.safetensors` (a models-dir file of a bundled name takes precedence).
    Otherwise (if `allow_paths`): a path to a checkpoint (.safetensors, its .json sidecar, or a
    folder holding model.safetensors). Raises ModelNotFound with the names that do exist.
    """
    if str(spec) in BUNDLED_MODELS and models_dir is not None and (Path(models_dir) / f"{spec}.safetensors").is_file():
        return (Path(models_dir) / f"{spec}.safetensors").absolute()
    if spec is None or str(spec) in BUNDLED_MODELS:
        name = DEFAULT_MODEL if spec is None else str(spec)
        path = default_checkpoint_path(name)
        if path.is_file():
            return path
        what = "no default model: " if name == DEFAULT_MODEL else ""
        available = _available(models_dir)
        raise ModelNotFound(
            f"{what}model {name} is not bundled in this build (looked for {path}); pass --model "
            + "".join(f"{n}, " for n in BUNDLED_MODELS if n in available and n != name)
            + "a checkpoint made by `metaiqa meta-train` / `metaiqa fine-tune`, "
            "or the name of one in the models directory",
            available,
        )
    text = str(spec)
    if models_dir is not None and is_valid_name(text):
        path = Path(models_dir) / f"{text}.safetensors"
        if path.is_file():
            return path.absolute()
    if allow_paths:
        tensor_path, _ = checkpoint_paths(Path(text).expanduser())
        if tensor_path.is_file():
            return tensor_path.absolute()
    available = _available(models_dir)
    where = f" in {models_dir}" if models_dir is not None else ""
    kind = "model name or checkpoint path" if allow_paths else "model name"
    if not allow_paths and not is_valid_name(text):
        msg = f"invalid model name {text!r}: names match {NAME_PATTERN.pattern}"
    else:
        msg = f"{kind} {text!r} not found{where}"
    raise ModelNotFound(f"{msg}; available: {', '.join(available) or 'none'}", available)

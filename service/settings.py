"""Service settings: defaults < `configs/serve.yaml` (or `METAIQA_CONFIG`) < `METAIQA_*` env < explicit.

Every limit the service enforces lives here, so an operator can tighten it without code.
"""

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, NoDecode, SettingsConfigDict

from metaiqa.errors import MetaIQAError

MiB = 2**20


class SettingsError(MetaIQAError):
    """The service configuration file or a setting is invalid."""


class Settings(BaseSettings):
    """All knobs of the REST service (env names: `METAIQA_` + the upper-case field name)."""

    model_config = SettingsConfigDict(env_prefix="METAIQA_", extra="forbid", validate_default=True)

    # models
    model: str | None = Field(None, description="default model: name or checkpoint path (None: metaiqa-default)")
    bundled_models: bool = Field(True, description="also serve the bundled metaiqa-default and metaiqa-prior")
    models_dir: Path | None = Field(None, description="every checkpoint in this folder is served too")
    crops: int = Field(1, ge=1, le=16, description="crops averaged per image")
    device: str = "cpu"
    torch_threads: int | None = Field(None, ge=1, description="torch's process-wide intra-op threads, used outside "
                                      "the score and heatmap lanes (validation, fine-tune); None: torch's default")
    backend: Literal["auto", "torch", "onnx", "int8"] = Field(
        "auto", description="scores run on onnx (ONNX Runtime on a hash-verified float32 export), int8 (the "
        "model's NAME.int8.onnx), torch (eager), or auto: int8 if the model has one, else onnx when onnxruntime "
        "is installed and the export can be made, else torch")
    score_threads: int | None = Field(2, ge=1, description="intra-op threads of the score lane (torch or ONNX "
                                      "Runtime); None: the library's default (one per core)")

    # request limits
    max_upload_bytes: int = Field(25 * MiB, ge=1024, description="request body limit, counted while streaming")
    max_pixels: int = Field(50_000_000, ge=1024)
    min_side: int = Field(32, ge=1)
    max_images_per_request: int = Field(16, ge=1)
    max_concurrent_decodes: int = Field(2, ge=1, description="decoding threads (bounds decoded-pixel memory)")

    # inference queue / micro-batching
    queue_size: int = Field(64, ge=1, description="images waiting for the model; more -> 503")
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(5.0, ge=0, description="how long the worker waits to fill a micro-batch")
    retry_after_s: int = Field(1, ge=0, description="Retry-After header on 503 (queue full)")
    max_pending_requests: int | None = Field(
        None, ge=1, description="image requests being received, decoded or scored at once; more -> 503 before "
        "the body is read (None: queue_size)"
    )

    # heatmaps
    heatmap_grid: int = Field(32, ge=2, le=512, description="long side of the JSON heat grid")
    max_pending_heatmaps: int = Field(2, ge=1, description="heatmap requests being received, decoded, queued or "
                                      "computed in their own lane; more -> 503 before the body is read")
    heatmap_threads: int = Field(1, ge=1, description="intra-op threads of the heatmap lane")
    heatmap_nice: int = Field(10, ge=0, le=19, description="the heatmap lane's threads run this much nicer than "
                              "the score lane (Linux), so scores get the cores first")

    # gate
    default_threshold: float | None = Field(0.5, ge=0.0, le=1.0, description="used when no threshold/policy given")
    policies: dict[str, float] = Field(default_factory=lambda: {"strict": 0.7, "default": 0.5, "lenient": 0.3})

    # validation jobs
    validate_enabled: bool = True
    validate_max_zip_bytes: int = Field(100 * MiB, ge=1024)
    validate_max_files: int = Field(2000, ge=2)
    validate_max_uncompressed_bytes: int = Field(500 * MiB, ge=1024)
    validate_max_ratio: float = Field(200.0, ge=1.0, description="max compression ratio per zip entry")
    validate_max_pending: int = Field(2, ge=1, description="queued + running jobs; more -> 429")
    validate_keep_reports: int = Field(20, ge=1, description="finished reports kept (oldest dropped)")
    validate_bootstrap: int = Field(200, ge=0)
    validate_allow_server_specs: bool = False
    validate_data_roots: list[Path] = Field(default_factory=list, description="allowed roots for server specs")
    reports_dir: Path | None = Field(None, description="where reports are written (None: a temp dir)")

    # fine-tune jobs (POST /v1/fine-tune; uploads share the validate_* zip limits) and the models dir
    finetune_enabled: bool = Field(True, description="needs models_dir: new models are written there")
    finetune_max_images: int = Field(2000, ge=3, description="labelled images per fine-tune upload; more -> 413")
    finetune_max_pending: int = Field(2, ge=1, description="fine-tunes queued + running (one runs at a time); "
                                      "more -> 429")
    finetune_max_seconds: float = Field(1800.0, gt=0, description="a fine-tune still training after this fails "
                                        "(checked after every epoch)")
    finetune_max_epochs: int = Field(30, ge=1, description="largest `epochs` a request may ask for")
    finetune_default_epochs: int = Field(10, ge=1, description="`epochs` when the request names none")
    finetune_keep_jobs: int = Field(20, ge=1, description="finished fine-tune job records kept")
    models_poll_s: float = Field(5.0, ge=0, description="re-scan models_dir when its listing changes, checked "
                                 "this often (0: only on POST /v1/models/reload)")

    # auth
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma list; empty: no auth")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("validate_data_roots", mode="before")
    @classmethod
    def _split_roots(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [p for p in v.split(os.pathsep) if p]
        return v

    @field_validator("policies")
    @classmethod
    def _check_policies(cls, v: dict[str, float]) -> dict[str, float]:
        for name, t in v.items():
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"policy {name!r}: threshold {t} outside [0, 1]")
        return v

    @model_validator(mode="after")
    def _check_batch(self) -> "Settings":
        if self.max_batch > self.queue_size:
            raise ValueError(f"max_batch ({self.max_batch}) > queue_size ({self.queue_size})")
        return self


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise SettingsError(f"cannot read service config {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"service config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"service config {path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from (in rising priority) defaults, a YAML file, `METAIQA_*` env vars, `overrides`.

    The YAML file is `config`, else `$METAIQA_CONFIG`, else none.
    """
    from pydantic import ValidationError

    path = config or os.environ.get("METAIQA_CONFIG")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if not path:
            return Settings(**overrides)
        file_values = _read_yaml(Path(path))

        class _WithFile(Settings):
            @classmethod
            def settings_customise_sources(cls, settings_cls, init_settings, env_settings, **_other):
                return init_settings, env_settings, InitSettingsSource(settings_cls, file_values)

        return _WithFile(**overrides)
    except ValidationError as exc:
        where = f" (config {path})" if path else ""
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid service settings{where}: {problems}") from exc

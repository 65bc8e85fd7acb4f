"""The meta-training config: every key validated (an unknown key is an error naming it).

Resolution order: these defaults < `configs/meta_train/<name>.yaml` < `--set key=value`.
The resolved config is written to `OUT/config.yaml` and into every checkpoint's sidecar.
"""

from typing import Any, Literal

from pydantic import Field, model_validator

from metaiqa.config import StrictModel


class DataConfig(StrictModel):
    spec: str = Field("", description="data set: NAME:PATH or PATH (see metaiqa.data.formats.parse_data_spec)")
    holdout_types: list[str] = Field(default_factory=list, description="groups never meta-trained on")
    include_types: list[str] | None = Field(None, description="restrict to these groups (None: all)")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int | None = Field(None, description="seed of the content-disjoint split (None: the run's seed)")

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}"
            )
        return self


class ModelConfig(StrictModel):
    name: str = "metaiqa_resnet18"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class PreprocessConfig(StrictModel):
    """Scoring policy stored in the checkpoint; validation during training uses it too."""

    policy: Literal["center_crop", "resize", "native"] = "center_crop"
    size: int = Field(224, ge=8)


class TaskConfig(StrictModel):
    tasks_per_batch: int = Field(4, ge=1)
    support_refs: int = Field(2, ge=1)
    query_refs: int = Field(2, ge=1)
    max_images: int | None = Field(None, ge=2, description="batch limit per support/query set (random subset)")


class InnerConfig(StrictModel):
    steps: int = Field(1, ge=0)
    lr: float = Field(0.01, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"


class OuterConfig(StrictModel):
    lr: float = Field(1e-3, gt=0, description="Adam lr of the backbone")
    head_lr: float | None = Field(None, gt=0, description="Adam lr of the head (None: same as lr)")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the meta-gradient's global norm")


class LossConfig(StrictModel):
    ranking_weight: float = Field(1.0, ge=0)
    margin: float = Field(0.05, ge=0)
    min_diff: float = Field(0.02, ge=0, description="label gap below which a pair is not ranked")


class TrainConfig(StrictModel):
    iterations: int = Field(1000, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="wall-clock budget over all (resumed) runs")
    crop_size: int = Field(128, ge=8)
    flip: bool = True
    checkpoint_every: int = Field(100, ge=1)
    val_every: int = Field(100, ge=1)
    val_max_images: int | None = Field(600, ge=3, description="random validation subset (None: all)")
    val_batch_size: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1, description="torch.set_num_threads (None: torch's default)")
    channels_last: bool = True
    amp: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_gb: float = Field(3.0, ge=0, description="memory for decoded training images")
    batchnorm: Literal["auto", "batch", "renorm"] = Field(
        "auto",
        description="BatchNorm in training: 'batch' (plain), 'renorm' (Batch Renormalization: per-image "
        "function, see metaiqa.meta.batchnorm), 'auto' = renorm for maml/fomaml/reptile (single-type task "
        "batches), batch for supervised (pooled, mixed batches)",
    )
    renorm_rmax: float = Field(3.0, ge=1)
    renorm_dmax: float = Field(5.0, ge=0)
    calibrate_images: int = Field(256, ge=0, description="pooled images that initialise the BN statistics (renorm)")
    val_adapt_steps: int = Field(5, ge=0, description="inner steps of the short adaptation on each validation "
                                 "task before its query contents are scored (val_srocc_adapted)")
    val_adapt_lr: float | None = Field(None, ge=0, description="lr of those steps (None: inner.lr; the optimizer "
                                       "is inner.optimizer)")
    val_adapt_support: int = Field(2, ge=1, description="validation contents per type used as the support set "
                                   "(at most half of the type's contents; the rest are the query)")
    select_by: Literal["adapted", "zero_shot"] = Field(
        "adapted", description="what 'best' maximises: val_srocc_adapted (SROCC after the short adaptation, what "
        "the prior is for) or val_srocc (zero-shot); adapted falls back to zero-shot when no validation type has "
        "two contents",
    )


class MetaTrainConfig(StrictModel):
    seed: int = 0
    out_dir: str = "runs/meta_train"
    algorithm: Literal["maml", "fomaml", "reptile", "supervised"] = "fomaml"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    inner: InnerConfig = Field(default_factory=InnerConfig)
    outer: OuterConfig = Field(default_factory=OuterConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

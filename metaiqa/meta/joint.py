"""Joint adaptation: learn from human opinion scores while keeping synthetic orderings.

Human scores of authentic photos alone teach a network that fine texture means quality
(measured: a model fine-tuned on BIQ2021 ranked every noise type backwards). So each step
mixes two signals in one batch:

- `batch_human` photos with their MOS: MSE + a ranking hinge over all pairs of the batch
  (every photo is its own content, so pairs across images are what ranks);
- `anchor_crops` crops of pristine reference photos, each with two levels of one random
  synthetic distortion (our engine, all registered types): a ranking hinge within each crop,
  pristine > lighter > heavier (ordinal only, no absolute label).

Crops are taken at the scoring policy's viewing scale (`to_viewing_scale`). Validation is
carved from the human training set (never a test split) plus synthetic orderings on the
init checkpoint's *validation* scenes; `best` is chosen on their weighted mean
(`select_weights`). Every step draws its randomness from (seed, step), so a resumed run
continues exactly as an uninterrupted one would up to the order of floating-point sums.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from metaiqa.config import StrictModel, dump_config
from metaiqa.distortions import list_distortions
from metaiqa.meta.anchors import AnchorSet, SyntheticOrderingSet, TypeSampler, darkest_well_rated, level_probs
from metaiqa.meta.human_data import best_rated, human_split, read_scaled
from metaiqa.meta.losses import ranking_hinge
from metaiqa.meta.optim import adam_param_groups, cosine_factor
from metaiqa.meta.runstate import RunFiles

log = logging.getLogger(__name__)


class JointConfig(StrictModel):
    """configs/fine_tune/default.yaml; unknown keys are errors."""

    init: str = Field("metaiqa-prior", description="checkpoint (name or path) to start from; with `architecture` "
                      "set, only its scene splits are used (anchor and synthetic validation scenes)")
    architecture: str | None = Field(None, description="start from this registered model instead of init's weights")
    pretrained_backbone: str | None = Field(None, description="with `architecture`: 'imagenet' or a weights file")
    input_norm: str | None = Field("mscn_rgb", description="widen the prior's front end (None: keep it)")
    global_stats: bool | None = Field(None, description="true: add the photometric-statistics branch (starts "
                                      "at zero) if init lacks it; None: keep init's architecture")
    human: str = Field(..., description="human-rated training data, e.g. biq2021-train:PATH")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the human data held out for selection")
    references: str | None = Field(None, description="folder of pristine photos for the synthetic anchor")
    anchor_scenes: str = Field("train", description="which of the init's scene splits the anchor may use")
    val_scenes: str = Field("val", description="init's scene split for synthetic-ordering validation")
    scale: int = Field(384, ge=16, description="viewing scale: short side of the photo as scored")
    crop_size: int = Field(224, ge=32)
    anchor_scales: list[int] = Field(default_factory=lambda: [384, 512], description="short sides of references")
    max_views: int = Field(16, ge=1)
    batch_human: int = Field(16, ge=2)
    anchor_crops: int = Field(3, ge=0)
    human_rank_weight: float = Field(1.0, ge=0)
    human_margin: float = Field(0.02, ge=0)
    human_min_diff: float = Field(0.05, ge=0)
    anchor_weight: float = Field(1.0, ge=0)
    anchor_margin: float = Field(0.05, ge=0)
    anchor_top_human: int = Field(0, ge=0, description="also use the N best-rated photos of the human train "
                                  "split as pristine anchor photos (more contents than the reference scenes)")
    anchor_dark_human: int = Field(0, ge=0, description="also use the N darkest human train photos rated at or above "
                                   "the median (night and low-key scenes: exposure damage on dark photos)")
    val_photo_orderings: int = Field(0, ge=0, description="also validate synthetic orderings on the N best-rated "
                                     "photos of the human validation carve-out (val_photo_* metrics)")
    anchor_type_sampling: Literal["uniform", "loss"] = Field(
        "uniform", description="'loss': draw anchor types more often the worse the model orders them (running loss)")
    anchor_type_floor: float = Field(0.5, ge=0, le=1, description="with 'loss': share of draws kept to the base "
                                     "(uniform or anchor_type_weights)")
    anchor_type_weights: dict[str, float] = Field(default_factory=dict, description="relative draw weight per "
                                                  "distortion type (unnamed types 1), e.g. {mean_shift: 3}")
    anchor_level_weights: list[float] | None = Field(None, description="relative draw weight of anchor levels "
                                                     "1..5 (None: uniform), e.g. [3, 2, 1, 1, 1] to train the "
                                                     "mildest damage against the pristine crop more often")
    select_weights: dict[str, float] = Field(
        default_factory=lambda: {"val_human_srocc": 0.5, "val_synth_within_srocc": 0.5},
        description="validation metrics (weighted mean) that pick `best`")
    lr: float = Field(1e-4, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    steps: int = Field(3000, ge=1)
    val_every: int = Field(500, ge=1)
    validate_init: bool = Field(True, description="validate the init at step 0, so `best` can be the init "
                                "itself (false: save the ~5 minutes when the init is known not to be shipped)")
    checkpoint_every: int = Field(100, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    seed: int = 0
    threads: int | None = Field(2, ge=1)
    channels_last: bool = True
    out_dir: str = "runs/joint"

    @field_validator("select_weights")
    @classmethod
    def _known_select_metrics(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - set(SELECT_METRICS)
        if unknown or not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"select_weights {v}: keys must be among {SELECT_METRICS}, weights >= 0, not all 0")
        return v

    @field_validator("anchor_type_weights")
    @classmethod
    def _known_anchor_types(cls, v: dict[str, float]) -> dict[str, float]:
        try:
            TypeSampler(list_distortions(), adaptive=False, weights=v)  # the sampler's own checks, at config time
        except ValueError as e:
            raise ValueError(f"anchor_type_weights: {e}") from None
        return v

    @field_validator("anchor_level_weights")
    @classmethod
    def _five_level_weights(cls, v: list[float] | None) -> list[float] | None:
        level_probs(v)  # raises ValueError naming the bad list
        return v

    @model_validator(mode="after")
    def _photo_metrics_need_photos(self) -> JointConfig:
        if any(k.startswith("val_photo_") for k in self.select_weights) and not self.val_photo_orderings:
            raise ValueError(f"select_weights {self.select_weights} name val_photo_* metrics: set val_photo_orderings > 0")
        return self


SELECT_METRICS = ("val_human_srocc", "val_synth_within_srocc", "val_synth_pristine_above",
                  "val_photo_within_srocc", "val_photo_pristine_above")


def scene_splits(meta: dict) -> dict:
    """Scene splits recorded by a checkpoint: a prior's own, or those a joint run inherited from its init."""
    data = meta.get("data") or {}
    return data.get("splits") or data.get("init_splits") or {}


def _architecture_overrides(cfg: JointConfig) -> dict[str, Any]:
    """Model arguments the config sets (front end, photometric branch); unset ones keep init's."""
    kwargs: dict[str, Any] = {"input_norm": cfg.input_norm} if cfg.input_norm else {}
    if cfg.global_stats is not None:
        kwargs["global_stats"] = cfg.global_stats
    return kwargs


def _load_init(cfg: JointConfig):
    """(model, init checkpoint's meta, model kwargs to save): init's weights, or a fresh `architecture`."""
    from metaiqa.models import create_model
    from metaiqa.models.checkpoint import load_checkpoint
    from metaiqa.models.pretrained import resolve_checkpoint
    from metaiqa.models.resnet_iqa import expand_state_dict

    ckpt = load_checkpoint(resolve_checkpoint(cfg.init, None))
    if cfg.architecture:
        kwargs = _architecture_overrides(cfg)
        model = create_model(cfg.architecture, pretrained_backbone=cfg.pretrained_backbone, **kwargs)
        meta = {**ckpt.meta, "model": cfg.architecture}
        return model.float(), meta, kwargs  # saved kwargs never name the backbone source: loading needs no extra
    kwargs = {**(ckpt.meta.get("model_kwargs") or {}), **_architecture_overrides(cfg)}
    model = create_model(ckpt.meta["model"], **kwargs)
    model.load_state_dict(expand_state_dict({k: v.float() for k, v in ckpt.model.state_dict().items()}, model))
    return model.float(), ckpt.meta, kwargs


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    crop = img[top : top + size, left : left + size]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def anchor_triple_hinge(pred: torch.Tensor, margin: float) -> torch.Tensor:
    """Per (pristine, lighter, heavier) triple: mean hinge over its 3 ordered pairs."""
    p = pred.reshape(-1, AnchorSet.VERSIONS)
    diffs = torch.stack([p[:, 0] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 2]], dim=1)
    return torch.relu(margin - diffs).mean(dim=1)


def _to_batch(crops: list[np.ndarray], channels_last: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(np.stack(crops))).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class JointTrainer:
    """Holds the model, data and optimiser of one joint run; `run()` trains to the step budget."""

    def __init__(self, cfg: JointConfig, *, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # Model and data spec first: a start that fails on them (e.g. ImageNet weights not installed)
        # leaves no run folder behind to block the corrected re-run.
        self.model, init_meta, self.model_kwargs = _load_init(cfg)
        train, val = human_split(cfg)
        self.files = RunFiles(Path(cfg.out_dir), dump_config(cfg), resume=resume)
        self.model_name = init_meta["model"]
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.preprocess = {"policy": "views", "scale": cfg.scale, "size": cfg.crop_size, "max_views": cfg.max_views}
        self.human_train, self.human_val = train, val
        self.train_imgs = read_scaled(train, cfg, progress)
        self.val_imgs = read_scaled(val, cfg, progress)
        self.val_mos = np.asarray([s.mos for s in val], dtype=np.float64)
        splits = scene_splits(init_meta)
        self.anchor = AnchorSet.from_folder(cfg.references, splits, cfg.anchor_scenes, cfg.anchor_scales, cfg.crop_size) \
            if cfg.references and cfg.anchor_crops else None
        self.ordering_val = SyntheticOrderingSet.from_folder(cfg.references, splits, cfg.val_scenes, cfg.scale, cfg.seed) \
            if cfg.references else None
        self.photo_ordering_val = self._photo_orderings(cfg.val_photo_orderings) if cfg.val_photo_orderings else None
        if self.anchor is not None and cfg.anchor_top_human:
            self.anchor = self.anchor.with_photos(*self._train_photos(best_rated(train, cfg.anchor_top_human), "best-rated"))
        if self.anchor is not None and cfg.anchor_dark_human:
            dark = darkest_well_rated(self.train_imgs, [s.mos for s in train], cfg.anchor_dark_human)
            self.anchor = self.anchor.with_photos(*self._train_photos(dark, "darkest (rated >= median)"))
        self.type_sampler = TypeSampler(self.anchor.types if self.anchor else [],
                                        adaptive=cfg.anchor_type_sampling == "loss", floor=cfg.anchor_type_floor,
                                        weights=cfg.anchor_type_weights)
        self.level_probs = level_probs(cfg.anchor_level_weights)
        self.opt = torch.optim.AdamW(adam_param_groups(self.model, cfg.lr, cfg.head_lr), weight_decay=cfg.weight_decay)
        self.step, self.best, self.best_step, self.elapsed = 0, -math.inf, 0, 0.0
        self.init_meta = init_meta
        if resume:
            self._resume()

    def _train_photos(self, order, which: str) -> tuple[list[np.ndarray], list[str]]:
        """(images, ids) of these human train photos, for the anchor."""
        mos = [self.human_train[i].mos for i in order]
        log.info("anchor: + the %d %s human train photos (MOS %.3f-%.3f)", len(order), which,
                 min(mos, default=math.nan), max(mos, default=math.nan))
        return [self.train_imgs[i] for i in order], [self.human_train[i].ref_id for i in order]

    def _photo_orderings(self, n: int) -> SyntheticOrderingSet:
        order = best_rated(self.human_val, n)
        out = SyntheticOrderingSet.from_images([self.val_imgs[i] for i in order],
                                               [self.human_val[i].ref_id for i in order], self.cfg.scale, self.cfg.seed)
        log.info("synthetic ordering validation: %d images from the %d best-rated validation photos", len(out.images), n)
        return out

    # ------------------------------------------------------------------ one step
    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        idx = rng.choice(len(self.train_imgs), size=cfg.batch_human, replace=False)
        crops = [_random_crop(self.train_imgs[i], cfg.crop_size, rng) for i in idx]
        y = [self.human_train[i].mos for i in idx]
        n_human, kinds = len(crops), []
        if self.anchor is not None:
            a_crops, a_y, kinds = self.anchor.sample(cfg.anchor_crops, rng, self.type_sampler.probs(), self.level_probs)
            crops += a_crops
            y += a_y
        return _to_batch(crops, cfg.channels_last), torch.tensor(y, dtype=torch.float32), n_human, kinds

    def _loss(self, pred: torch.Tensor, y: torch.Tensor, n_human: int) -> tuple[torch.Tensor, dict[str, Any]]:
        cfg = self.cfg
        ph, yh = pred[:n_human], y[:n_human]
        mse = torch.nn.functional.mse_loss(ph, yh)
        rank = ranking_hinge(ph, yh, None, margin=cfg.human_margin, min_diff=cfg.human_min_diff)
        loss = mse + cfg.human_rank_weight * rank
        parts = {"mse": mse.item(), "rank": rank.item()}
        if pred.shape[0] > n_human:
            per_triple = anchor_triple_hinge(pred[n_human:], cfg.anchor_margin)
            anchor = per_triple.mean()
            loss = loss + cfg.anchor_weight * anchor
            parts["anchor"] = anchor.item()
            parts["anchor_per_triple"] = per_triple.detach().tolist()
        return loss, parts

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        factor = cosine_factor(self.step, cfg.steps, cfg.warmup_steps)
        for g in self.opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
        x, y, n_human, kinds = self._batch(self.step)
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)  # dropout
        self.model.train()
        loss, parts = self._loss(self.model(x).float(), y, n_human)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.type_sampler.update(kinds, parts.pop("anchor_per_triple", []))
        self.step += 1
        return {"loss": loss.item(), **parts, "lr_factor": factor}

    # ------------------------------------------------------------------ validation and files
    def validate(self) -> dict[str, float]:
        from metaiqa.evaluation import metrics
        from metaiqa.meta.finetune import predict

        pred = predict(self.model, self.val_imgs, self.preprocess)
        out = {"val_human_srocc": metrics.srocc(pred, self.val_mos), "val_human_plcc": metrics.plcc(pred, self.val_mos)}
        def score(images):
            return predict(self.model, images, self.preprocess)

        if self.photo_ordering_val is not None:
            out.update(self.photo_ordering_val.evaluate(score, prefix="val_photo"))
        if self.ordering_val is not None:
            out.update(self.ordering_val.evaluate(score))
        weights = {k: w for k, w in self.cfg.select_weights.items() if k in out}  # no references: human only
        out["select"] = sum(w * out[k] for k, w in weights.items()) / sum(weights.values()) if weights \
            else out["val_human_srocc"]
        return out

    def _sidecar_data(self) -> dict[str, Any]:
        return {
            "human": self.cfg.human, "human_train": len(self.human_train), "human_val": len(self.human_val),
            "human_val_ids": [s.ref_id for s in self.human_val][:5] + ["..."],
            "anchor_scenes": self.anchor.scenes if self.anchor else [],
            "val_scenes": self.ordering_val.scenes if self.ordering_val else [],
            "init": self.cfg.init, "init_sha256": self.init_meta.get("sha256"),
            "architecture": self.cfg.architecture, "pretrained_backbone": self.cfg.pretrained_backbone,
            "init_splits": scene_splits(self.init_meta) or None,
        }

    def _save(self, name: str, metrics: dict[str, Any]) -> None:
        self.files.save_model(name, self.model, model_name=self.model_name, model_kwargs=self.model_kwargs,
                              preprocess=self.preprocess, data=self._sidecar_data(),
                              metrics={"step": self.step, **metrics})

    def _save_state(self) -> None:
        self.files.save_state({"step": self.step, "best": self.best, "best_step": self.best_step, "elapsed": self.elapsed,
                               "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                               "type_sampler": self.type_sampler.state_dict()})

    def _resume(self) -> None:
        state = self.files.load_state()
        if state is None:
            log.info("no state in %s: starting from step 0", self.files.root)
            return
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.best, self.elapsed = int(state["step"]), float(state["best"]), float(state["elapsed"])
        self.best_step = int(state.get("best_step", -1))  # -1: a run saved before best_step was recorded
        if "type_sampler" in state:
            self.type_sampler.load_state_dict(state["type_sampler"])
        log.info("resumed at step %d (best select %.4f)", self.step, self.best)

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        from metaiqa.meta.progress import budget_estimate, follow_budget

        cfg = self.cfg
        if self.step == 0 and cfg.validate_init and not self.files.log_rows():
            row0 = {"step": 0, **self.validate()}
            self.files.append_log(row0)
            self.best = row0["select"]
            self._save("best", row0)
        t_start = time.perf_counter() - self.elapsed
        bar = tqdm(total=cfg.steps, initial=self.step, desc="joint", unit="step", disable=not self.progress)
        last: dict[str, float] = {}
        while self.step < cfg.steps:
            last = self.train_step()
            self.elapsed = time.perf_counter() - t_start
            budget = budget_estimate(self.step, cfg.steps, self.elapsed, cfg.max_minutes)
            follow_budget(bar, budget)  # a time budget that ends the run first: the bar's total and ETA follow it
            bar.update(1)
            best = f"{self.best:.4f}" if math.isfinite(self.best) else "not yet validated"
            bar.set_postfix({"loss": f"{last['loss']:.4f}", "best": best, **budget.postfix()})
            out_of_time = cfg.max_minutes is not None and self.elapsed > 60 * cfg.max_minutes
            if self.step % cfg.val_every == 0 or self.step == cfg.steps or out_of_time:
                row = {"step": self.step, "loss": last["loss"], "minutes": round(self.elapsed / 60, 2), **self.validate()}
                if self.type_sampler.adaptive:
                    row["hardest_anchor_types"] = self.type_sampler.hardest()
                self.files.append_log(row)
                log.info("step %d: %s", self.step, {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})
                if row["select"] > self.best:
                    self.best, self.best_step = row["select"], self.step
                    self._save("best", row)
                self._save("last", row)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or out_of_time:
                self._save_state()
            if out_of_time:
                log.info("time budget of %.1f minutes reached at step %d", cfg.max_minutes, self.step)
                break
        bar.close()
        return {"step": self.step, "best_step": self.best_step, "best_select": self.best, "out_dir": str(self.files.root)}

"""The meta-training loop: data split, task sampling, bi-level updates, validation, checkpoints.

Determinism: every task of iteration `it` (index `i` in the meta-batch) draws its crops from
`numpy.default_rng([seed, it, i])` and its dropout masks from a torch generator forked and
seeded the same way, so a task computes the same thing whichever rank runs it and whether
or not the run was resumed (resume is bit-for-bit; DDP equals one process up to float
summation order). Per-task buffers (BatchNorm statistics) are averaged, an order-free rule.

Validation (metaiqa.meta.validation) reports the zero-shot SROCC and the SROCC after a short
adaptation on each validation type; `best` keeps the prior that adapts best
(train.select_by=adapted, the default) or the best zero-shot one. The adaptation runs on a
deep copy under a forked RNG, so it never changes the training trajectory.
"""

import csv
import logging
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from metaiqa.config import ConfigError, dump_config
from metaiqa.data.samples import Sample
from metaiqa.meta import bilevel
from metaiqa.meta.batchnorm import calibrate_batchnorm, use_batch_renorm
from metaiqa.meta.config import MetaTrainConfig
from metaiqa.meta.datasplit import prepare_data
from metaiqa.meta.dist import DistInfo, all_reduce_sum, barrier, broadcast_module, init_from_env
from metaiqa.meta.images import ImageCache, task_batch
from metaiqa.meta.losses import Target, make_loss
from metaiqa.meta.optim import adam_param_groups
from metaiqa.meta.state import ResumeError, load_state, save_state
from metaiqa.meta.validation import (
    AdaptSettings,
    adaptation_tasks,
    adapted_metrics,
    score_samples,
    zero_shot_metrics,
)
from metaiqa.models import create_model, save_checkpoint
from metaiqa.models.checkpoint import atomic_write_bytes, load_tensors, read_sidecar

log = logging.getLogger(__name__)

LOG_FIELDS = ["iteration", "elapsed_s", "loss", "inner_loss", "val_srocc", "val_srocc_type_mean",
              "val_srocc_adapted", "val_srocc_query_zero_shot"]
# Keys that may change between a run and its resumption without changing the trajectory.
RESUMABLE_CHANGES = {"out_dir", "train.iterations", "train.max_minutes", "train.checkpoint_every",
                     "train.val_every", "train.threads", "train.cache_gb", "train.val_adapt_steps",
                     "train.val_adapt_lr", "train.val_adapt_support", "train.select_by"}


def _seed_of(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in tensors]) if tensors else torch.zeros(0)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, key + ".")
        elif va != vb and key not in RESUMABLE_CHANGES:
            out.append(f"{key}: {va!r} -> {vb!r}")
    return out


class MetaTrainer:
    """Owns the model, optimizer, sampler and run folder of one meta-training run."""

    def __init__(self, cfg: MetaTrainConfig, *, resume: bool = False, progress: bool = True):
        from metaiqa.data.tasks import TaskSampler

        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        tr = cfg.train
        if tr.threads:
            torch.set_num_threads(tr.threads)
        use_cuda = tr.device == "cuda" or (tr.device == "auto" and torch.cuda.is_available())
        if tr.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device is 'cuda' but no CUDA device is available (use auto or cpu)")
        self.dist: DistInfo = init_from_env(use_cuda)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if use_cuda else "cpu")
        self.amp = tr.amp and use_cuda and torch.cuda.is_bf16_supported()
        self.progress = progress and self.dist.is_main
        if self.dist.world > cfg.task.tasks_per_batch:
            raise ConfigError(
                f"task.tasks_per_batch={cfg.task.tasks_per_batch} is smaller than the number of processes "
                f"({self.dist.world}); every rank needs at least one task"
            )
        self.data = prepare_data(cfg)
        self.sampler = TaskSampler(
            self.data.train, tasks_per_batch=cfg.task.tasks_per_batch, support_refs=cfg.task.support_refs,
            query_refs=cfg.task.query_refs, seed=cfg.seed,
        )
        rng = np.random.default_rng([cfg.seed, 7])
        val = self.data.val
        if tr.val_max_images is not None and len(val) > tr.val_max_images:
            val = [val[i] for i in np.sort(rng.choice(len(val), tr.val_max_images, replace=False))]
        self.val = val
        self.adapt_tasks = adaptation_tasks(val, tr.val_adapt_support, cfg.seed)
        self.select_key = "val_srocc_adapted" if tr.select_by == "adapted" and self.adapt_tasks else "val_srocc"
        if tr.select_by == "adapted" and not self.adapt_tasks and len(val) >= 3:
            log.warning("train.select_by=adapted, but no validation type has 2 contents with a 3-image query: "
                        "'best' is selected on zero-shot val_srocc")
        self.cache = ImageCache(int(tr.cache_gb * 2**30))
        torch.manual_seed(cfg.seed)
        self.model = create_model(cfg.model.name, **cfg.model.kwargs).to(self.device).train()
        if tr.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batchnorm = tr.batchnorm if tr.batchnorm != "auto" else (
            "batch" if cfg.algorithm == "supervised" else "renorm")
        if self.batchnorm == "renorm":
            use_batch_renorm(self.model, tr.renorm_rmax, tr.renorm_dmax)
            if not resume and tr.calibrate_images:
                self._calibrate()
        broadcast_module(self.model, self.dist)
        # backbone group first: the order the optimizer states of earlier runs were saved in
        groups = adam_param_groups(self.model, cfg.outer.lr, cfg.outer.head_lr or cfg.outer.lr)[::-1]
        self.optimizer = torch.optim.Adam(groups, weight_decay=cfg.outer.weight_decay)
        self.loss_fn = make_loss(cfg.loss.ranking_weight, cfg.loss.margin, cfg.loss.min_diff)
        self.iteration = 0
        self.elapsed_before = 0.0
        self.best: float | None = None
        self._stop_signal: int | None = None
        if resume:
            self._resume()

    # ----------------------------------------------------------------- one update
    def _batch(self, samples: list[Sample], rng: np.random.Generator) -> tuple[torch.Tensor, Target]:
        tr = self.cfg.train
        x, t = task_batch(samples, self.cache, crop_size=tr.crop_size, rng=rng, flip=tr.flip,
                          max_images=self.cfg.task.max_images)
        x = x.to(self.device, non_blocking=True)
        if tr.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, Target(t.y.to(self.device), t.content.to(self.device))

    @contextmanager
    def _forked(self, *keys: int):
        """Run a block with the torch RNG seeded from `keys`, then restore the global RNG."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(_seed_of(*keys))
            yield

    def _calibrate(self) -> None:
        """Start the running statistics from one pooled batch of every training type (same on every
        rank, drawn from its own sampler and RNG so the training sequence is untouched)."""
        from metaiqa.data.tasks import TaskSampler

        cfg = self.cfg
        sampler = TaskSampler(self.data.train, tasks_per_batch=len({s.group for s in self.data.train}),
                              support_refs=cfg.task.support_refs, query_refs=cfg.task.query_refs, seed=cfg.seed + 1)
        rng = np.random.default_rng([cfg.seed, 99])
        samples = [s for t in sampler.sample() for s in t.support + t.query]
        if len(samples) > cfg.train.calibrate_images:
            samples = [samples[i] for i in np.sort(rng.choice(len(samples), cfg.train.calibrate_images, replace=False))]
        x, _ = self._batch(samples, rng)
        with self._forked(cfg.seed, 99):
            calibrate_batchnorm(self.model, x)

    def train_step(self, stop_request: bool = False) -> tuple[dict[str, float], bool]:
        """One meta-iteration; returns (stats, stop) where stop is agreed by all ranks."""
        cfg, it = self.cfg, self.iteration
        tasks = self.sampler.sample()
        mine = [i for i in range(len(tasks)) if i % self.dist.world == self.dist.rank]
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = dict(self.model.named_buffers())
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        results: list[bilevel.MetaResult] = []
        if cfg.algorithm == "supervised":
            xs, ys, cs = [], [], []
            for i in mine:
                rng = np.random.default_rng([cfg.seed, it, i])
                for part in (tasks[i].support, tasks[i].query):
                    x, t = self._batch(part, rng)
                    xs.append(x), ys.append(t.y), cs.append(t.content + 1000 * len(cs))
            with self._forked(cfg.seed, it, 10_000 + self.dist.rank), amp:
                batch = (torch.cat(xs), Target(torch.cat(ys), torch.cat(cs)))
                results.append(bilevel.supervised_grads(self.model, params, buffers, batch, loss_fn=self.loss_fn))
            n_total = self.dist.world
        else:
            fn = bilevel.META_ALGORITHMS[cfg.algorithm]
            for i in mine:
                rng = np.random.default_rng([cfg.seed, it, i])
                support, query = self._batch(tasks[i].support, rng), self._batch(tasks[i].query, rng)
                with self._forked(cfg.seed, it, i), amp:
                    results.append(fn(self.model, params, buffers, support, query, steps=cfg.inner.steps,
                                      lr=cfg.inner.lr, optimizer=cfg.inner.optimizer, loss_fn=self.loss_fn))
            n_total = len(tasks)
        fbufs = [k for k, v in buffers.items() if v.is_floating_point()]
        grads = [sum(r.grads[k] for r in results) for k in params]
        bufs = [sum(r.buffers[k] for r in results) for k in fbufs]
        scal = torch.tensor([sum(r.query_loss for r in results),
                             sum(r.inner_losses[0] if r.inner_losses else r.query_loss for r in results),
                             float(stop_request)], dtype=torch.float32)
        flat = all_reduce_sum(torch.cat([_flatten(grads), _flatten(bufs), scal]).to(self.device), self.dist)
        flat = flat.cpu() if self.device.type == "cpu" else flat
        pos = 0
        for (_, p), g in zip(params.items(), grads, strict=True):
            p.grad = torch.empty_like(p).copy_(flat[pos : pos + g.numel()].view_as(g) / n_total)
            pos += g.numel()
        with torch.no_grad():
            for k, b in zip(fbufs, bufs, strict=True):
                buffers[k].copy_(flat[pos : pos + b.numel()].view_as(b) / n_total)
                pos += b.numel()
            for v in buffers.values():
                if not v.is_floating_point():
                    v.add_(1)
        if cfg.outer.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.outer.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1
        loss, inner, stop = (float(v) for v in flat[pos:].cpu())
        return {"loss": loss / n_total, "inner_loss": inner / n_total}, stop > 0

    # ----------------------------------------------------------------- validation
    def validate(self) -> dict[str, float]:
        """Zero-shot SROCC of the current prior on the validation references of the training types, and
        the SROCC on held-out validation contents after a short adaptation per type (metaiqa.meta.validation)."""
        if len(self.val) < 3:
            return {}
        cfg, tr = self.cfg, self.cfg.train
        pre = cfg.preprocess.model_dump()
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else None
        preds = score_samples(self.model, self.val, self.cache, pre, batch_size=tr.val_batch_size,
                              device=self.device, channels_last=tr.channels_last, autocast=amp)
        out = zero_shot_metrics(preds, self.val)
        if self.adapt_tasks:
            settings = AdaptSettings(
                steps=tr.val_adapt_steps, lr=cfg.inner.lr if tr.val_adapt_lr is None else tr.val_adapt_lr,
                optimizer=cfg.inner.optimizer, crop_size=tr.crop_size, flip=tr.flip, max_images=cfg.task.max_images,
                seed=cfg.seed, batch_size=tr.val_batch_size, channels_last=tr.channels_last)
            out.update(adapted_metrics(self.model, self.val, self.adapt_tasks, preds, self.cache, pre, settings,
                                       self.loss_fn, self.device))
        return out

    # ----------------------------------------------------------------- checkpoints
    def _save(self, name: str, metrics: dict[str, Any], elapsed: float) -> None:
        cfg = self.cfg
        prefix = self.out / name
        save_checkpoint(
            prefix, self.model, model_name=cfg.model.name, model_kwargs=cfg.model.kwargs,
            preprocess=cfg.preprocess.model_dump(), config=dump_config(cfg), data=self.data.summary,
            metrics=metrics,
            extra={"iteration": self.iteration, "algorithm": cfg.algorithm, "batchnorm": self.batchnorm},
        )
        if name == "last":
            save_state(prefix, self.optimizer, read_sidecar(prefix)["sha256"], {
                "iteration": self.iteration, "sampler": self.sampler.state_dict(), "best": self.best,
                "best_by": self.select_key, "elapsed_s": elapsed,
            })

    def _resume(self) -> None:
        prefix = self.out / "last"
        try:
            meta = read_sidecar(prefix)
        except Exception as exc:
            raise ResumeError(f"cannot resume from {self.out}: {exc}") from exc
        diff = _config_diff(meta.get("config", {}), dump_config(self.cfg))
        if diff:
            raise ResumeError(f"cannot resume {self.out}: config differs from the saved run: {'; '.join(diff)}")
        try:
            self.model.load_state_dict(load_tensors(prefix.with_name("last.safetensors"), meta["sha256"]))
        except RuntimeError as exc:
            raise ResumeError(f"cannot resume: saved weights do not fit the model ({exc})") from exc
        except Exception as exc:
            raise ResumeError(f"cannot resume: {exc}") from exc
        info = load_state(prefix, self.optimizer)
        try:
            self.sampler.load_state_dict(info["sampler"])
            self.iteration = int(info["iteration"])
            self.best = info.get("best")
            if info.get("best_by", "val_srocc") != self.select_key:  # another criterion: its best does not compare
                log.warning("resume: 'best' was selected by %s, now by %s; the next validation sets it afresh",
                            info.get("best_by", "val_srocc"), self.select_key)
                self.best = None
            self.elapsed_before = float(info.get("elapsed_s", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ResumeError(f"cannot resume: malformed trainer state ({exc!r})") from exc
        except Exception as exc:  # SamplerStateMismatch and friends
            raise ResumeError(f"cannot resume: {exc}") from exc
        log.info("resuming %s at iteration %d", self.out, self.iteration)

    # ----------------------------------------------------------------- the loop
    def _write_log(self, row: dict[str, Any]) -> None:
        path = self.out / "log.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _trim_log(self) -> None:
        """On resume: drop log rows written after the checkpoint we resume from."""
        path = self.out / "log.csv"
        if path.exists():
            rows = list(csv.DictReader(path.open()))
            keep = [r for r in rows if int(r["iteration"]) <= self.iteration]
            text = ",".join(LOG_FIELDS) + "\n" + "".join(",".join(r.get(k) or "" for k in LOG_FIELDS) + "\n" for r in keep)
            atomic_write_bytes(path, text.encode())

    def _on_signal(self, signum, _frame) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C: stop now, without saving
            raise KeyboardInterrupt
        self._stop_signal = signum
        log.warning("signal %d: finishing this iteration, saving 'last' and stopping", signum)

    def run(self) -> dict[str, Any]:
        """Train until train.iterations, train.max_minutes or SIGINT/SIGTERM; returns a summary."""
        from tqdm import tqdm

        from metaiqa.meta.progress import budget_estimate, follow_budget

        cfg, tr = self.cfg, self.cfg.train
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.yaml", yaml.safe_dump(dump_config(cfg), sort_keys=False).encode())
            self._trim_log()
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        log.info("%s on %s: %d training images in %d tasks, %d validation images; %s", cfg.algorithm,
                 self.device, len(self.data.train), len(self.sampler), len(self.val), self.out)
        bar = tqdm(total=tr.iterations, initial=self.iteration, disable=not self.progress, dynamic_ncols=True,
                   desc=cfg.algorithm, unit="it")
        start = time.monotonic() - self.elapsed_before
        reason, stats, metrics = "iterations", {}, {}
        try:
            while self.iteration < tr.iterations:
                elapsed = time.monotonic() - start
                out_of_time = tr.max_minutes is not None and elapsed >= tr.max_minutes * 60
                stats, stop = self.train_step(stop_request=(main and out_of_time) or self._stop_signal is not None)
                if not self.dist.enabled:  # alone, a signal or the clock during this step stops now
                    over = tr.max_minutes is not None and time.monotonic() - start >= tr.max_minutes * 60
                    stop = stop or over or self._stop_signal is not None
                elapsed = time.monotonic() - start
                row = {"iteration": self.iteration, "elapsed_s": round(elapsed, 3), **stats}
                last_it = self.iteration >= tr.iterations
                if stop:
                    reason = "signal" if self._stop_signal is not None else "time"
                if main and (self.iteration % tr.val_every == 0 or ((last_it or reason == "time") and self.val)):
                    metrics = self.validate()
                    row.update(metrics)
                    score = metrics.get(self.select_key)
                    if score is not None and np.isfinite(score) and (self.best is None or score > self.best):
                        self.best = float(score)
                        self._save("best", {**metrics, **stats, "iteration": self.iteration,
                                            "selected_by": self.select_key}, elapsed)
                if main and (self.iteration % tr.checkpoint_every == 0 or stop or last_it):
                    self._save("last", {**metrics, **stats, "iteration": self.iteration}, elapsed)
                if main:
                    self._write_log(row)
                    post = {"loss": f"{stats['loss']:.4f}", "val": f"{metrics.get('val_srocc', float('nan')):.3f}"}
                    budget = budget_estimate(self.iteration, tr.iterations, elapsed, tr.max_minutes)
                    follow_budget(bar, budget)  # a budget that ends the run first: the bar's total and ETA follow it
                    bar.set_postfix({**post, **budget.postfix()})
                    bar.update(1)
                if stop:
                    break
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        barrier(self.dist)
        summary = {"iterations": self.iteration, "stopped_by": reason, "best": self.best, "best_by": self.select_key,
                   "elapsed_s": round(time.monotonic() - start, 1), "out_dir": str(self.out)}
        log.info("finished: %s", summary)
        return summary

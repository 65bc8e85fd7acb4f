"""Per-image score cache shared by `real_photos.py` and `independent.py`.

Scores are cached in a JSON file under `benchmarks/results/`, one entry per
(scorer, image file): the key is ``SCORER|absolute path|file size in bytes`` where SCORER is a
peer name (``brisque``, ``niqe``) or ``model:<sha256 of the checkpoint>:<preprocess policy>``, so
a changed file or a different checkpoint is never served from the cache. Each entry keeps the
score, the wall time it took (seconds, decode included) and the id of the run that computed it,
so a later run can say which numbers it did not recompute.
"""

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

BatchFn = Callable[[Sequence[Path]], list[float]]


def run_id() -> str:
    """This run's id: UTC start time (entries computed now carry it)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def file_key(scorer_id: str, path: Path) -> str:
    p = Path(path).resolve()
    return f"{scorer_id}|{p}|{p.stat().st_size}"


@dataclass
class ScoreCache:
    """A JSON file of {key: {"score", "seconds", "run"}}; `save` writes atomically."""

    path: Path
    entries: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "ScoreCache":
        path = Path(path)
        entries = json.loads(path.read_text())["entries"] if path.is_file() else {}
        return cls(path, entries)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": "metaiqa-bench-score-cache/1", "entries": self.entries}))
        os.replace(tmp, self.path)


@dataclass
class Scored:
    """Scores of one scorer for a list of files, and where they came from."""

    scores: list[float]
    seconds_per_image: float  # mean wall time per image over all entries (when each was computed)
    computed: int  # scored in this run
    cached: int  # taken from the cache
    cached_runs: list[str]  # ids of the earlier runs that computed the cached ones


def score_with_cache(
    scorer_id: str,
    fn: BatchFn,
    paths: Sequence[Path],
    cache: ScoreCache,
    run: str,
    *,
    batch: int = 16,
    refresh: bool = False,
) -> Scored:
    """Scores of `paths` by `fn`, computing only what `cache` lacks (saved after each batch).

    `refresh` recomputes (and overwrites) every entry, e.g. after the scoring code changed.
    """
    keys = [file_key(scorer_id, p) for p in paths]
    todo = [i for i, k in enumerate(keys) if refresh or k not in cache.entries]
    label = scorer_id.split(":")[0] if not scorer_id.startswith("model:") else scorer_id[:18]
    with tqdm(total=len(todo), desc=label, file=sys.stderr, disable=not todo) as bar:
        for start in range(0, len(todo), batch):
            idx = todo[start : start + batch]
            t0 = time.perf_counter()
            values = fn([paths[i] for i in idx])
            per = (time.perf_counter() - t0) / len(idx)
            for i, v in zip(idx, values, strict=True):
                cache.entries[keys[i]] = {"score": float(v), "seconds": per, "run": run}
            cache.save()
            bar.update(len(idx))
    entries = [cache.entries[k] for k in keys]
    earlier = sorted({e["run"] for e in entries if e["run"] != run})
    return Scored(
        scores=[e["score"] for e in entries],
        seconds_per_image=float(np.mean([e["seconds"] for e in entries])),
        computed=len(todo),
        cached=len(paths) - len(todo),
        cached_runs=earlier,
    )


def peer_fn(name: str) -> BatchFn:
    """A batch scorer for peer `name` (benchmarks/peers.py), higher = better, decode included."""
    import peers  # benchmarks/peers.py: run from benchmarks/ or with it on sys.path

    one = peers.PEERS[name]()
    return lambda paths: [one(np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def model_fn(ckpt: str, threads: int = 1, backend: str = "torch") -> tuple[str, BatchFn, dict]:
    """(scorer id, batch scorer, sidecar summary) for a checkpoint path or bundled model name.

    `backend` as `Scorer.from_checkpoint`; a non-torch backend is part of the id (its scores differ).
    """
    from metaiqa.inference.scorer import Scorer
    from metaiqa.models.pretrained import resolve_checkpoint

    path = resolve_checkpoint(ckpt)
    scorer = Scorer.from_checkpoint(path, threads=threads, backend=backend)
    policy = json.dumps(scorer.preprocess, sort_keys=True, separators=(",", ":"))
    sha = scorer.meta.get("sha256", "unknown")
    runs_on = scorer.backend.name
    info = {"checkpoint": str(path), "sha256": sha, "preprocess": scorer.preprocess, "backend": runs_on,
            "iteration": scorer.meta.get("iteration"), "note": scorer.meta.get("note")}
    scorer_id = f"model:{sha}:{policy}" + ("" if runs_on == "torch" else f":{runs_on}")
    return scorer_id, lambda paths: scorer.score_paths(list(paths), batch_size=16), info


def cache_note(label: str, scored: Scored, cache_path: Path) -> str | None:
    """A sentence for the output when some numbers of `label` were not recomputed."""
    if not scored.cached:
        return None
    return (f"{label}: {scored.cached} of {scored.cached + scored.computed} scores came from the cache "
            f"{cache_path} of an earlier run of the same script on the same images "
            f"(run {', '.join(scored.cached_runs)}); its ms/img is from that run.")

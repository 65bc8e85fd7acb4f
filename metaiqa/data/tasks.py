"""Distortion-specific tasks for meta-learning, and content-disjoint splits.

A *task* is one group (distortion type) of a data set. Its support and query sets hold
ALL levels of a few randomly chosen contents (reference ids), and never share a content:
the query loss then measures how well the adapted model generalises to new pictures of
the same distortion, and a ranking loss finds pairs (several levels of one content) in
both sets. Samples whose ref_id is None are each their own content (authentic sets).

Two ids matter (see `Sample`): `ref_id` is one reference image (all its levels are
labelled relative to it), `content` = `source or ref_id` is the scene, which several
references may share (synthetic crops cut from one photo). Splits and support/query
are disjoint by scene; a task takes one reference per chosen scene, with all its levels.

Everything here is deterministic under an explicit seed and independent of the order
in which samples are given (they are sorted by content key, level and path first).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from metaiqa.data.samples import DatasetError, Sample
from metaiqa.errors import InvalidInput, MetaIQAError

log = logging.getLogger(__name__)

#: Task name used for samples that carry no group (e.g. authentic-distortion sets).
UNGROUPED = "all"

_STATE_VERSION = 1


class TaskTooSmall(DatasetError):
    """A group has fewer distinct contents than support_refs + query_refs need."""


class UnknownGroup(DatasetError):
    """A group name asked for does not occur in the data set."""


class NotEnoughContents(DatasetError):
    """Too few distinct contents (reference ids) to make the requested content-disjoint split."""


class SamplerStateMismatch(MetaIQAError):
    """A saved sampler state does not belong to this sampler's data or settings."""


@dataclass(frozen=True)
class Task:
    """One distortion-specific task: adapt on `support`, evaluate the adapted model on `query`."""

    name: str
    support: list[Sample]
    query: list[Sample]


def content_key(sample: Sample) -> str:
    """The scene a sample shows (source or ref_id), or its own path when it has neither."""
    return sample.content if sample.content is not None else f"path:{sample.path}"


def reference_key(sample: Sample) -> str:
    """The reference image a sample was made from, or its own path when it has none."""
    return sample.ref_id if sample.ref_id is not None else f"path:{sample.path}"


def _sample_order(s: Sample) -> tuple:
    return (s.level if s.level is not None else -1, str(s.path))


def _by_content(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """content key -> its samples (sorted by level, path); keys in sorted order."""
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(content_key(s), []).append(s)
    return {k: sorted(out[k], key=_sample_order) for k in sorted(out)}


def _by_content_and_reference(samples: Iterable[Sample]) -> dict[str, dict[str, list[Sample]]]:
    """content key -> reference key -> its samples (sorted); all keys in sorted order."""
    return {c: _by_reference(group) for c, group in _by_content(samples).items()}


def _by_reference(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(reference_key(s), []).append(s)
    return {k: sorted(out[k], key=_sample_order) for k in sorted(out)}


def _require_samples(samples: Sequence[Sample], what: str) -> None:
    if len(samples) == 0:
        raise DatasetError(f"{what}: the data set is empty (0 samples)")


def _group_name(s: Sample) -> str:
    return s.group if s.group is not None else UNGROUPED


class TaskSampler:
    """Draws batches of tasks; its whole random state can be saved and restored exactly.

    Each `sample()` call picks `tasks_per_batch` groups: distinct groups when there are
    enough, otherwise every group once per round plus distinct extras. For each chosen
    group it draws `support_refs + query_refs` distinct scenes without replacement and,
    in each scene, one reference with all its levels (without sources: scene = reference).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        tasks_per_batch: int = 4,
        support_refs: int = 2,
        query_refs: int = 2,
        seed: int = 0,
        groups: Sequence[str] | None = None,
    ) -> None:
        _require_samples(samples, "TaskSampler")
        for name, value in (("tasks_per_batch", tasks_per_batch), ("support_refs", support_refs),
                            ("query_refs", query_refs)):
            if int(value) != value or value < 1:
                raise InvalidInput(f"{name} must be a positive integer, got {value!r}")
        if groups is not None:
            samples = select_groups(samples, include=groups)
        by_group: dict[str, list[Sample]] = {}
        for s in samples:
            by_group.setdefault(_group_name(s), []).append(s)
        need = support_refs + query_refs
        self._tasks: dict[str, dict[str, dict[str, list[Sample]]]] = {}
        for g in sorted(by_group):
            contents = _by_content_and_reference(by_group[g])
            if len(contents) < need:
                raise TaskTooSmall(
                    f"group {g!r} has {len(contents)} distinct content(s) (scenes/ref_ids) with "
                    f"{len(by_group[g])} image(s), but a task needs support_refs={support_refs} + "
                    f"query_refs={query_refs} = {need} contents"
                )
            self._tasks[g] = contents
        self.group_names: list[str] = list(self._tasks)
        self.tasks_per_batch = int(tasks_per_batch)
        self.support_refs = int(support_refs)
        self.query_refs = int(query_refs)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._calls = 0
        self._fingerprint = self._make_fingerprint()

    def __len__(self) -> int:
        """Number of groups (tasks) the sampler draws from."""
        return len(self.group_names)

    @property
    def calls(self) -> int:
        """How many batches have been drawn so far."""
        return self._calls

    def _make_fingerprint(self) -> str:
        h = hashlib.sha256()
        for g, contents in self._tasks.items():
            h.update(g.encode())
            for key, refs in contents.items():
                h.update(b"\0" + key.encode())
                for ref, items in refs.items():
                    h.update(b"\2" + ref.encode())
                    for s in items:
                        h.update(b"\1" + str(s.path).encode())
        return h.hexdigest()[:16]

    def _pick_groups(self) -> list[int]:
        n, k = len(self.group_names), self.tasks_per_batch
        picks: list[int] = []
        while k - len(picks) >= n:  # more tasks than groups: every group once per round
            picks.extend(int(i) for i in self._rng.permutation(n))
        rest = k - len(picks)
        if rest:
            picks.extend(int(i) for i in self._rng.choice(n, size=rest, replace=False))
        return picks

    def sample(self) -> list[Task]:
        """The next batch of tasks (deterministic for the seed and the call index)."""
        tasks = []
        for gi in self._pick_groups():
            name = self.group_names[gi]
            contents = self._tasks[name]
            keys = list(contents)
            chosen = self._rng.choice(len(keys), size=self.support_refs + self.query_refs, replace=False)
            picked = []
            for i in chosen:
                refs = list(contents[keys[i]].values())
                picked.append(refs[int(self._rng.integers(len(refs)))])
            tasks.append(
                Task(
                    name=name,
                    support=[s for items in picked[: self.support_refs] for s in items],
                    query=[s for items in picked[self.support_refs :] for s in items],
                )
            )
        self._calls += 1
        return tasks

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state; big integers are stored as strings so any JSON reader keeps them exact."""
        st = self._rng.bit_generator.state
        return {
            "version": _STATE_VERSION,
            "seed": self.seed,
            "calls": self._calls,
            "fingerprint": self._fingerprint,
            "settings": [self.tasks_per_batch, self.support_refs, self.query_refs],
            "bit_generator": st["bit_generator"],
            "state": {k: str(v) for k, v in st["state"].items()},
            "has_uint32": int(st["has_uint32"]),
            "uinteger": str(st["uinteger"]),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Continue exactly where the sampler that produced `d` stopped."""
        try:
            if d["version"] != _STATE_VERSION:
                raise SamplerStateMismatch(f"sampler state version {d['version']!r}, expected {_STATE_VERSION}")
            if d["fingerprint"] != self._fingerprint:
                raise SamplerStateMismatch(
                    f"sampler state was saved for other data (fingerprint {d['fingerprint']!r}, "
                    f"this data {self._fingerprint!r}): resuming would not repeat the same tasks"
                )
            settings = [self.tasks_per_batch, self.support_refs, self.query_refs]
            if list(d["settings"]) != settings:
                raise SamplerStateMismatch(
                    f"sampler state has (tasks_per_batch, support_refs, query_refs)={d['settings']}, "
                    f"this sampler {settings}"
                )
            state = {
                "bit_generator": d["bit_generator"],
                "state": {k: int(v) for k, v in d["state"].items()},
                "has_uint32": int(d["has_uint32"]),
                "uinteger": int(d["uinteger"]),
            }
            rng = np.random.Generator(getattr(np.random, d["bit_generator"])())
            rng.bit_generator.state = state
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SamplerStateMismatch(f"malformed sampler state: {exc!r}") from exc
        self._rng = rng
        self.seed = int(d["seed"])
        self._calls = int(d["calls"])


def select_groups(
    samples: Sequence[Sample], include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[Sample]:
    """Keep samples of the `include` groups (all when None), then drop the `exclude` groups.

    Used for leave-distortion-out: meta-train with exclude=held_out, evaluate with include=held_out.
    Unknown names are an error (a typo must not silently hold out nothing).
    """
    _require_samples(samples, "select_groups")
    known = sorted({s.group for s in samples if s.group is not None})
    for names in (include, exclude):
        if names is None:
            continue
        if isinstance(names, str):
            raise InvalidInput(f"group names must be a list, got the string {names!r}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UnknownGroup(f"unknown group(s) {unknown}; the data set has: {', '.join(known) or '(no groups)'}")
    inc = set(include) if include is not None else None
    exc = set(exclude or ())
    out = [s for s in samples if (inc is None or s.group in inc) and s.group not in exc]
    if not out:
        raise DatasetError(f"no samples left after selecting groups include={include} exclude={exclude}")
    return out


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items by fractions (largest remainder); each nonzero fraction gets >= 1."""
    raw = [f * n for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0:
            donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def split_references(
    samples: Sequence[Sample], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> tuple[list[Sample], ...]:
    """Content-disjoint split (by scene: source or ref_id) into len(fractions) parts, e.g. train/val/test.

    Contents are shuffled with `seed` and dealt out by fraction (largest remainder), each
    part with a nonzero fraction getting at least one content. Within a part samples
    keep their input order.
    """
    _require_samples(samples, "split_references")
    fr = [float(f) for f in fractions]
    if not fr or any(not np.isfinite(f) or f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise InvalidInput(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    keys = sorted({content_key(s) for s in samples})
    need = sum(1 for f in fr if f > 0)
    if len(keys) < need:
        raise NotEnoughContents(
            f"cannot split {len(keys)} distinct content(s) into {need} non-empty content-disjoint parts "
            f"(fractions {tuple(fractions)}); need at least {need} reference ids"
        )
    perm = np.random.default_rng(seed).permutation(len(keys))
    part_of: dict[str, int] = {}
    start = 0
    for part, count in enumerate(_allocate(len(keys), fr)):
        for i in perm[start : start + count]:
            part_of[keys[i]] = part
        start += count
    out: tuple[list[Sample], ...] = tuple([] for _ in fr)
    for s in samples:
        out[part_of[content_key(s)]].append(s)
    return out


def few_shot_split(
    samples: Sequence[Sample], shots: int, seed: int, val_fraction: float = 0.2
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """(train, val, test) for few-shot fine-tuning, all three content-disjoint.

    `shots` counts every labelled image used for adaptation: len(train) + len(val) == shots.
    Of these, round(shots * val_fraction) (at least 1 when val_fraction > 0 and shots >= 2)
    form the early-stopping `val` set. Contents are shuffled with `seed`; whole contents
    are taken for val, then for train, until each has enough images, and the last
    content of each is subsampled to the exact count (its other images are dropped, not
    put in test, to keep test content-disjoint). `test` is every sample of all remaining
    contents.
    """
    _require_samples(samples, "few_shot_split")
    if int(shots) != shots or shots < 1:
        raise InvalidInput(f"shots must be a positive integer, got {shots!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidInput(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = round(shots * val_fraction)
    if val_fraction > 0 and shots >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, shots - 1)
    n_train = shots - n_val
    contents = _by_content(samples)
    keys = list(contents)
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]

    pos = 0

    def take(n: int) -> list[Sample]:
        nonlocal pos
        picked: list[Sample] = []
        while len(picked) < n:
            if pos >= len(order):
                raise NotEnoughContents(
                    f"shots={shots} needs {shots} labelled images plus at least one other content for "
                    f"testing, but the data set has only {len(samples)} images in {len(keys)} content(s)"
                )
            items = contents[order[pos]]
            pos += 1
            missing = n - len(picked)
            if len(items) > missing:
                idx = np.sort(rng.choice(len(items), size=missing, replace=False))
                items = [items[i] for i in idx]
            picked.extend(items)
        return picked

    val = take(n_val)
    train = take(n_train)
    if pos >= len(order):
        raise NotEnoughContents(
            f"shots={shots} uses every content of the data set ({len(keys)} content(s), {len(samples)} images); "
            f"no content is left for testing"
        )
    test = [s for k in order[pos:] for s in contents[k]]
    return train, val, test

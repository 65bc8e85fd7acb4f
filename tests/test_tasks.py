"""Task sampler, content-disjoint splits, group selection, few-shot split."""

import json
from pathlib import Path

import pytest

from metaiqa.data.samples import DatasetError, Sample
from metaiqa.data.tasks import (
    NotEnoughContents,
    SamplerStateMismatch,
    Task,
    TaskSampler,
    TaskTooSmall,
    UnknownGroup,
    content_key,
    few_shot_split,
    select_groups,
    split_references,
)
from metaiqa.errors import InvalidInput

GROUPS = ("gaussian_blur", "jpeg", "white_noise", "contrast_change", "pixelate")


def make_samples(n_refs=8, groups=GROUPS, levels=5):
    """A KADID-like grid of fake samples (no files needed: the sampler never opens images)."""
    out = []
    for r in range(1, n_refs + 1):
        for gi, g in enumerate(groups, start=1):
            for lv in range(1, levels + 1):
                out.append(
                    Sample(Path(f"/d/I{r:02d}_{gi:02d}_{lv:02d}.png"), 1 - lv / 6, group=g, ref_id=f"I{r:02d}", level=lv)
                )
    return out


def task_signature(batch):
    return [(t.name, [str(s.path) for s in t.support], [str(s.path) for s in t.query]) for t in batch]


def test_task_structure_disjoint_and_complete():
    samples = make_samples()
    sampler = TaskSampler(samples, tasks_per_batch=3, support_refs=2, query_refs=3, seed=1)
    for _ in range(20):
        batch = sampler.sample()
        assert len(batch) == 3
        assert all(isinstance(t, Task) for t in batch)
        assert len({t.name for t in batch}) == 3  # distinct groups when possible
        for t in batch:
            sup_refs = {s.ref_id for s in t.support}
            qry_refs = {s.ref_id for s in t.query}
            assert len(sup_refs) == 2 and len(qry_refs) == 3
            assert not sup_refs & qry_refs
            assert all(s.group == t.name for s in t.support + t.query)
            # all levels of each chosen content
            assert len(t.support) == 2 * 5 and len(t.query) == 3 * 5
            for ref in sup_refs:
                assert sorted(s.level for s in t.support if s.ref_id == ref) == [1, 2, 3, 4, 5]


def test_more_tasks_than_groups_covers_every_group():
    sampler = TaskSampler(make_samples(groups=GROUPS[:2]), tasks_per_batch=5, seed=0)
    names = [t.name for t in sampler.sample()]
    assert len(names) == 5
    assert names.count("gaussian_blur") >= 2 and names.count("jpeg") >= 2


def test_deterministic_and_order_independent():
    samples = make_samples()
    a = TaskSampler(samples, seed=7)
    b = TaskSampler(list(reversed(samples)), seed=7)
    c = TaskSampler(samples, seed=8)
    sa = [task_signature(a.sample()) for _ in range(5)]
    assert sa == [task_signature(b.sample()) for _ in range(5)]
    assert sa != [task_signature(c.sample()) for _ in range(5)]
    assert sa[0] != sa[1]  # successive calls differ


def test_resume_is_bit_exact_through_json():
    samples = make_samples()
    full = TaskSampler(samples, seed=3)
    ref = [task_signature(full.sample()) for _ in range(10)]

    first = TaskSampler(samples, seed=3)
    for _ in range(4):
        first.sample()
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = TaskSampler(samples, seed=999)  # seed is overwritten by the state
    resumed.load_state_dict(saved)
    assert resumed.calls == 4
    assert [task_signature(resumed.sample()) for _ in range(6)] == ref[4:]


def test_state_from_other_data_or_settings_is_refused():
    samples = make_samples()
    st = TaskSampler(samples, seed=0).state_dict()
    with pytest.raises(SamplerStateMismatch, match="fingerprint"):
        TaskSampler(make_samples(n_refs=9), seed=0).load_state_dict(st)
    with pytest.raises(SamplerStateMismatch, match="tasks_per_batch"):
        TaskSampler(samples, seed=0, tasks_per_batch=2).load_state_dict(st)
    with pytest.raises(SamplerStateMismatch, match="malformed"):
        TaskSampler(samples, seed=0).load_state_dict({"version": 1})


def test_groups_argument_restricts_tasks():
    sampler = TaskSampler(make_samples(), tasks_per_batch=2, groups=["jpeg", "pixelate"], seed=0)
    assert sampler.group_names == ["jpeg", "pixelate"]
    assert {t.name for _ in range(5) for t in sampler.sample()} == {"jpeg", "pixelate"}


def test_ungrouped_samples_each_their_own_content():
    samples = [Sample(Path(f"/k/{i}.jpg"), i / 10) for i in range(10)]
    batch = TaskSampler(samples, tasks_per_batch=1, support_refs=3, query_refs=2).sample()
    assert batch[0].name == "all"
    assert len(batch[0].support) == 3 and len(batch[0].query) == 2
    assert not {s.path for s in batch[0].support} & {s.path for s in batch[0].query}


def test_sampler_errors():
    with pytest.raises(DatasetError, match="empty"):
        TaskSampler([])
    samples = make_samples(n_refs=4)
    # a group with only 3 contents: the message names it and the counts
    samples += [Sample(Path(f"/d/x{r}.png"), 0.5, group="rare_type", ref_id=f"I{r:02d}", level=1) for r in (1, 2, 3)]
    with pytest.raises(TaskTooSmall, match=r"'rare_type' has 3 distinct content.*needs support_refs=2 \+ query_refs=2 = 4"):
        TaskSampler(samples)
    with pytest.raises(InvalidInput, match="support_refs"):
        TaskSampler(make_samples(), support_refs=0)
    with pytest.raises(UnknownGroup, match="gaussian_blur"):
        TaskSampler(make_samples(), groups=["gausian_blur"])


def test_select_groups():
    samples = make_samples()
    held = ["jpeg", "pixelate"]
    train = select_groups(samples, exclude=held)
    test = select_groups(samples, include=held)
    assert {s.group for s in train} == set(GROUPS) - set(held)
    assert {s.group for s in test} == set(held)
    assert len(train) + len(test) == len(samples)
    assert {s.group for s in select_groups(samples, include=held, exclude=["jpeg"])} == {"pixelate"}
    with pytest.raises(UnknownGroup, match=r"\['blurr'\].*contrast_change, gaussian_blur"):
        select_groups(samples, exclude=["blurr"])
    with pytest.raises(DatasetError, match="no samples left"):
        select_groups(samples, exclude=list(GROUPS))
    with pytest.raises(InvalidInput, match="list"):
        select_groups(samples, include="jpeg")
    with pytest.raises(DatasetError, match="empty"):
        select_groups([], include=["jpeg"])


@pytest.mark.parametrize("n_refs", [3, 4, 7, 20])
def test_split_references_disjoint_nonempty_deterministic(n_refs):
    samples = make_samples(n_refs=n_refs)
    parts = split_references(samples, seed=5)
    assert len(parts) == 3 and all(parts)
    refs = [{s.ref_id for s in p} for p in parts]
    assert not (refs[0] & refs[1] or refs[0] & refs[2] or refs[1] & refs[2])
    assert sum(len(p) for p in parts) == len(samples)
    assert parts == split_references(list(samples), seed=5)
    if n_refs == 20:
        assert [len(r) for r in refs] == [14, 3, 3]
        assert split_references(samples, seed=6) != parts


def test_split_references_errors_and_zero_fraction():
    with pytest.raises(NotEnoughContents, match="2 distinct content"):
        split_references(make_samples(n_refs=2))
    with pytest.raises(InvalidInput, match="sum to 1"):
        split_references(make_samples(), fractions=(0.5, 0.2))
    with pytest.raises(DatasetError, match="empty"):
        split_references([])
    train, val = split_references(make_samples(n_refs=2), fractions=(1.0, 0.0))
    assert len(train) == len(make_samples(n_refs=2)) and val == []


def test_few_shot_split_counts_and_disjointness():
    samples = select_groups(make_samples(n_refs=20), include=["jpeg"])  # 20 contents x 5 levels
    train, val, test = few_shot_split(samples, shots=12, seed=0, val_fraction=0.25)
    assert len(train) + len(val) == 12
    assert len(val) == 3 and len(train) == 9
    refs = [{content_key(s) for s in p} for p in (train, val, test)]
    assert not (refs[0] & refs[1] or refs[0] & refs[2] or refs[1] & refs[2])
    used = refs[0] | refs[1]
    assert {content_key(s) for s in samples} - used == refs[2]
    assert len(test) == 5 * len(refs[2])  # test holds every sample of the remaining contents
    assert (train, val, test) == few_shot_split(list(reversed(samples)), shots=12, seed=0, val_fraction=0.25)
    # no validation part when asked for none
    tr, va, _ = few_shot_split(samples, shots=7, seed=1, val_fraction=0.0)
    assert len(tr) == 7 and va == []


def test_few_shot_split_errors():
    samples = [Sample(Path(f"/c/{i}.png"), i / 10) for i in range(10)]
    with pytest.raises(NotEnoughContents, match="no content is left"):
        few_shot_split(samples, shots=10, seed=0)
    with pytest.raises(NotEnoughContents, match="only 10 images"):
        few_shot_split(samples, shots=11, seed=0)
    with pytest.raises(InvalidInput, match="shots"):
        few_shot_split(samples, shots=0, seed=0)
    with pytest.raises(InvalidInput, match="val_fraction"):
        few_shot_split(samples, shots=3, seed=0, val_fraction=1.0)
    train, val, test = few_shot_split(samples, shots=9, seed=0)
    assert (len(train), len(val), len(test)) == (7, 2, 1)


def make_crops(n_photos=6, crops=3, groups=GROUPS[:2], levels=3):
    """Synthetic-style samples: several reference crops (ref_id) cut from one photo (source)."""
    out = []
    for p in range(n_photos):
        for c in range(crops):
            ref = f"I{p * crops + c:02d}"
            for g in groups:
                for lv in range(1, levels + 1):
                    out.append(Sample(Path(f"/s/{ref}_{g}_{lv}.png"), 0.5, group=g, ref_id=ref, level=lv,
                                      source=f"photo{p}.jpg"))
    return out


def test_tasks_and_splits_are_disjoint_by_source_scene():
    samples = make_crops()
    sampler = TaskSampler(samples, tasks_per_batch=2, support_refs=2, query_refs=3, seed=0)
    seen_refs = set()
    for _ in range(10):
        for t in sampler.sample():
            sup_src = {s.source for s in t.support}
            qry_src = {s.source for s in t.query}
            assert len(sup_src) == 2 and len(qry_src) == 3 and not sup_src & qry_src
            # one reference per scene, all its levels
            assert len({s.ref_id for s in t.support}) == 2 and len(t.support) == 2 * 3
            seen_refs |= {s.ref_id for s in t.support + t.query}
    assert len(seen_refs) > 6  # different crops of a photo get their turn
    with pytest.raises(TaskTooSmall, match="has 3 distinct content"):
        TaskSampler(make_crops(n_photos=3), support_refs=2, query_refs=2)
    parts = split_references(samples, seed=0)
    srcs = [{s.source for s in p} for p in parts]
    assert all(srcs) and not (srcs[0] & srcs[1] or srcs[0] & srcs[2] or srcs[1] & srcs[2])
    train, val, test = few_shot_split(samples, shots=10, seed=0)
    srcs = [{s.source for s in p} for p in (train, val, test)]
    assert not (srcs[0] & srcs[1] or srcs[0] & srcs[2] or srcs[1] & srcs[2])

"""`metaiqa data synth` / `data inspect` through the CLI: layout, csv, resume, determinism, bad input."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image

from metaiqa.cli import main
from metaiqa.labels import COMMITTEE

TYPES = ["jpeg", "gaussian_blur", "color_block"]  # KADID ids 10, 1, 23
SIZE = 64


@pytest.fixture
def refs(tmp_path):
    d = tmp_path / "refs"
    d.mkdir()
    Image.fromarray(natural_image(112, seed=1)[:, :100]).save(d / "a.png")
    Image.fromarray(natural_image(96, seed=2)).save(d / "b.png")
    (d / "LICENSE.txt").write_text("not an image, no image extension: ignored\n")
    return d


def synth(refs, out, *extra):
    args = ["data", "synth", "--references", str(refs), "--out", str(out), "--size", str(SIZE)]
    return main(args + ["--types", ",".join(TYPES), "--workers", "1", "--crops", "2", "--no-progress", *extra])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_synth_writes_the_agreed_layout_and_resumes(refs, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(refs, out) == 0
    rows = read_csv(out / "dmos.csv")
    with open(out / "dmos.csv") as f:
        header = f.readline().strip().split(",")
    assert header == ["dist_img", "ref_img", "dmos", "dist_type", "level", *COMMITTEE]
    assert len(rows) == 2 * 2 * len(TYPES) * 5  # photos x crops x types x levels
    names = {p.name for p in (out / "images").iterdir()}
    assert {"I01.png", "I02.png", "I03.png", "I04.png"} <= names
    assert {"I01_10_01.png", "I04_01_05.png", "I02_23_03.png"} <= names
    assert len(names) == len(rows) + 4 and not any(n.startswith(".") for n in names)
    umask = os.umask(0)
    os.umask(umask)
    for f in (out / "images" / "I01.png", out / "images" / "I01_10_01.png", out / "manifest.json"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    for r in rows:
        assert r["dist_img"] in names and r["ref_img"] in names
        assert r["dist_img"].startswith(r["ref_img"][:-4] + "_")
        assert 0.0 <= float(r["dmos"]) <= 1.0 and r["dist_type"] in TYPES and 1 <= int(r["level"]) <= 5
        with Image.open(out / "images" / r["dist_img"]) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == "metaiqa data synth" and manifest["version"] == 1
    assert manifest["seed"] == 0 and manifest["committee"]["metrics"] == list(COMMITTEE)
    assert set(manifest["references"]) == {"I01.png", "I02.png", "I03.png", "I04.png"}
    assert manifest["references"]["I01.png"]["source"] == "a.png"
    assert manifest["references"]["I04.png"]["source"] == "b.png"
    assert len(manifest["references"]["I02.png"]["box"]) == 4
    assert sorted(manifest["distortions"]) == sorted(TYPES)
    # crops of one photo differ (two scales / positions)
    a1, a2 = (np.asarray(Image.open(out / "images" / f"I0{i}.png")) for i in (1, 2))
    assert not np.array_equal(a1, a2)

    # second run: nothing to do, nothing changes
    mtime = (out / "images" / "I01_10_01.png").stat().st_mtime_ns
    capsys.readouterr()
    assert synth(refs, out) == 0
    assert json.loads(capsys.readouterr().out)["images_added"] == 0
    assert read_csv(out / "dmos.csv") == rows
    assert (out / "images" / "I01_10_01.png").stat().st_mtime_ns == mtime

    # interrupted run: only part of the csv made it; resuming restores identical rows
    with open(out / "dmos.csv") as f:
        lines = f.readlines()
    (out / "dmos.csv").write_text("".join(lines[:8]))
    (out / "images" / rows[-1]["dist_img"]).unlink()
    assert synth(refs, out) == 0
    resumed = read_csv(out / "dmos.csv")
    key = lambda r: r["dist_img"]  # noqa: E731
    assert sorted(resumed, key=key) == sorted(rows, key=key)
    assert (out / "images" / rows[-1]["dist_img"]).exists()


def test_synth_is_deterministic_and_seed_dependent(refs, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert synth(refs, a, "--levels", "2") == 0
    assert synth(refs, b, "--levels", "2") == 0
    assert synth(refs, c, "--levels", "2", "--seed", "1") == 0
    assert read_csv(a / "dmos.csv") == read_csv(b / "dmos.csv")
    img = "I01_23_02.png"
    np.testing.assert_array_equal(np.asarray(Image.open(a / "images" / img)), np.asarray(Image.open(b / "images" / img)))
    assert read_csv(a / "dmos.csv") != read_csv(c / "dmos.csv")


def test_workers_do_not_change_the_result(refs, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert synth(refs, a, "--levels", "2") == 0
    assert synth(refs, b, "--levels", "2", "--workers", "2") == 0
    assert read_csv(a / "dmos.csv") == read_csv(b / "dmos.csv")


def test_non_image_reference_is_refused_by_name(refs, tmp_path, capsys):
    (refs / "broken.jpg").write_bytes(b"this is not a jpeg")
    assert synth(refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "not a readable image" in err
    assert not (tmp_path / "out" / "dmos.csv").exists()


def test_too_small_reference_is_refused_or_skipped(refs, tmp_path, capsys):
    Image.fromarray(natural_image(48, seed=0)).save(refs / "small.png")
    assert synth(refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "small.png" in err and "48x48" in err and "smaller than the crop size" in err
    assert synth(refs, tmp_path / "out", "--skip-bad", "--levels", "1") == 0
    assert len(read_csv(tmp_path / "out" / "dmos.csv")) == 2 * 2 * len(TYPES)


def test_no_usable_reference_and_unknown_type_are_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "synth", "--references", str(empty), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "no usable reference" in capsys.readouterr().err
    args = ["data", "synth", "--references", str(empty), "--out", str(tmp_path / "o"), "--types", "jpeg,bogus"]
    assert main(args) == 2
    assert "bogus" in capsys.readouterr().err


def test_other_settings_on_an_existing_set_are_refused(refs, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(refs, out, "--levels", "1") == 0
    assert synth(refs, out, "--levels", "1", "--seed", "3") == 2
    assert "seed" in capsys.readouterr().err


def test_inspect_reports_counts_ranges_and_flags_non_monotone(refs, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(refs, out, "--levels", "3") == 0
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--strict"]) == 0
    text = capsys.readouterr().out
    for t in TYPES:
        assert t in text
    assert "36 images" in text and "4 references" in text and "NOT MONOTONE" not in text

    # swap two levels' labels of one type: inspect must flag it (and --strict fail)
    rows = read_csv(out / "dmos.csv")
    for r in rows:
        if r["dist_type"] == "jpeg":
            r["dmos"] = {"1": "0.2", "2": "0.9", "3": "0.1"}[r["level"]]
    with open(out / "dmos.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["data", "inspect", str(out), "--strict"]) == 1
    text = capsys.readouterr().out
    assert "jpeg" in text and "NOT MONOTONE" in text
    assert main(["data", "inspect", str(tmp_path / "nowhere")]) == 2


def test_exif_orientation_is_applied_before_cropping(tmp_path):
    from metaiqa.data.synth import SynthSettings, make_crops

    img = natural_image(112, seed=6)[:, :80]  # stored 80 wide x 112 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed 112 wide x 80 high
    path = tmp_path / "rot.jpg"
    Image.fromarray(img).save(path, quality=95, exif=exif)
    [(crop, meta)] = make_crops(path, 0, SynthSettings(size=64, crops=1))
    assert crop.shape == (64, 64, 3)
    w, h = meta["resized"]
    assert w > h  # landscape after orientation
    x0, y0, x1, y1 = meta["box"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_changed_label_maps_are_refused_on_resume(refs, tmp_path, capsys):
    out = tmp_path / "out"
    assert synth(refs, out, "--levels", "1") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["committee"]["calibration_quantiles"]["gmsd"][0] = 0.5
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert synth(refs, out, "--levels", "1") == 2
    assert "maps" in capsys.readouterr().err

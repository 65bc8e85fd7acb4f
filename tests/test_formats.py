"""Data-set adapters on tiny fake copies of each format (generated here, never real data)."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from metaiqa.data.formats import (
    TID2013_TYPES,
    BadScore,
    DatasetNotFound,
    EmptyDataset,
    MissingColumns,
    MissingImage,
    UnknownDataset,
    UnreadableImage,
    describe,
    detect_format,
    load_dataset,
    parse_data_spec,
    verify_images,
)
from metaiqa.data.samples import DatasetError, Sample
from metaiqa.distortions.names import KADID_TYPES
from tests.conftest import natural_image


def save_image(path: Path, seed: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(natural_image(size, seed)).save(path)
    return path


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- fake data sets


def make_synth(root: Path, refs=2, types=(1, 10), levels=3, manifest=True) -> Path:
    rows = []
    for r in range(1, refs + 1):
        save_image(root / "images" / f"I{r:02d}.png", r)
        for t in types:
            for lv in range(1, levels + 1):
                name = f"I{r:02d}_{t:02d}_{lv:02d}.png"
                save_image(root / "images" / name, r * 100 + t * 10 + lv)
                rows.append([name, f"I{r:02d}.png", 1 - lv / (levels + 1), KADID_TYPES[t - 1], lv, 0.9])
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "dist_type", "level", "ms_ssim"], rows)
    if manifest:
        refs_meta = {f"I{r:02d}.png": {"source": f"photo{(r + 1) // 2}.jpg", "box": [0, 0, 16, 16], "scale": 1.0}
                     for r in range(1, refs + 1)}
        (root / "manifest.json").write_text(json.dumps(
            {"generator": "metaiqa data synth", "version": 1, "references": refs_meta, "seed": 0}))
    return root


def make_kadid(root: Path) -> Path:
    rows = [["I01_03_05.png", "I01.png", 1.0, 0.1], ["I01_03_01.png", "I01.png", 4.6, 0.2],
            ["I02_25_02.png", "I02.png", 3.0, 0.3]]
    for i, row in enumerate(rows):
        save_image(root / "images" / row[0], i)
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], rows)
    return root


def make_tid(root: Path) -> Path:
    lines = ["5.51429 i01_01_1.bmp", "", "3.0 i01_08_5.bmp", "0.5 I25_24_3.bmp"]
    for i, name in enumerate(["i01_01_1.bmp", "i01_08_5.BMP", "i25_24_3.bmp"]):  # case differs on disk
        save_image(root / "distorted_images" / name, i)
    root.mkdir(parents=True, exist_ok=True)
    (root / "mos_with_names.txt").write_text("\n".join(lines) + "\n")
    return root


def make_koniq(root: Path, folder="1024x768") -> Path:
    rows = [["10004473376.jpg", 5, 10, 50, 20, 15, 100, 3.5, 0.8, 60.2],
            ["1000.jpg", 60, 30, 10, 0, 0, 100, 1.0, 0.5, 10.0]]
    for i, row in enumerate(rows):
        save_image(root / folder / row[0], i)
    write_csv(root / "koniq10k_scores_and_distributions.csv",
              ["image_name", "c1", "c2", "c3", "c4", "c5", "c_total", "MOS", "SD", "MOS_zscore"], rows)
    return root


def make_livec(root: Path, names=("t1.bmp", "10.bmp", "1000.JPG"), mos=(63.9, 25.5, 100.0)) -> Path:
    (root / "Data").mkdir(parents=True, exist_ok=True)
    cells = np.empty((len(names), 1), dtype=object)  # MATLAB cell column of char arrays, as released
    for i, n in enumerate(names):
        cells[i, 0] = np.array([n])
    scipy.io.savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([mos], dtype=float)})
    for i, n in enumerate(names):
        folder = root / "Images" / ("trainingImages" if n.startswith("t") else "")
        save_image(folder / n, i)
    return root


# ----------------------------------------------------------------------------- happy paths


def test_synth(tmp_path):
    root = make_synth(tmp_path / "syn")
    samples = load_dataset("synth", root)
    assert len(samples) == 2 * 2 * 3  # references are not samples
    s = next(s for s in samples if s.path.name == "I02_10_03.png")
    assert s.group == "jpeg" and s.ref_id == "I02" and s.level == 3 and s.source == "photo1.jpg"
    assert s.mos == pytest.approx(1 - 3 / 4)
    assert s.path == root / "images" / "I02_10_03.png"
    assert {x.source for x in samples} == {"photo1.jpg"}  # both refs cut from one photo
    assert parse_data_spec(str(root)) == samples
    assert parse_data_spec(f"synth:{root}") == samples
    # without a manifest the scene is unknown, ref_id still set
    bare = load_dataset("synth", make_synth(tmp_path / "bare", manifest=False))
    assert all(x.source is None and x.ref_id for x in bare)
    assert detect_format(tmp_path / "bare") == "synth"  # recognised by its dist_type column
    assert detect_format(make_kadid(tmp_path / "kadid")) == "kadid10k"


def test_csv_relative_absolute_optional_columns(tmp_path):
    a = save_image(tmp_path / "imgs" / "a.png", 1)
    b = save_image(tmp_path / "elsewhere" / "b.jpg", 2)
    table = write_csv(tmp_path / "labels.csv", ["path", "mos", "group", "ref_id", "level"],
                      [["imgs/a.png", 0.25, "blur", "r1", 2], [str(b), 1.0, "", "", ""]])
    samples = parse_data_spec(str(table))
    assert samples == [Sample(a, 0.25, "blur", "r1", 2), Sample(b, 1.0, None, None, None)]
    assert load_dataset("csv", table) == samples


def test_csv_rescales_out_of_range_with_warning(tmp_path, caplog):
    for i in range(3):
        save_image(tmp_path / f"{i}.png", i)
    table = write_csv(tmp_path / "l.csv", ["path", "mos"], [["0.png", 1], ["1.png", 5], ["2.png", 2]])
    with caplog.at_level(logging.WARNING):
        samples = load_dataset("csv", table)
    assert [s.mos for s in samples] == [0.0, 1.0, 0.25]
    assert "mapping min..max" in caplog.text and "[1, 5]" in caplog.text


def test_kadid(tmp_path):
    samples = load_dataset("kadid10k", make_kadid(tmp_path / "kadid"))
    assert [(s.group, s.level, s.ref_id) for s in samples] == [
        ("motion_blur", 5, "I01"), ("motion_blur", 1, "I01"), ("contrast_change", 2, "I02")]
    assert [s.mos for s in samples] == pytest.approx([0.0, 0.9, 0.5])  # (dmos - 1) / 4, higher better
    assert parse_data_spec(str(tmp_path / "kadid")) == samples


def test_tid2013_case_insensitive(tmp_path):
    root = make_tid(tmp_path / "tid")
    samples = load_dataset("tid2013", root)
    assert len(TID2013_TYPES) == 24
    assert [(s.group, s.level, s.ref_id) for s in samples] == [
        ("white_noise", 1, "i01"), ("gaussian_blur", 5, "i01"), ("sparse_sampling", 3, "i25")]
    assert [s.mos for s in samples] == pytest.approx([5.51429 / 9, 3 / 9, 0.5 / 9])
    assert samples[1].path.name == "i01_08_5.BMP" and samples[2].path.name == "i25_24_3.bmp"
    assert detect_format(root) == "tid2013"


@pytest.mark.parametrize("folder", ["1024x768", "512x384"])
def test_koniq(tmp_path, folder):
    root = make_koniq(tmp_path / "koniq", folder)
    samples = load_dataset("koniq10k", root)
    assert [(s.ref_id, s.group) for s in samples] == [("10004473376.jpg", None), ("1000.jpg", None)]
    assert [s.mos for s in samples] == pytest.approx([2.5 / 4, 0.0])
    assert samples[0].path.parent.name == folder
    assert parse_data_spec(str(root)) == samples
    assert parse_data_spec(str(root / "koniq10k_scores_and_distributions.csv")) == samples


def test_livec_keeps_training_images(tmp_path):
    root = make_livec(tmp_path / "livec")
    samples = load_dataset("livec", root)
    assert [s.ref_id for s in samples] == ["t1.bmp", "10.bmp", "1000.JPG"]
    assert [s.mos for s in samples] == pytest.approx([0.639, 0.255, 1.0])
    assert samples[0].path == root / "Images" / "trainingImages" / "t1.bmp"
    assert all(s.group is None for s in samples)
    assert parse_data_spec(str(root)) == samples


# ----------------------------------------------------------------------------- errors


def test_unknown_names_and_missing_paths(tmp_path):
    with pytest.raises(UnknownDataset, match="known: synth, kadid10k, tid2013, koniq10k, livec, csv"):
        load_dataset("live", tmp_path)
    with pytest.raises(UnknownDataset, match="'kadid'"):
        parse_data_spec(f"kadid:{tmp_path}")
    with pytest.raises(DatasetNotFound, match="nowhere"):
        parse_data_spec(str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFound, match="dmos.csv"):
        load_dataset("kadid10k", tmp_path)
    with pytest.raises(UnknownDataset, match="no known data-set layout"):
        parse_data_spec(str(tmp_path))
    (tmp_path / "dmos.csv").write_text("dist_img,ref_img,dmos\n")
    with pytest.raises(DatasetNotFound, match="images"):
        load_dataset("kadid10k", tmp_path)
    with pytest.raises(DatasetNotFound, match="1024x768.*512x384"):
        load_dataset("koniq10k", make_koniq(tmp_path / "k", folder="other"))


def test_missing_columns_name_expected_and_found(tmp_path):
    save_image(tmp_path / "a.png")
    table = write_csv(tmp_path / "l.csv", ["file", "score"], [["a.png", 0.5]])
    with pytest.raises(MissingColumns, match=r"l.csv line 1: missing column\(s\) \['path', 'mos'\].*found \['file', 'score'\]"):
        load_dataset("csv", table)
    root = make_synth(tmp_path / "s")
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos"], [])
    with pytest.raises(MissingColumns, match="dist_type"):
        load_dataset("synth", root)


@pytest.mark.parametrize("bad", ["nan", "abc", "", "inf"])
def test_bad_scores_name_file_and_line(tmp_path, bad):
    for i in range(3):
        save_image(tmp_path / f"{i}.png", i)
    table = write_csv(tmp_path / "l.csv", ["path", "mos"], [["0.png", 0.1], ["1.png", bad], ["2.png", 0.3]])
    with pytest.raises(BadScore, match=r"l.csv line 3: mos"):
        load_dataset("csv", table)


def test_out_of_scale_scores(tmp_path):
    root = make_kadid(tmp_path / "kadid")
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos", "var"], [["I01_03_05.png", "I01.png", 7.0, 0]])
    with pytest.raises(BadScore, match=r"dmos.csv line 2: dmos 7 outside the format's scale \[1, 5\]"):
        load_dataset("kadid10k", root)
    root = make_tid(tmp_path / "tid")
    (root / "mos_with_names.txt").write_text("5.0 i01_01_1.bmp\n9.5 i01_08_5.bmp\n")
    with pytest.raises(BadScore, match="mos_with_names.txt line 2"):
        load_dataset("tid2013", root)
    root = make_livec(tmp_path / "livec", mos=(10.0, float("nan"), 20.0))
    with pytest.raises(BadScore, match="AllMOS_release.mat entry 2"):
        load_dataset("livec", root)


def test_missing_image_names_file_and_line(tmp_path):
    root = make_synth(tmp_path / "s")
    (root / "images" / "I01_10_02.png").unlink()
    with pytest.raises(MissingImage, match=r"dmos.csv line \d+: image 'I01_10_02.png' not found"):
        load_dataset("synth", root)
    root = make_tid(tmp_path / "tid")
    (root / "distorted_images" / "i25_24_3.bmp").unlink()
    with pytest.raises(MissingImage, match="mos_with_names.txt line 4: image 'I25_24_3.bmp'"):
        load_dataset("tid2013", root)
    root = make_livec(tmp_path / "lc")
    (root / "Images" / "10.bmp").unlink()
    with pytest.raises(MissingImage, match="AllImages_release.mat entry 2: image '10.bmp'"):
        load_dataset("livec", root)
    table = write_csv(tmp_path / "l.csv", ["path", "mos"], [["gone.png", 0.5]])
    with pytest.raises(MissingImage, match="l.csv line 2: image 'gone.png'"):
        load_dataset("csv", table)


def test_malformed_names_and_files(tmp_path):
    root = make_kadid(tmp_path / "kadid")
    save_image(root / "images" / "photo.png")
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos"], [["photo.png", "I01.png", 3]])
    with pytest.raises(DatasetError, match="line 2: file name 'photo.png' is not KADID-style"):
        load_dataset("kadid10k", root)
    write_csv(root / "dmos.csv", ["dist_img", "ref_img", "dmos"], [["I01_26_01.png", "I01.png", 3]])
    with pytest.raises(DatasetError, match="type 26"):
        load_dataset("kadid10k", root)
    root = make_tid(tmp_path / "tid")
    (root / "mos_with_names.txt").write_text("5.0\n")
    with pytest.raises(DatasetError, match="line 1: expected 'MOS filename'"):
        load_dataset("tid2013", root)
    root = make_livec(tmp_path / "lc")
    (root / "Data" / "AllMOS_release.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="AllMOS_release.mat: not a readable MATLAB file"):
        load_dataset("livec", root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": np.array([[1.0, 2.0]])})
    with pytest.raises(DatasetError, match="lists 3 images but .* holds 2 scores"):
        load_dataset("livec", root)
    scipy.io.savemat(root / "Data" / "AllMOS_release.mat", {"MOS": np.array([[1.0]])})
    with pytest.raises(MissingColumns, match=r"missing variable 'AllMOS_release'; found \['MOS'\]"):
        load_dataset("livec", root)


def test_empty_data_sets(tmp_path):
    table = write_csv(tmp_path / "l.csv", ["path", "mos"], [])
    with pytest.raises(EmptyDataset, match="l.csv"):
        load_dataset("csv", table)
    root = make_tid(tmp_path / "tid")
    (root / "mos_with_names.txt").write_text("\n\n")
    with pytest.raises(EmptyDataset, match="mos_with_names.txt"):
        load_dataset("tid2013", root)


def test_verify_images_names_the_bad_file(tmp_path):
    root = make_synth(tmp_path / "s")
    samples = load_dataset("synth", root)
    verify_images(samples)  # all good
    bad = root / "images" / "I01_01_02.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(UnreadableImage, match="I01_01_02.png"):
        verify_images(samples)
    bad.write_bytes(b"plain text, not an image")
    with pytest.raises(UnreadableImage, match="I01_01_02.png"):
        verify_images(samples)


def test_describe(tmp_path):
    samples = load_dataset("synth", make_synth(tmp_path / "s"))
    d = describe(samples)
    assert d["n"] == 12 and d["references"] == 2 and d["contents"] == 1
    assert set(d["groups"]) == {"gaussian_blur", "jpeg"}
    assert d["groups"]["jpeg"]["n"] == 6
    assert d["groups"]["jpeg"]["mos_min"] == pytest.approx(0.25)
    json.dumps(d)

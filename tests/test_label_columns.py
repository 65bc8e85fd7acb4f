"""The labelled CSV's column names: scene/content/ref_id (what the image shows) and
distortion/group (distortion type) -- the obvious name must do the right thing."""

import logging
from pathlib import Path

import pytest

from metaiqa.cli import main
from metaiqa.data.formats import describe, parse_data_spec
from metaiqa.data.labelcsv import KNOWN_COLUMNS, ConflictingColumns
from metaiqa.data.tasks import split_references
from tests.test_formats import save_image, write_csv

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def imgs(tmp_path):
    return [save_image(tmp_path / f"{i}.png", i) for i in range(6)]


@pytest.mark.parametrize("scene_col", ["scene", "content", "ref_id", "Scene"])
@pytest.mark.parametrize("dist_col", ["distortion", "group", "Distortion"])
def test_every_alias_fills_the_same_fields(tmp_path, imgs, scene_col, dist_col):
    table = write_csv(tmp_path / "l.csv", ["path", "mos", scene_col, dist_col, "level"],
                      [[p.name, i / 10, f"photo{i // 2}", "jpeg" if i % 2 else "", i % 2] for i, p in enumerate(imgs)])
    samples = parse_data_spec(str(table))
    assert [s.ref_id for s in samples] == ["photo0", "photo0", "photo1", "photo1", "photo2", "photo2"]
    assert [s.content for s in samples] == [s.ref_id for s in samples]  # what content-disjoint splits group by
    assert [s.group for s in samples] == [None, "jpeg"] * 3
    assert describe(samples)["contents"] == 3 and set(describe(samples)["groups"]) == {"jpeg", "(none)"}


def test_scene_keeps_versions_of_one_photo_on_one_side_of_a_split(tmp_path, imgs):
    table = write_csv(tmp_path / "l.csv", ["path", "mos", "scene"],
                      [[p.name, i / 10, f"photo{i // 2}"] for i, p in enumerate(imgs)])
    train, test = split_references(parse_data_spec(str(table)), (0.5, 0.5), seed=0)
    assert train and test and not {s.content for s in train} & {s.content for s in test}


def test_two_aliases_agreeing_are_fine_differing_is_an_error(tmp_path, imgs):
    ok = write_csv(tmp_path / "ok.csv", ["path", "mos", "scene", "ref_id", "group", "distortion"],
                   [[imgs[0].name, 0.5, "a", "a", "blur", ""], [imgs[1].name, 0.6, "", "b", "", "blur"]])
    assert [(s.ref_id, s.group) for s in parse_data_spec(str(ok))] == [("a", "blur"), ("b", "blur")]
    bad = write_csv(tmp_path / "bad.csv", ["path", "mos", "content", "scene"],
                    [[imgs[0].name, 0.5, "a", "a"], [imgs[1].name, 0.6, "kitchen", "garden"]])
    with pytest.raises(ConflictingColumns) as exc:
        parse_data_spec(str(bad))
    msg = str(exc.value)
    assert "line 3" in msg and "content='kitchen'" in msg and "scene='garden'" in msg
    bad_dist = write_csv(tmp_path / "bad2.csv", ["path", "mos", "group", "distortion"], [[imgs[0].name, 0.5, "x", "y"]])
    with pytest.raises(ConflictingColumns, match="group='x'"):
        parse_data_spec(str(bad_dist))


def test_conflict_is_a_one_line_cli_error(tmp_path, imgs, capsys):
    bad = write_csv(tmp_path / "bad.csv", ["path", "mos", "scene", "ref_id"], [[imgs[0].name, 0.5, "a", "b"]])
    assert main(["validate", "--data", str(bad), "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "metaiqa validate: error:" in err and "scene='a'" in err


def test_unknown_columns_are_named_in_a_warning(tmp_path, imgs, caplog):
    table = write_csv(tmp_path / "l.csv", ["path", "mos", "scene_id"], [[imgs[0].name, 0.5, "a"]])
    with caplog.at_level(logging.WARNING):
        (sample,) = parse_data_spec(str(table))
    assert sample.ref_id is None and "['scene_id'] are not used" in caplog.text


def test_help_and_readme_name_the_columns(capsys):
    for cmd in ("validate", "fine-tune"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "path,mos[,scene][,distortion][,level]" in text and "alias group; it is not the scene" in text
    readme = README.read_text()
    section = readme[readme.index("### Labelled CSV columns"):]
    section = section[: section.index("\n#", 1)]
    for column in KNOWN_COLUMNS:
        assert f"`{column}`" in section, column

"""Pipeline use of `metaiqa score` / `metaiqa gate`: paths from stdin or a file, streamed jsonl and
table rows, --strict, gate csv, and a reader that closes the pipe early."""

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from metaiqa.cli import EXIT_BROKEN_PIPE, main
from metaiqa.inference.pipeline import ImagePipeline
from tests import test_cli_score as base
from tests.conftest import natural_image
from tests.test_cli_score import gate_threshold, reference_scores, run

ckpt, images, bad_file = base.ckpt, base.images, base.bad_file  # the score tests' fixtures


def fake_stdin(monkeypatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8"))


def all_images(root):
    return sorted(root.rglob("*.png")) + sorted(root.rglob("*.jpg"))


def test_score_dash_reads_paths_from_stdin_as_jsonl(capsys, monkeypatch, ckpt, images):
    paths = all_images(images)
    fake_stdin(monkeypatch, "\n".join(map(str, paths)) + "\n\n# a comment line\n")
    code, out, _ = run(capsys, "score", "-", "--model", ckpt, "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    assert [r["path"] for r in rows] == list(map(str, paths))
    ref = reference_scores(ckpt, paths)
    for r in rows:
        assert r["model"] == "tiny" and r["error"] is None
        assert r["score"] == pytest.approx(ref[r["path"]], abs=1e-6)


def test_files_from_skips_blank_lines_and_comments_and_mixes_with_paths(capsys, monkeypatch, ckpt, images, tmp_path):
    monkeypatch.chdir(images)  # relative entries are relative to the current folder
    listing = tmp_path / "list.txt"
    listing.write_text("# images to check\n\n  a.png  \nsub/c.jpg\n#sub/d.png\n")
    code, out, _ = run(capsys, "score", "--files-from", listing, "b.png", "--model", ckpt, "--format", "csv")
    assert code == 0
    assert [r["path"] for r in csv.DictReader(io.StringIO(out))] == ["b.png", "a.png", "sub/c.jpg"]


@pytest.mark.parametrize("make", ["missing", "folder"])
def test_files_from_that_cannot_be_read_is_a_clear_error(capsys, ckpt, tmp_path, make):
    source = tmp_path / "nope.txt"
    if make == "folder":
        source.mkdir()
    code, out, err = run(capsys, "score", "--files-from", source, "--model", ckpt)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"--files-from {source}: " in err
    assert ("file not found" if make == "missing" else "is a folder") in err


def test_no_inputs_at_all_is_a_usage_error(capsys, ckpt):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", str(ckpt)])
    assert exc.value.code == 2 and "--files-from" in capsys.readouterr().err


class RecordingStdout(io.StringIO):
    """stdout that notes, at each line written, how many images the scorer had been asked for."""

    def __init__(self, counter):
        super().__init__()
        self.counter, self.seen = counter, []

    def write(self, text):
        self.seen += [(line, self.counter()) for line in text.splitlines() if line]
        return super().write(text)


def test_jsonl_rows_are_written_as_batches_finish_not_at_the_end(monkeypatch, ckpt, images):
    asked = []
    original = ImagePipeline.prepare_paths_safe

    def counting(self, paths, *a, **k):
        asked.extend(paths)
        return original(self, paths, *a, **k)

    monkeypatch.setattr(ImagePipeline, "prepare_paths_safe", counting)
    out = RecordingStdout(lambda: len(asked))
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["-q", "score", str(images), "--model", str(ckpt), "--format", "jsonl", "--batch-size", "1"]) == 0
    seen = [n for _, n in out.seen]
    assert len(seen) == 4
    # row k is printed once image k is scored, while at most image k+1 (the batch read ahead) is read
    assert all(k <= n <= k + 1 for k, n in enumerate(seen, 1)), seen
    assert all(json.loads(line)["score"] is not None for line, _ in out.seen)


def test_table_with_heatmaps_prints_each_row_before_the_next_heatmap(monkeypatch, ckpt, images, tmp_path):
    heat = tmp_path / "heat"
    out = RecordingStdout(lambda: len(list(heat.glob("*.png"))))
    monkeypatch.setattr(sys, "stdout", out)
    code = main(["-q", "score", str(images), "--model", str(ckpt), "--heatmap-dir", str(heat), "--batch-size", "4"])
    assert code == 0
    header, *rows = out.seen
    assert header[0].split() == ["score", "width", "height", "path", "error"]
    assert [n for _, n in rows] == [1, 2, 3, 4]  # each row right after its own heatmap, not after all four
    assert len(list(heat.glob("*.png"))) == 4


def test_strict_exits_2_and_says_how_many_default_stays_0(capsys, ckpt, images, bad_file, tmp_path):
    argv = ["score", images / "a.png", bad_file, tmp_path / "missing.png", "--model", ckpt, "--format", "jsonl"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and len(out.splitlines()) == 3  # default: bad files reported in their rows, exit 0
    code, out, err = run(capsys, *argv, "--strict")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and "2 of 3 inputs could not be scored (--strict)" in err
    assert sum(r["score"] is not None for r in rows) == 1  # the output is still complete
    code, _, err = run(capsys, "score", images / "a.png", "--model", ckpt, "--strict")
    assert code == 0 and "--strict" not in err


def test_gate_csv_columns_and_results(capsys, ckpt, images, bad_file):
    t, n = gate_threshold(ckpt, images)
    code, out, err = run(capsys, "gate", f"{images}/**/*.png", "--model", ckpt, "--min-score", t, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1 and "gate FAIL" in err
    assert list(rows[0]) == ["path", "score", "result", "error"]
    assert [r["result"] for r in rows].count("fail") == 1 and [r["result"] for r in rows].count("pass") == n - 1
    for r in rows:
        assert (float(r["score"]) >= t) == (r["result"] == "pass") and r["error"] == ""
    code, out, _ = run(capsys, "gate", images / "a.png", bad_file, "--model", ckpt, "--min-score", 0, "--format", "csv")
    rows = {r["path"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 2 and rows[str(bad_file)]["result"] == "error" and rows[str(bad_file)]["score"] == ""
    assert "not a recognised image" in rows[str(bad_file)]["error"] and rows[str(images / "a.png")]["result"] == "pass"


@pytest.fixture
def many_images(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        Image.fromarray(natural_image(48, i)).save(root / f"img{i:02d}.png")
    return sorted(root.glob("*.png"))


def metaiqa_exe():
    exe = shutil.which("metaiqa")
    if exe is None:
        pytest.skip("the `metaiqa` console script is not installed (pip install -e .)")
    return exe


def test_closed_pipe_stops_quietly(ckpt, many_images):
    """The reader leaves before the first row (`| head -0`): no traceback, exit 141 like other tools."""
    proc = subprocess.Popen(
        [metaiqa_exe(), "-q", "score", "-", "--model", str(ckpt), "--format", "jsonl", "--batch-size", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # long before the model is loaded
    _, err = proc.communicate("\n".join(map(str, many_images)).encode(), timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception ignored" not in err


def test_head_1_gets_one_row_and_no_traceback(ckpt, many_images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, many_images)))
    cmd = f"'{metaiqa_exe()}' -q score - --model '{ckpt}' --format jsonl --batch-size 1 < '{listing}' | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["path"] == str(many_images[0])


def test_paths_from_stdin_through_the_installed_script(ckpt, images):
    proc = subprocess.run(
        [metaiqa_exe(), "-q", "score", "-", "--model", str(ckpt), "--format", "jsonl"],
        input=f"{images / 'a.png'}\n# skipped\n{images / 'b.png'}\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["path"] for line in proc.stdout.splitlines()] == [str(images / "a.png"), str(images / "b.png")]
    assert np.isfinite([json.loads(line)["score"] for line in proc.stdout.splitlines()]).all()


def test_readme_pipelines_section_matches_the_output_formats():
    from pathlib import Path

    from metaiqa.cli.score_output import GATE_CSV_COLUMNS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Pipelines"):]
    section = section[: section.index("\n## ")]
    rows = [json.loads(line) for line in section.splitlines() if line.startswith('{"path"')]
    assert len(rows) >= 5 and {"path", "score", "width", "height", "error", "model"} <= set(rows[0])
    assert ",".join(GATE_CSV_COLUMNS) in section and "--files-from" in section and "--strict" in section

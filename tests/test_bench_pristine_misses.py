"""benchmarks/pristine_misses.py: which pairs are misses, the committee-quality bands, the contact sheet."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pristine_misses  # noqa: E402


def _samples(root: Path):
    return [SimpleNamespace(ref_id="r0", content="scene0", group=kind, level=level, mos=mos,
                            path=root / f"r0_{kind}_{level}.png")
            for kind, level, mos in (("blur", 1, 0.95), ("blur", 2, 0.6), ("noise", 1, 0.85), ("noise", 2, 0.3))]


def test_misses_are_ties_and_wins_over_pristine_largest_first_and_bands_count_them(tmp_path):
    samples = _samples(tmp_path)
    pristine = {"r0": tmp_path / "r0.png"}
    scores = {pristine["r0"]: 0.5, samples[0].path: 0.7, samples[1].path: 0.4,
              samples[2].path: 0.5, samples[3].path: 0.2}
    missed = pristine_misses.misses(scores, samples, pristine)
    assert [m["image"] for m in missed] == ["r0_blur_1.png", "r0_noise_1.png"]  # +0.2 first, then the tie
    assert missed[0]["margin"] == pytest.approx(0.2) and missed[1]["margin"] == 0.0
    bands = {b["band"]: b for b in pristine_misses.by_band(samples, missed)}
    assert bands["[0.0, 0.5]"] == {"band": "[0.0, 0.5]", "pairs": 1, "misses": 0, "pristine_above": 1.0}
    assert bands["[0.8, 0.9]"]["misses"] == 1 and bands["[0.9, 1.0]"]["pristine_above"] == 0.0
    assert sum(b["pairs"] for b in bands.values()) == len(samples)


def test_contact_sheet_has_a_row_per_miss_up_to_n(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("r0.png", "r0_blur_1.png", "r0_noise_1.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    missed = [{"image": n, "pristine": "r0.png", "scene": "scene0", "type": "blur", "level": 1,
               "committee_quality": 0.9, "margin": 0.1} for n in ("r0_blur_1.png", "r0_noise_1.png")]
    out = tmp_path / "sheet.png"
    pristine_misses.contact_sheet(missed, tmp_path, out, n=1, tile=32)
    one = Image.open(out).size
    pristine_misses.contact_sheet(missed, tmp_path, out, n=5, tile=32)
    two = Image.open(out).size
    assert one[0] == two[0] == 2 * 32 + 12 and two[1] - one[1] == 32 + 22

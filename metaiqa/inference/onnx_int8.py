"""Static int8 ONNX exports: `metaiqa export --onnx --int8 --calibration DIR SRC NAME.int8.onnx`.

ONNX Runtime runs the convolutions in int8 (QDQ format, per-channel weights, uint8
activations; AVX-512 VNNI where the CPU has it) at ~3x the float32 views/s here
(benchmarks/README.md, "Issue 11: speed"). The MSCN front end, the final `fc`, the regression
head and the sigmoid stay float32: they are cheap, and quantising them moved scores by up to
0.08 where keeping them float kept every score within 0.007 of float32 on 50 photos.

Activation ranges come from the views of calibration photos (`--calibration`, a folder; the
views the checkpoint's own policy makes, so the ranges match what is scored). The export is an
ordinary metaiqa ONNX export (same format, same hash and source checks in `load_onnx`) whose
sidecar says `"dtype": "int8"` and how it was calibrated. `--backend auto` uses NAME.int8.onnx
beside a checkpoint when present, `--backend int8` insists on it, `--backend onnx` ignores it.
"""

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from metaiqa.errors import InvalidInput, MetaIQAError
from metaiqa.inference.onnx_export import (
    BackendUnavailable,
    _check_onnx_name,
    _embedded,
    _onnx_bytes,
    commit_export,
    export_size,
)
from metaiqa.models.checkpoint import LoadedCheckpoint, load_checkpoint

log = logging.getLogger(__name__)

#: node-name prefixes of the ONNX graph kept in float32 (front end, last layer, head, output)
KEEP_FLOAT = ("/input_norm", "/backbone/fc", "/head", "/Sigmoid")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def calibration_views(ckpt: LoadedCheckpoint, photos: Sequence[Path]) -> np.ndarray:
    """The (N, 3, h, w) float32 views the checkpoint's policy makes of the calibration photos."""
    from metaiqa.inference.scorer import Scorer

    scorer = Scorer(ckpt.model, ckpt.preprocess, name=ckpt.name)
    views = []
    for p in photos:
        try:
            views.append(scorer.views(scorer.read(p).pixels).numpy())
        except (MetaIQAError, OSError) as exc:  # an unreadable photo is skipped, not fatal
            log.warning("calibration: skipping %s (%s)", p, exc)
    if len(views) < 4:
        raise InvalidInput(f"calibration: only {len(views)} of {len(photos)} photos could be read; need at least 4")
    shapes = {v.shape[1:] for v in views}
    if len(shapes) != 1:
        raise InvalidInput(f"calibration needs views of one size; the policy {ckpt.preprocess} made {sorted(shapes)}")
    return np.concatenate(views)


def calibration_photos(folder: str | os.PathLike, limit: int = 64) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise InvalidInput(f"--calibration {root}: not a folder of photos")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if len(photos) < 4:
        raise InvalidInput(f"--calibration {root}: {len(photos)} photos found; give at least 4 ("
                           f"{', '.join(IMAGE_SUFFIXES)}), ideally a few dozen like the ones you will score")
    return photos


def _reader(views: np.ndarray, batch: int = 16):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (views[i : i + batch] for i in range(0, len(views) - batch + 1, batch))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"views": b}

    return Reader()


def quantize_bytes(fp32: bytes, views: np.ndarray, props: dict[str, str]) -> bytes:
    """Static int8 (QDQ) version of a float32 metaiqa ONNX model, `props` as its metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="metaiqa-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        keep = [n.name for n in onnx.load_from_string(fp32).graph.node if n.name.startswith(KEEP_FLOAT)]
        quantize_static(str(src), str(dst), _reader(views), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
        proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def write_onnx_int8(ckpt: LoadedCheckpoint, out: str | os.PathLike, calibration: str | os.PathLike, *,
                    note: str | None = None) -> Path:
    """Export a loaded checkpoint as static int8 ONNX calibrated on the photos in `calibration`."""
    out = _check_onnx_name(out)
    photos = calibration_photos(calibration)
    views = calibration_views(ckpt, photos)
    if len(views) < 16:
        raise InvalidInput(f"--calibration {calibration}: {len(views)} views; need at least 16 (more photos)")
    props = _embedded(ckpt.meta, ckpt.preprocess)
    try:
        blob = quantize_bytes(_onnx_bytes(ckpt.model, export_size(ckpt), props), views, props)
    except ImportError as exc:
        raise BackendUnavailable(f"int8 export needs onnx and onnxruntime ({exc}); pip install onnx onnxruntime") from None
    log.info("int8 export of %s calibrated on %d views of %d photos", ckpt.name, len(views), len(photos))
    fields = {"dtype": "int8", "quantization": {"method": "static QDQ, per-channel int8 weights, uint8 activations, "
                                                          "MinMax", "kept_float": list(KEEP_FLOAT),
                                                "calibration": {"folder": str(calibration), "photos": len(photos),
                                                                "views": int(len(views))}}}
    return commit_export(ckpt, out, blob, fields, note=note)


def export_onnx_int8(src: str | os.PathLike, out: str | os.PathLike, calibration: str | os.PathLike, *,
                     note: str | None = None) -> Path:
    """`metaiqa export --onnx --int8 --calibration DIR SRC OUT.onnx`."""
    return write_onnx_int8(load_checkpoint(src), out, calibration, note=note)

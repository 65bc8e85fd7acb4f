"""Issue 11: which inference variants keep every score within 0.01 of float32 (and, with --time, how fast).

Variants of one checkpoint (default metaiqa-default), each scoring the same photos through the
same views (Scorer.prepare), compared with eager float32 torch:

- `onnx`: ONNX Runtime float32 (the shipped `--backend onnx`)
- `torch_int8_dynamic`: torch dynamic int8 quantisation (Linear layers only; convs stay fp32)
- `torch_int8_static`: FX graph-mode static int8 (fbgemm), the MSCN front end kept float,
  calibrated on views of *other* photos than the ones scored
- `onnx_int8_dynamic`: ONNX Runtime dynamic int8 (MatMul/Conv weights int8)
- `torch_compile` (with --compile): torch.compile (inductor; needs a C++ compiler)

A variant is worth a backend only if it is faster on the target machine AND keeps max |delta|
<= 0.01 on every photo. Accuracy can be measured on a busy machine; timing (--time) only on an
idle one. Writes JSON to benchmarks/results/speed_variants.json and prints a table.

    python benchmarks/speed_variants.py --n 8                      # accuracy only
    python benchmarks/speed_variants.py --n 8 --time --compile     # + views/s (idle machine!)
"""

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REFERENCES = HERE.parent.parent / "shared" / "references"
TOLERANCE = 0.01


def photos(folder: Path, n: int, skip: int = 0) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[skip : skip + n]


def flat_views(scorer, paths) -> tuple[list[torch.Tensor], list[int]]:
    per = scorer.prepare([scorer.read(p).pixels for p in paths])
    return per, [v.shape[0] for v in per]


def per_photo(fn, per: list[torch.Tensor]) -> np.ndarray:
    with torch.inference_mode():
        return np.array([float(fn(v).reshape(-1).double().mean()) for v in per])


def onnx_session(model, int8: bool):
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 224, 224),), buf, dynamo=False, opset_version=17,
                          input_names=["views"], output_names=["score"], dynamic_axes={"views": {0: "n"}})
    data = buf.getvalue()
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp_in, tmp_out = Path("/tmp/_speed_fp32.onnx"), Path("/tmp/_speed_int8.onnx")
        tmp_in.write_bytes(data)
        quantize_dynamic(str(tmp_in), str(tmp_out), weight_type=QuantType.QInt8)
        data = tmp_out.read_bytes()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return lambda v: torch.from_numpy(sess.run(None, {"views": v.numpy()})[0])


def static_int8(model, calib: list[torch.Tensor]):
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "fbgemm"
    q = QConfigMapping().set_global(get_default_qconfig("fbgemm"))
    import copy

    m = copy.deepcopy(model).eval()  # only the backbone is quantised: the MSCN front end and head stay float
    with torch.inference_mode():
        example = m.input_norm(torch.rand(1, 3, 224, 224))
    m.backbone = prepare_fx(m.backbone, q, example_inputs=(example,))
    with torch.inference_mode():
        for v in calib:
            m(v)
    m.backbone = convert_fx(m.backbone)
    return m


def variants(model, calib, with_compile: bool) -> dict:
    out = {"float32": model}
    try:
        out["onnx"] = onnx_session(model, int8=False)
        out["onnx_int8_dynamic"] = onnx_session(model, int8=True)
    except ImportError as exc:
        print(f"skipping ONNX variants: {exc}", file=sys.stderr)
    out["torch_int8_dynamic"] = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    try:
        out["torch_int8_static"] = static_int8(model, calib)
    except Exception as exc:  # FX tracing or fbgemm may refuse a model: report, do not stop
        print(f"static int8 failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if with_compile:
        out["torch_compile"] = torch.compile(model)
    return out


def views_per_s(fn, batch: int, repeats: int) -> float:
    x = torch.rand(batch, 3, 224, 224)
    with torch.inference_mode():
        fn(x)  # warm-up (and compile)
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
    return batch * repeats / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="metaiqa-default")
    ap.add_argument("--photos", type=Path, default=REFERENCES)
    ap.add_argument("--n", type=int, default=8, help="photos scored (calibration uses the next --n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time", action="store_true", help="also measure views/s at batch 1 and 16 (idle machine)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="include torch.compile")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "speed_variants.json")
    args = ap.parse_args(argv)

    from metaiqa.inference import Scorer
    from metaiqa.models.pretrained import resolve_checkpoint

    torch.set_num_threads(args.threads)
    scorer = Scorer.from_checkpoint(resolve_checkpoint(args.model))
    per, counts = flat_views(scorer, photos(args.photos, args.n))
    calib, _ = flat_views(scorer, photos(args.photos, args.n, skip=args.n))
    ref = per_photo(scorer.model, per)
    rows = {}
    for name, fn in variants(scorer.model, calib, args.compile).items():
        scores = per_photo(fn, per)
        delta = np.abs(scores - ref)
        row = {"max_abs_delta": float(delta.max()), "mean_abs_delta": float(delta.mean()),
               "within_tolerance": bool(delta.max() <= TOLERANCE), "scores": [round(float(s), 6) for s in scores]}
        if args.time:
            row["views_per_s"] = {str(b): round(views_per_s(fn, b, args.repeats), 2) for b in (1, 16)}
        rows[name] = row
    result = {"model": args.model, "photos": args.n, "views": counts, "threads": args.threads,
              "tolerance": TOLERANCE, "timed": args.time, "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "variants": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'variant':<20} {'max|d|':>9} {'mean|d|':>9} {'<=0.01':>7} {'views/s b1':>11} {'b16':>7}")
    for name, r in rows.items():
        vs = r.get("views_per_s", {})
        print(f"{name:<20} {r['max_abs_delta']:9.5f} {r['mean_abs_delta']:9.5f} {str(r['within_tolerance']):>7} "
              f"{vs.get('1', '-'):>11} {vs.get('16', '-'):>7}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

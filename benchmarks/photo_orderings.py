"""Synthetic orderings on the best-rated photos of a joint run's human *validation* carve-out.

The validation that chose the session-6 default (MODEL_CARD.md, stage 2): the N best-rated
photos of the carve-out that the run's config defines (same seed and fraction, never a test
split), centre 384², every distortion type of our engine at levels 1/3/5; per checkpoint, the
mean within-(photo, type) SROCC of [pristine, 1, 3, 5] and the share of distorted versions
scored below their pristine photo. Same maths as `val_photo_orderings` in a joint run.

    cd benchmarks && python photo_orderings.py --config ../configs/fine_tune/continue_anchors.yaml \\
        --set human=biq2021-train:/work/data/biq2021 --top 20 CKPT [CKPT ...]
"""

import argparse
import json

import torch

from metaiqa.config import load_config
from metaiqa.meta.anchors import SyntheticOrderingSet
from metaiqa.meta.finetune import predict
from metaiqa.meta.human_data import best_rated, human_split, read_scaled
from metaiqa.meta.joint import JointConfig
from metaiqa.models.checkpoint import load_checkpoint
from metaiqa.models.pretrained import resolve_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint paths or bundled names")
    ap.add_argument("--config", required=True, help="the joint run's config (defines the carve-out)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--top", type=int, default=20, help="how many best-rated validation photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-type", action="store_true", help="also print each distortion type's two numbers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(JointConfig, args.config, args.overrides)
    _, val = human_split(cfg)
    order = best_rated(val, args.top)
    photos = read_scaled([val[i] for i in order], cfg, progress=False)
    orderings = SyntheticOrderingSet.from_images(photos, [val[i].ref_id for i in order], cfg.scale, cfg.seed)
    print(f"{len(orderings.images)} images from the {len(order)} best-rated validation photos", flush=True)
    for spec in args.checkpoints:
        ckpt = load_checkpoint(resolve_checkpoint(spec))
        model = ckpt.model.float().eval()
        pred = predict(model, orderings.images, ckpt.preprocess)
        result = orderings.summary(pred, prefix="val_photo")
        print(spec, json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
        if args.per_type:
            for kind, row in orderings.per_type(pred).items():
                print(f"  {kind:28s} within {row['within_srocc']:.3f}  pristine-above {row['pristine_above']:.3f}", flush=True)


if __name__ == "__main__":
    main()

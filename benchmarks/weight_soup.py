"""Average the weights of checkpoints that share an architecture and an ancestor (a "model soup").

Fine-tuning runs started from the same checkpoint usually stay in one basin of the loss, so the
mean of their weights is a model too, often more robust than each run (Wortsman et al., ICML
2022, "Model soups"). It costs no training: one candidate from runs already made.

    python benchmarks/weight_soup.py OUT.safetensors CKPT [CKPT ...] [--validate CONFIG --set k=v ...]

Floating tensors are averaged in float32 (BatchNorm running statistics too); integer buffers
(num_batches_tracked) are taken from the first checkpoint. The sidecar is the first
checkpoint's with `soup_of` naming every source and its sha256.

`--validate CONFIG`: after saving, run the joint fine-tune's validation (the carve of BIQ2021's
*train* split and the synthetic orderings of its validation photos, as in the run logs) on the
soup, by building the trainer of CONFIG with `init` set to the soup; prints one JSON line.

Session 13 (issue 10), written before any soup was scored: the uniform soup of stage 4 (the
shipped metaiqa-default) and the two session-12 candidates (runs/s12, runs/s12b best) ships
iff, as for every candidate since session 11, validation-scene pristine-above
(heldout.py --scenes val) >= 0.9517, val human SROCC >= 0.8096, val-photo within >= 0.949 and
no type ranked backwards. The test scenes are scored only after that decision.
"""

import argparse
import json
import logging
from pathlib import Path

import torch

from metaiqa.models.checkpoint import load_checkpoint, save_checkpoint
from metaiqa.models.pretrained import resolve_checkpoint


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of floating tensors (in float32); non-floating ones from the first state."""
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            raise SystemExit(f"checkpoint {i} has other tensors than checkpoint 0: {sorted(set(s) ^ keys)[:5]}")
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in states]).mean(dim=0)
        else:
            out[k] = v.clone()
    return out


def make_soup(out: Path, sources: list[str]) -> Path:
    loaded = [load_checkpoint(resolve_checkpoint(s)) for s in sources]
    names = {c.meta["model"] for c in loaded}
    if len(names) != 1:
        raise SystemExit(f"checkpoints name different architectures: {sorted(names)}")
    first = loaded[0]
    first.model.load_state_dict(average_state_dicts([c.model.state_dict() for c in loaded]))
    meta = first.meta
    return save_checkpoint(
        out, first.model, model_name=meta["model"], model_kwargs=meta.get("model_kwargs"),
        preprocess=first.preprocess, config=meta.get("config"), data=meta.get("data"),
        extra={"soup_of": [{"path": str(c.path), "sha256": c.meta["sha256"]} for c in loaded]},
    )


def validate(config: Path, overrides: list[str], init: Path) -> dict:
    from metaiqa.config import load_config
    from metaiqa.meta.joint import JointConfig, JointTrainer

    cfg = load_config(JointConfig, config, [*overrides, f"init={init}", "validate_init=false"])
    return JointTrainer(cfg, progress=False).validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("sources", nargs="+", help="checkpoints (paths or bundled names) to average")
    ap.add_argument("--validate", type=Path, metavar="CONFIG", help="joint fine-tune config whose validation to run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = make_soup(args.out, args.sources)
    logging.info("soup of %d checkpoints -> %s", len(args.sources), path)
    if args.validate:
        print(json.dumps(validate(args.validate, args.overrides, path)))


if __name__ == "__main__":
    main()

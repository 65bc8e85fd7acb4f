"""Classic NR-IQA peers that run offline on a CPU: BRISQUE and NIQE.

Both return "lower = better" numbers; `peer_scores` negates them so that, like metaiqa,
higher = better and correlations read the same way. Needs the `bench` extra:
    pip install -e ".[bench]"
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _brisque() -> Callable[[np.ndarray], float]:
    from brisque import BRISQUE

    model = BRISQUE(url=False)
    features = model.calculate_brisque_features

    def flat_features(*args, **kwargs):
        # brisque 0.2.0 returns 1-element arrays that numpy 2 will not turn into floats.
        return np.array([float(np.ravel(v)[0]) for v in features(*args, **kwargs)])

    model.calculate_brisque_features = flat_features
    return lambda rgb: -float(model.score(rgb))


def _niqe() -> Callable[[np.ndarray], float]:
    import skvideo.measure

    def score(rgb: np.ndarray) -> float:
        gray = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
        return -float(np.ravel(skvideo.measure.niqe(gray[None]))[0])

    return score


PEERS: dict[str, Callable[[], Callable[[np.ndarray], float]]] = {"brisque": _brisque, "niqe": _niqe}


def peer_scores(name: str, paths: Sequence[Path]) -> np.ndarray:
    """Higher-is-better scores of peer `name` for each image file."""
    fn = PEERS[name]()
    return np.asarray([fn(np.asarray(Image.open(p).convert("RGB"))) for p in paths], dtype=np.float64)

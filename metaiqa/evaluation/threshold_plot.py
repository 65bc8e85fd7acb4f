"""The histogram `metaiqa calibrate --plot` writes: good vs bad scores and the threshold(s).

Matplotlib through its object API and the Agg canvas (no pyplot state, no display), as in
evaluation/plots.py; imported only when a plot is asked for.
"""

import io
from collections.abc import Sequence

import numpy as np

GOOD_COLOUR, BAD_COLOUR = "#2a9d4b", "#d1495b"


def _bins(values: np.ndarray) -> np.ndarray:
    """Shared bin edges over the scores' range (and the thresholds), padded, within [0, 1]."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.05 * (hi - lo), 0.005)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    n = int(np.clip(np.sqrt(values.size) * 2, 10, 40))
    return np.linspace(lo, hi, n + 1)


def histogram_png(
    good: Sequence[float],
    bad: Sequence[float] | None,
    threshold: float,
    *,
    label: str = "suggested threshold",
    extra: dict[str, float] | None = None,
    title: str = "",
    dpi: int = 110,
) -> bytes:
    """PNG bytes: histograms of good (green) and bad (red) scores, a solid line at `threshold`,
    dashed lines for `extra` thresholds ({label: value}); x axis = score, over the scores' range."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    g = np.asarray(good, dtype=np.float64)
    b = np.asarray(bad if bad is not None else [], dtype=np.float64)
    lines = [float(threshold), *(float(v) for v in (extra or {}).values())]
    bins = _bins(np.concatenate([g, b, lines]))
    fig = Figure(figsize=(7.0, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(g, bins=bins, color=GOOD_COLOUR, alpha=0.6, label=f"good (n={g.size})")
    if b.size:
        ax.hist(b, bins=bins, color=BAD_COLOUR, alpha=0.6, label=f"bad (n={b.size})")
    ax.axvline(threshold, color="black", lw=2.0, label=f"{label} {threshold:.4g}")
    for name, value in (extra or {}).items():
        ax.axvline(value, color="black", lw=1.2, ls="--", label=f"{name} {value:.4g}")
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel("score (pass if score >= threshold)")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

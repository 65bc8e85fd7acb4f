"""Rendering of a validation report: the scatter plot (PNG bytes) and a self-contained HTML page.

Matplotlib is used through its object API with the Agg canvas (no pyplot global state, no
display needed); the page has inline CSS and the plot as a base64 data URI, so it opens
anywhere without a network or JavaScript.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from metaiqa.evaluation.metrics import logistic4


def _colors(n: int) -> list[tuple[float, ...]]:
    import matplotlib

    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors)
    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors)
    cols = list(matplotlib.colormaps["tab20"].colors) + list(matplotlib.colormaps["tab20b"].colors)
    return [cols[i % len(cols)] for i in range(n)]


def scatter_png(
    report: dict[str, Any], preds: np.ndarray, mos: np.ndarray, groups: Sequence[str], *, dpi: int = 110
) -> bytes:
    """Prediction vs MOS, one colour per group, with the report's fitted logistic curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p = np.asarray(preds, dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    keys = np.asarray(list(groups), dtype=object)
    names = sorted(set(keys.tolist()))
    many = len(names) > 12
    fig = Figure(figsize=(9.0 if many else 7.0, 5.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for g, color in zip(names, _colors(len(names)), strict=False):
        sel = keys == g
        label = g if len(names) > 1 else None
        ax.scatter(p[sel], m[sel], s=14, alpha=0.75, color=color, label=label, edgecolors="none")
    params = (report.get("logistic") or {}).get("params")
    if params and p.size:
        xs = np.linspace(p.min(), p.max(), 200)
        ax.plot(xs, logistic4(xs, *params), color="black", lw=1.8, label="logistic fit")
    ov = report.get("overall") or {}
    ax.set_title(f"n={p.size}   SROCC {_num(ov.get('srocc'))}   PLCC {_num(ov.get('plcc'))}   "
                 f"after fit {_num(ov.get('plcc_fitted'))}")
    ax.set_xlabel("predicted quality")
    ax.set_ylabel("MOS (higher = better)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if many:
            ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "n/a"
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]"


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    esc = html.escape
    th = "".join(f"<th>{esc(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(_num(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1000px;
color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f4f4f4}
.meta{color:#666;font-size:.9em}.warn{background:#fff3cd;border:1px solid #e0b400;padding:.5em}img{max-width:100%;border:1px solid #eee}
"""


def _overall_section(report: dict[str, Any]) -> list[str]:
    """Raw metrics with their intervals, after-fit PLCC/RMSE, and the fit's status."""
    esc = html.escape
    ov = report.get("overall") or {}
    ci = report.get("ci") or {}
    parts = ["<h2>Overall</h2>"]
    rows = [
        ("SROCC", ov.get("srocc"), _ci(ci.get("srocc")), "(rank: unchanged by the fit)"),
        ("KRCC", ov.get("krcc"), _ci(ci.get("krcc")), "(rank: unchanged by the fit)"),
        ("PLCC", ov.get("plcc"), _ci(ci.get("plcc")), ov.get("plcc_fitted")),
        ("RMSE", ov.get("rmse"), "", ov.get("rmse_fitted")),
    ]
    parts.append(_table(["metric", "raw", "95% CI (raw)", "after logistic fit"], rows))
    parts.append(
        f"<p class='meta'>95% CI after fit: PLCC {esc(_ci(ci.get('plcc_fitted')))}, "
        f"RMSE {esc(_ci(ci.get('rmse_fitted')))}. Intervals: bootstrap resampling whole contents "
        "(all images of a scene together); after-fit ones keep the mapping fixed.</p>"
    )
    lgst = report.get("logistic") or {}
    if lgst.get("fit_ok") is False:
        parts.append(f"<p class='meta'><strong>No logistic fit</strong> (after-fit values n/a): "
                     f"{esc(str(lgst.get('reason') or 'the fit failed'))}.</p>")
    return parts


def render_html(report: dict[str, Any], png: bytes | None) -> str:
    """One self-contained HTML page for `report` with the scatter plot inlined."""
    esc = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>metaiqa validation report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>metaiqa validation report</h1>"]
    model = report.get("model") or {}
    if not isinstance(model, dict):  # callers may store just the model's name
        model = {"name": str(model)}
    meta = [f"{len(report.get('per_group') or {})} groups", f"n = {report.get('n')}",
            f"{report.get('n_contents')} contents"]
    if model:
        arch = f" ({model['architecture']})" if model.get("architecture") else ""
        meta.insert(0, f"model {model.get('name')}{arch}")
    parts.append(f"<p class='meta'>{esc(' · '.join(str(x) for x in meta))}</p>")
    warning = (report.get("training_overlap") or {}).get("warning")
    if warning:
        parts.append(f"<p class='warn'><strong>Warning:</strong> {esc(warning)}</p>")

    parts += _overall_section(report)

    sp = report.get("splits")
    if sp:
        med = sp.get("median") or {}
        parts.append(f"<h2>Median over {sp.get('count')} content-disjoint splits "
                     f"({int(100 * sp.get('fraction', 0))}% of contents each)</h2>")
        keys = ["srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted"]
        parts.append(_table(["", "n", *keys], [["median", "", *(med.get(k) for k in keys)]]
                            + [[f"split {i + 1}", v.get("n"), *(v.get(k) for k in keys)]
                               for i, v in enumerate(sp.get("values") or [])]))

    if png:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append("<h2>Prediction vs MOS</h2>")
        parts.append(f"<img alt='scatter plot of prediction against MOS' src='data:image/png;base64,{b64}'>")

    pg = report.get("per_group") or {}
    if pg:
        parts.append("<h2>Per distortion</h2>")
        keys = ["n", "srocc", "krcc", "plcc", "plcc_fitted", "rmse_fitted", "mos_mean", "pred_mean"]
        parts.append(_table(["group", *keys], [[g, *(row.get(k) for k in keys)] for g, row in pg.items()]))

    lg = (report.get("logistic") or {}).get("params")
    st = report.get("settings") or {}
    parts.append("<h2>Settings</h2>")
    srows = [[k, v] for k, v in st.items()]
    if lg:
        srows.append(["logistic b1..b4", ", ".join(f"{v:.4g}" for v in lg)])
    for k, v in model.items():
        srows.append([f"model.{k}", v if isinstance(v, str | int | float) or v is None else str(v)])
    parts.append(_table(["setting", "value"], srows))
    parts.append("</body></html>\n")
    return "\n".join(parts)

"""HTML reports with matplotlib plots embedded as PNG (ROC, PR, calibration, scores, size, latency)."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["bar_figure", "calibration_figure", "histogram_figure", "interval_figure", "pr_figure", "render",
           "roc_figure", "table_html"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def roc_figure(curves: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for name, c in curves.items():
        ax.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(fontsize=7)
    return _png(fig)


def pr_figure(curves: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for name, c in curves.items():
        ax.plot(c["pr"]["recall"], c["pr"]["precision"], label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    ax.legend(fontsize=7)
    return _png(fig)


def calibration_figure(curves: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4))
    for name, c in curves.items():
        ax.plot(c["calibration"]["predicted"], c["calibration"]["observed"], "o-", ms=3, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted", ylabel="observed rate", title="Calibration")
    ax.legend(fontsize=7)
    return _png(fig)


def histogram_figure(c: dict, name: str) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 4))
    edges = c["histogram"]["edges"]
    width = edges[1] - edges[0]
    ax.bar(edges[:-1], c["histogram"]["negative"], width, alpha=0.6, label="no click", align="edge")
    ax.bar(edges[:-1], c["histogram"]["positive"], width, alpha=0.6, label="click", align="edge")
    ax.set(xlabel="score", ylabel="rows", title=f"Score histogram ({name})")
    ax.legend(fontsize=7)
    return _png(fig)


def bar_figure(values: dict[str, dict[str, float]], title: str, ylabel: str, log: bool = False,
               ylim: tuple[float, float] | None = None) -> str:
    """Grouped bars: values[group][series] (`ylim`: a zoomed value axis, for values close to each other)."""
    groups = list(values)
    series = sorted({s for v in values.values() for s in v})
    fig, ax = plt.subplots(figsize=(5.2, 4))
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, [values[g].get(s, 0) for g in groups], width, label=s)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    return _png(fig)


def interval_figure(intervals: dict[str, tuple[float, float, float]], title: str, xlabel: str) -> str:
    """Point estimates with their intervals, one row each: intervals[label] = (estimate, low, high); a line
    at zero (an interval wholly left of it: significantly worse)."""
    labels = list(intervals)
    fig, ax = plt.subplots(figsize=(5.6, 0.6 + 0.55 * max(len(labels), 1)))
    for i, label in enumerate(labels):
        est, low, high = intervals[label]
        color = "tab:red" if high < 0 else ("tab:green" if low > 0 else "tab:gray")
        ax.errorbar([est], [i], xerr=[[est - low], [high - est]], fmt="o", color=color, capsize=4)
    ax.axvline(0.0, color="k", lw=0.8, ls=":")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set(title=title, xlabel=xlabel)
    return _png(fig)


def table_html(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(title: str, sections: Sequence[tuple[str, str]], figures: Sequence[str], data: dict | None = None) -> str:
    """A self-contained page: HTML sections, PNG figures, and the raw numbers at the bottom."""
    imgs = "".join(f'<img src="data:image/png;base64,{f}"/>' for f in figures)
    secs = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections)
    raw = (f"<h2>Raw numbers</h2><pre>{html.escape(json.dumps(data, indent=1, default=str))}</pre>"
           if data is not None else "")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}img{margin:4px;border:1px solid #ddd}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "pre{font-size:11px;background:#f6f6f6;padding:1em;overflow:auto;max-height:30em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{secs}<div>{imgs}</div>{raw}"
            "</body></html>")

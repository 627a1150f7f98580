"""Figures of the audit report, drawn from the report dict alone (so the JSON holds every plotted number).

Uses matplotlib's object API with the Agg canvas, not pyplot: no global figure state, safe in
the service's job threads.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

__all__ = ["det_png", "rates_png", "scores_png"]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def rates_png(report: Mapping[str, Any]) -> bytes:
    """FMR and FNMR per group at the global threshold, with their intervals."""
    names = list(report["groups"])
    fig = Figure(figsize=(10, max(2.5, 0.45 * len(names) + 1.5)))
    y = np.arange(len(names))
    for k, (metric, label) in enumerate((("fmr", "FMR (impostor pairs within group)"), ("fnmr", "FNMR (genuine pairs)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, name in enumerate(names):
            g = report["groups"][name]
            v, ci = g[metric], g[f"{metric}_ci"]
            if v is None:
                ax.text(0.5, i, "not measured", va="center", ha="center", transform=ax.get_yaxis_transform(), color="gray")
                continue
            lo, hi = ci if ci else (v, v)
            ax.errorbar([v], [i], xerr=[[v - lo], [hi - v]], fmt="o", color="C0" if metric == "fmr" else "C1", capsize=4)
        if metric == "fmr":
            ax.axvline(report["target_fmr"], color="gray", ls="--", lw=1, label=f"target FMR {report['target_fmr']:g}")
            ax.legend(loc="lower right", fontsize=8)
        vals = [report["groups"][n][metric] for n in names]
        pos = [v for v in vals if v]
        if pos:
            ax.set_xscale("log")
            lo_x = min(pos + [report["target_fmr"]] if metric == "fmr" else pos)
            hi_x = max(pos + [report["target_fmr"]] if metric == "fmr" else pos)
            ax.set_xlim(lo_x / 3, hi_x * 3)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks(y, names if k == 0 else [""] * len(names))
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3, which="both")
    fig.suptitle(f"Error rates per group at threshold {report['threshold']:.4f} ({report['confidence']:.0%} intervals)")
    return _png(fig)


def det_png(report: Mapping[str, Any]) -> bytes:
    """DET curves (FNMR against FMR, log FMR axis) per group, with each group's operating point."""
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    names = list(report["curves"])
    for color, name in zip(_colors(len(names)), names, strict=True):
        c = report["curves"][name]
        fmr, fnmr = np.asarray(c["fmr"]), np.asarray(c["fnmr"])
        ok = fmr > 0
        if not ok.any():
            continue
        g = report["groups"][name]
        measured = g["fmr"] is not None
        label = name if measured else f"{name} (too few impostor pairs)"
        ax.plot(fmr[ok], fnmr[ok], color=color, label=label, ls="-" if measured else ":")
        if g["fmr"] and g["fnmr"] is not None:
            ax.plot([g["fmr"]], [g["fnmr"]], "o", color=color)
    ax.axvline(report["target_fmr"], color="gray", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(0, 1)
    ax.set_xlabel("FMR (false match rate, impostor pairs within group)")
    ax.set_ylabel("FNMR (false non-match rate)")
    ax.set_title("DET per group (dots: the global threshold; dashed: target FMR)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _png(fig)


def scores_png(report: Mapping[str, Any]) -> bytes:
    """Genuine and impostor score distributions per group, with the global threshold."""
    h = report["score_histograms"]
    edges = np.asarray(h["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    names = list(h["groups"])
    fig = Figure(figsize=(10, 4.5))
    ax_i, ax_g = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for color, name in zip(_colors(len(names)), names, strict=True):
        for ax, kind in ((ax_i, "impostor"), (ax_g, "genuine")):
            counts = np.asarray(h["groups"][name][kind], dtype=float)
            if counts.sum() > 0:
                ax.step(centres, counts / counts.sum(), where="mid", color=color, label=name)
    for ax, kind in ((ax_i, "Impostor"), (ax_g, "Genuine")):
        ax.axvline(report["threshold"], color="black", ls="--", lw=1, label="threshold")
        ax.set_yscale("log")
        ax.set_xlabel("cosine score")
        ax.set_ylabel("share of pairs")
        ax.set_title(f"{kind} pairs")
        ax.grid(alpha=0.3)
    ax_g.legend(fontsize=8)
    return _png(fig)

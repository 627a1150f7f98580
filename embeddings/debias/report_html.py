"""The three-way debias report as one self-contained HTML page (plots inline as base64 PNG).

As in the audit's page, every number cell carries ``data-key`` (its dot-separated path in
report.json; interval bounds end in ``.0``/``.1``) and ``data-value`` (the exact JSON value).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from typing import Any

from embeddings.audit.plots import rates_png

__all__ = ["render_html"]

_TITLES = {"base": "base encoder", "uniform": "adapter, uniform sampling", "weighted": "adapter, latent-weight sampling"}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:14px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.name,th.name{text-align:left} .note{color:#555;font-size:13px} .better{background:#e3f4e3}
.figs{display:flex;flex-wrap:wrap;gap:8px} .figs figure{margin:0;flex:1 1 360px} img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}
"""


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "rate":
        return "0" if value == 0 else f"{value:.3g}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "pct":
        return f"{value:+.0%}"
    if kind == "threshold":
        return f"{value:.4f}"
    return f"{int(value):,}" if kind == "int" else escape(str(value))


def _cell(key: str, value: Any, kind: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-key="{escape(key)}" data-value="{escape(json.dumps(value))}">{_fmt(value, kind)}</td>'


def _ci(key: str, ci: list[float | None] | None, kind: str) -> str:
    if ci is None:
        return f'<td data-key="{escape(key)}" data-value="null">—</td>'
    return (
        f'<td><span data-key="{escape(key)}.0" data-value="{escape(json.dumps(ci[0]))}">{_fmt(ci[0], kind)}</span> – '
        f'<span data-key="{escape(key)}.1" data-value="{escape(json.dumps(ci[1]))}">{_fmt(ci[1], kind)}</span></td>'
    )


def _groups_table(report: Mapping[str, Any]) -> str:
    models = report["models"]
    names = list(models["base"]["groups"])
    head = '<tr><th class="name">group</th>' + "".join(
        f'<th colspan="4">{escape(_TITLES[m])}</th>' for m in models
    ) + "</tr>"
    head += '<tr><th></th>' + "<th>FNMR</th><th>FNMR CI</th><th>FMR</th><th>FMR CI</th>" * len(models) + "</tr>"
    rows = []
    for g in names:
        cells = []
        for m, rep in models.items():
            r = rep["groups"].get(g, {})
            k = f"models.{m}.groups.{g}"
            better = m == "weighted" and report["comparison"]["groups"].get(g, {}).get("weighted_outside_uniform_ci")
            better = better and (r.get("fnmr") or 0) < (models["uniform"]["groups"][g].get("fnmr") or 0)
            cells.append(
                _cell(f"{k}.fnmr", r.get("fnmr"), "rate", "better" if better else "")
                + _ci(f"{k}.fnmr_ci", r.get("fnmr_ci"), "rate")
                + _cell(f"{k}.fmr", r.get("fmr"), "rate")
                + _ci(f"{k}.fmr_ci", r.get("fmr_ci"), "rate")
            )
        rows.append(f'<tr><td class="name">{escape(g)}</td>{"".join(cells)}</tr>')
    overall = []
    for m, rep in models.items():
        o = rep["overall"]
        k = f"models.{m}.overall"
        overall.append(_cell(f"{k}.fnmr", o["fnmr"], "rate") + _ci(f"{k}.fnmr_ci", o["fnmr_ci"], "rate")
                       + _cell(f"{k}.fmr", o["fmr"], "rate") + _ci(f"{k}.fmr_ci", o["fmr_ci"], "rate"))
    rows.append(f'<tr><th class="name">all groups</th>{"".join(overall)}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _summary_table(report: Mapping[str, Any]) -> str:
    models = report["models"]
    rows = []
    for m, rep in models.items():
        d = rep["differentials"]["fnmr"]
        k = f"models.{m}"
        rows.append(
            f'<tr><td class="name">{escape(_TITLES[m])}</td>'
            + _cell(f"{k}.threshold", rep["threshold"], "threshold")
            + _cell(f"{k}.overall.fnmr", rep["overall"]["fnmr"], "rate")
            + _cell(f"{k}.differentials.fnmr.max_min_ratio", d["max_min_ratio"], "ratio")
            + _ci(f"{k}.differentials.fnmr.max_min_ratio_ci", d["max_min_ratio_ci"], "ratio")
            + f'<td class="name">{escape(str(d.get("worst_group") or "—"))}</td>'
            + _cell(f"{k}.differentials.fmr.max_min_ratio", rep["differentials"]["fmr"]["max_min_ratio"], "ratio")
            + "</tr>"
        )
    head = (
        '<tr><th class="name">model</th><th>threshold</th><th>overall FNMR</th><th>FNMR max / min</th><th>CI</th>'
        '<th class="name">worst FNMR group</th><th>FMR max / min</th></tr>'
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _change_table(report: Mapping[str, Any]) -> str:
    c = report["comparison"]
    rows = [
        f'<tr><td class="name">{escape(g)} FNMR</td>'
        + _cell(f"comparison.groups.{g}.fnmr_relative_change", v["fnmr_relative_change"], "pct")
        + _cell(f"comparison.groups.{g}.weighted_outside_uniform_ci", v["weighted_outside_uniform_ci"], "text")
        + "</tr>"
        for g, v in c["groups"].items()
    ]
    rows.append('<tr><td class="name">overall FNMR</td>'
                + _cell("comparison.overall_fnmr_relative_change", c["overall_fnmr_relative_change"], "pct") + "<td></td></tr>")
    rows.append('<tr><td class="name">FNMR max / min</td>'
                + _cell("comparison.fnmr_max_min_ratio.relative_change", c["fnmr_max_min_ratio"]["relative_change"], "pct")
                + "<td></td></tr>")
    head = '<tr><th class="name">weighted vs uniform</th><th>relative change</th><th>outside the uniform CI</th></tr>'
    return f"<table>{head}{''.join(rows)}</table>"


def _weights_table(report: Mapping[str, Any]) -> str:
    rows = [
        f'<tr><td class="name">{escape(g)}</td>'
        + _cell(f"weights.groups.{g}.data_share", v["data_share"], "rate")
        + _cell(f"weights.groups.{g}.weight_mass", v["weight_mass"], "rate")
        + "</tr>"
        for g, v in report["weights"]["groups"].items()
    ]
    return ('<table><tr><th class="name">group</th><th>share of training images</th><th>share of sampling weight</th></tr>'
            f"{''.join(rows)}</table>")


def render_html(report: Mapping[str, Any]) -> str:
    """The base / uniform / weighted comparison as one page."""
    s = report["split"]
    figs = "".join(
        f"<figure><figcaption>{escape(_TITLES[m])}</figcaption><img alt=\"rates per group, {escape(m)}\" "
        f'src="data:image/png;base64,{base64.b64encode(rates_png(rep)).decode("ascii")}"></figure>'
        for m, rep in report["models"].items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentface debias report</title><style>{CSS}</style></head><body>
<h1>Debiasing with latent-density weights</h1>
<p class="note">Model <code>{escape(str(report.get("model_id") or "unknown"))}</code> · groups by
<code>{escape(" × ".join(report["group_by"]))}</code> · generated {escape(str(report.get("generated_at", "")))} · schema
{escape(str(report["schema"]))}</p>
<p>A small adapter was trained on top of the frozen encoder twice, with the same seed and settings: once drawing the
training images uniformly, once drawing them with the latent-density weights of <code>latentface analyze</code>, which
favour the kinds of faces the training set has few of. All three models — the encoder alone and the two adapters — are
audited on the same held-out people ({s["eval_identities"]:,} identities, {s["eval_images"]:,} images; training used
{s["train_identities"]:,} other identities), each at the threshold that gives it a false-match rate of
{report["target_fmr"]:g} over all impostor pairs, so their false non-match rates compare at one operating point.
Intervals resample people (identity bootstrap). Green marks a group whose FNMR with the weighted adapter is lower
than with the uniform one, and outside the uniform one's interval.</p>
<h2>Summary</h2>{_summary_table(report)}
<h2>Weighted against uniform</h2>{_change_table(report)}
<h2>Error rates per group</h2>{_groups_table(report)}
<div class="figs">{figs}</div>
<h2>Sampling weights by group (training identities)</h2>{_weights_table(report)}
<p class="note">Each model's full audit (curves, cross-group FMR, flags) is in <code>report.json</code> under
<code>models.base</code>, <code>models.uniform</code> and <code>models.weighted</code>, in the audit report's own shape.
Every number on this page is there too, under the key in its cell's <code>data-key</code> attribute.</p>
</body></html>
"""

"""Self-contained HTML rendering of an audit report (plots inline as base64 PNG, no external resources).

Every number cell carries ``data-key`` (its path in report.json, dot-separated; interval bounds
end in ``.0``/``.1``) and ``data-value`` (the exact JSON value), so a machine can check that the
page and the JSON agree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from typing import Any

from embeddings.audit.plots import det_png, rates_png, scores_png

__all__ = ["render_html"]

FLAG_TEXT = {
    "too_few_impostor_pairs": "too few impostor pairs to measure the target FMR; FMR not reported",
    "too_few_genuine_pairs": "too few genuine pairs; FNMR not reported",
    "zero_false_matches": "no false match observed; interval is the 3/N upper bound",
    "zero_false_non_matches": "no false non-match observed; interval is the 3/N upper bound",
}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:14px} th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.name,th.name{text-align:left} td.flag{white-space:normal;min-width:14em} td.na{color:#999}
.lead{font-size:15px;color:#444} .note{color:#555;font-size:13px} .flag{color:#a40;font-size:12px;text-align:left}
.worst{background:#fde8e0} img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f5f5f5;padding:0 3px}
"""


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "rate":
        return "0" if value == 0 else f"{value:.3g}"
    if kind == "threshold":
        return f"{value:.4f}"
    if kind == "ratio":
        return f"{value:.2f}"
    if kind == "int":
        return f"{int(value):,}"
    return escape(str(value))


def _cell(key: str, value: Any, kind: str, extra: str = "") -> str:
    cls = ' class="na"' if value is None else ""
    title = ' title="not measured"' if value is None else ""
    return (
        f'<td{cls}{title}{extra} data-key="{escape(key)}" data-value="{escape(json.dumps(value))}">'
        f"{_fmt(value, kind)}</td>"
    )


def _ci_cell(key: str, ci: list[float | None] | None, kind: str) -> str:
    if ci is None:
        return f'<td class="na" data-key="{escape(key)}" data-value="null">—</td>'
    lo, hi = ci
    hi_text = "∞" if hi is None and lo is not None else _fmt(hi, kind)  # an upper bound of None is unbounded
    return (
        f'<td><span data-key="{escape(key)}.0" data-value="{escape(json.dumps(lo))}">{_fmt(lo, kind)}</span>'
        f' – <span data-key="{escape(key)}.1" data-value="{escape(json.dumps(hi))}">{hi_text}</span></td>'
    )


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _groups_table(report: Mapping[str, Any]) -> str:
    worst_fmr = report["differentials"]["fmr"].get("worst_group")
    worst_fnmr = report["differentials"]["fnmr"].get("worst_group")
    rows = []
    for name, g in report["groups"].items():
        k = f"groups.{name}"
        flags = "; ".join(FLAG_TEXT.get(f, f) for f in g["flags"])
        rows.append(
            "<tr>"
            f'<td class="name">{escape(name)}</td>'
            + _cell(f"{k}.n_identities", g["n_identities"], "int")
            + _cell(f"{k}.n_images", g["n_images"], "int")
            + _cell(f"{k}.n_genuine", g["n_genuine"], "int")
            + _cell(f"{k}.fnmr", g["fnmr"], "rate", ' class="worst"' if name == worst_fnmr and g["fnmr"] else "")
            + _ci_cell(f"{k}.fnmr_ci", g["fnmr_ci"], "rate")
            + _cell(f"{k}.n_impostor", g["n_impostor"], "int")
            + _cell(f"{k}.fmr", g["fmr"], "rate", ' class="worst"' if name == worst_fmr and g["fmr"] else "")
            + _ci_cell(f"{k}.fmr_ci", g["fmr_ci"], "rate")
            + _cell(f"{k}.threshold_for_target", g["threshold_for_target"], "threshold")
            + f'<td class="flag">{escape(flags)}</td>'
            "</tr>"
        )
    head = (
        '<tr><th class="name">group</th><th>identities</th><th>images</th><th>genuine pairs</th><th>FNMR</th>'
        f"<th>FNMR {report['confidence']:.0%} CI</th><th>impostor pairs (within group)</th><th>FMR</th>"
        f"<th>FMR {report['confidence']:.0%} CI</th><th>threshold for FMR {report['target_fmr']:g}</th><th>flags</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _diff_table(report: Mapping[str, Any]) -> str:
    rows = []
    for metric in ("fmr", "fnmr"):
        d = report["differentials"][metric]
        k = f"differentials.{metric}"
        rows.append(
            f'<tr><td class="name">{metric.upper()}</td>'
            + _cell(f"{k}.max_min_ratio", d["max_min_ratio"], "ratio")
            + _ci_cell(f"{k}.max_min_ratio_ci", d["max_min_ratio_ci"], "ratio")
            + _cell(f"{k}.max_geomean_ratio", d["max_geomean_ratio"], "ratio")
            + _ci_cell(f"{k}.max_geomean_ratio_ci", d["max_geomean_ratio_ci"], "ratio")
            + f'<td class="name">{escape(str(d["worst_group"] or "—"))}</td>'
            + f'<td class="name">{escape(str(d["best_group"] or "—"))}</td>'
            + _cell(f"{k}.n_groups", d["n_groups"], "int")
            + "</tr>"
        )
    head = (
        '<tr><th class="name">rate</th><th>max / min</th><th>CI</th><th>max / geometric mean</th><th>CI</th>'
        '<th class="name">worst group</th><th class="name">best group</th><th>groups compared</th></tr>'
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _cross_table(report: Mapping[str, Any]) -> str:
    cg = report["cross_group_fmr"]
    names = cg["groups"]
    head = '<tr><th class="name">group \\ group</th>' + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr>"
    rows = []
    for i, a in enumerate(names):
        cells = "".join(_cell(f"cross_group_fmr.fmr.{i}.{j}", cg["fmr"][i][j], "rate") for j in range(len(names)))
        rows.append(f'<tr><th class="name">{escape(a)}</th>{cells}</tr>')
    return f"<table>{head}{''.join(rows)}</table>"


def _latent(report: Mapping[str, Any]) -> str:
    lat = report.get("latent")
    if not lat:
        return (
            "<h2>Latent analysis of the training data</h2><p class='note'>Not included: run "
            "<code>latentface analyze</code> on the training set and pass its output folder to the audit "
            "(<code>--analysis-dir</code>) to show under-represented clusters beside the error rates.</p>"
        )
    rows = []
    for i, c in enumerate(lat["clusters"]):
        k = f"latent.clusters.{i}"
        comp = "; ".join(
            f"{col}: " + ", ".join(f"{escape(str(v))} {s:.0%}" for v, s in shares.items())
            for col, shares in c["group_composition"].items()
        )
        rows.append(
            "<tr>"
            + _cell(f"{k}.id", c["id"], "int")
            + _cell(f"{k}.size", c["size"], "int")
            + _cell(f"{k}.mass", c["mass"], "rate")
            + _cell(f"{k}.mean_density", c["mean_density"], "rate")
            + _cell(f"{k}.mean_weight", c["mean_weight"], "rate")
            + f'<td class="name">{comp}</td></tr>'
        )
    clusters = (
        "<table><tr><th>cluster</th><th>size</th><th>mass</th><th>mean density</th><th>mean weight</th>"
        f'<th class="name">group composition</th></tr>{"".join(rows)}</table>'
    )
    mass_rows = []
    for col, vals in lat["group_weight_mass"].items():
        for v, d in vals.items():
            k = f"latent.group_weight_mass.{col}.{v}"
            mass_rows.append(
                f'<tr><td class="name">{escape(col)}</td><td class="name">{escape(str(v))}</td>'
                + _cell(f"{k}.data_share", d.get("data_share"), "rate")
                + _cell(f"{k}.weight_mass", d.get("weight_mass"), "rate")
                + "</tr>"
            )
    mass = (
        '<table><tr><th class="name">attribute</th><th class="name">value</th><th>share of data</th>'
        f'<th>share of weight</th></tr>{"".join(mass_rows)}</table>'
    )
    return (
        "<h2>Latent analysis of the training data</h2>"
        f"<p class='lead'>From <code>{escape(str(lat['source']))}</code> (method {escape(str(lat['method']))}, "
        f"{lat['n']} samples). Clusters are regions of the embedding space where the training data is thin, "
        "most under-represented first. A group whose weight share is well above its data share is "
        "under-represented in training; compare with its error rates above.</p>"
        f"<h3>Under-represented clusters</h3>{clusters}<h3>Group weight mass</h3>{mass}"
    )


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page that a first-time reader can follow."""
    d = report["data"]
    o = report["overall"]
    src = (
        f"set so that the FMR over all impostor pairs is at most {report['target_fmr']:g}"
        if report["threshold_source"] == "target_fmr"
        else "given by the deployment (not derived from a target FMR)"
    )
    summary = (
        "<table>"
        + "".join(
            f'<tr><th class="name">{label}</th>'
            + (_ci_cell(key, val, kind.removeprefix("ci:")) if kind.startswith("ci:") else _cell(key, val, kind))
            + "</tr>"
            for label, key, val, kind in (
                ("global threshold (cosine; match when score ≥ threshold)", "threshold", report["threshold"], "threshold"),
                ("target FMR", "target_fmr", report["target_fmr"], "rate"),
                ("overall FMR (all impostor pairs)", "overall.fmr", o["fmr"], "rate"),
                (f"overall FMR, {report['confidence']:.0%} interval", "overall.fmr_ci", o["fmr_ci"], "ci:rate"),
                ("overall FNMR (all genuine pairs)", "overall.fnmr", o["fnmr"], "rate"),
                (f"overall FNMR, {report['confidence']:.0%} interval", "overall.fnmr_ci", o["fnmr_ci"], "ci:rate"),
                ("images", "data.n_images", d["n_images"], "int"),
                ("images audited (identity has a group label)", "data.n_images_audited", d["n_images_audited"], "int"),
                ("identities", "data.n_identities", d["n_identities"], "int"),
                ("identities audited", "data.n_identities_audited", d["n_identities_audited"], "int"),
                ("identities with a single image (no genuine pair)", "data.n_identities_single_image", d["n_identities_single_image"], "int"),
                ("genuine pairs scored", "overall.n_genuine", o["n_genuine"], "int"),
                ("impostor pairs scored", "overall.n_impostor", o["n_impostor"], "int"),
                ("minimum impostor pairs to report a group's FMR", "min_impostor_pairs", report["min_impostor_pairs"], "int"),
            )
        )
        + "</table>"
    )
    method = f"""
<h2>How to read this report</h2>
<p class="lead">A face-verification system compares two face images and says “same person” when their
similarity score is at least a <b>threshold</b>. It can fail in two ways:</p>
<ul>
<li><b>False match</b> — two <i>different</i> people are accepted as the same. The <b>FMR</b> (false match rate) is the
share of <i>impostor pairs</i> (images of two different people) that score at or above the threshold. A group's
FMR here uses pairs where <b>both</b> people belong to that group, as in NIST's FRVT demographic reports; pairs across
groups are in the cross-group table.</li>
<li><b>False non-match</b> — two images of the <i>same</i> person are rejected. The <b>FNMR</b> is the share of
<i>genuine pairs</i> scoring below the threshold.</li>
</ul>
<p>All groups are measured at <b>one global threshold</b> ({escape(src)}), because a deployed system uses one threshold
for everybody. The column “threshold for FMR {report['target_fmr']:g}” shows the threshold each group would need on
its own to reach the target: the further it is from the global one, the more that group's false matches differ.</p>
<p><b>Differentials</b> summarise how unequal the groups are: the ratio of the worst to the best group's rate
(max / min) and of the worst group to the geometric mean of all groups (max / geometric mean, the measure NIST proposed in
2022). A ratio of 1 means equal error rates; 10 means the worst group suffers ten times the errors.</p>
<p><b>Intervals</b> ({report['confidence']:.0%}) come from a bootstrap that resamples <i>people</i>, not pairs, because
pairs of the same person are not independent. Where a group has no errors at all, the interval is [0, 3/N] (the
“rule of three”). A group with fewer than {report['min_impostor_pairs']:,.0f} impostor pairs (10 / target FMR) cannot
measure an FMR of {report['target_fmr']:g}; it is flagged and left blank rather than given a misleading number.</p>
"""
    caveats = "".join(f"<li>{escape(c)}</li>" for c in report["caveats"])
    model = escape(str(report.get("model_id") or "unknown"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentface fairness audit</title>
<style>{CSS}</style></head><body>
<h1>Face-verification fairness audit</h1>
<p class="note">Model <code>{model}</code> · groups by <code>{escape(" × ".join(report["group_by"]))}</code> ·
generated {escape(str(report.get("generated_at", "")))} by latentface · report schema {escape(str(report.get("schema", "")))}</p>
{method}
<h2>Data and operating point</h2>{summary}
<h2>Error rates per group</h2>
<p class="note">Shaded cells mark the worst group for each rate. “—” means not measured (see flags).</p>
{_groups_table(report)}
{_img(rates_png(report), "FMR and FNMR per group with intervals")}
<h2>Differentials across groups</h2>{_diff_table(report)}
<h2>Cross-group false match rates</h2>
<p class="note">FMR of impostor pairs with one person from the row group and one from the column group, at the global
threshold. The diagonal equals each group's FMR above.</p>
{_cross_table(report)}
<h2>DET curves</h2>
<p class="note">Each curve shows the trade-off for one group as the threshold moves: lower and further left is better.
The dot is where the global threshold puts the group.</p>
{_img(det_png(report), "DET curves per group")}
<h2>Score distributions</h2>
<p class="note">How similarity scores of impostor pairs (left) and genuine pairs (right) are spread per group. Impostor
mass to the right of the dashed threshold is false matches; genuine mass to its left is false non-matches.</p>
{_img(scores_png(report), "score distributions per group")}
{_latent(report)}
<h2>Caveats</h2><ul>{caveats}</ul>
<p class="note">Every number on this page is also in <code>report.json</code>, under the key shown in each cell's
<code>data-key</code> attribute.</p>
</body></html>
"""

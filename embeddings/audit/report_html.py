"""Self-contained HTML rendering of an audit report (plots inline as base64 PNG, no external resources).

The page is a Jinja2 template rendered with autoescape on: every value from the report (group
names, attribute columns, caveats, the model id) is escaped, so a column named ``<script>`` is
shown as text, never run. Only the inline images are marked safe, and they are base64 built here.

Every number cell carries ``data-key`` (its path in report.json, dot-separated; interval bounds
end in ``.0``/``.1``) and ``data-value`` (the exact JSON value), so a machine can check that the
page and the JSON agree.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup

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
    if kind == "cosine":
        return f"{value:+.3f}"
    if kind == "num":
        return f"{value:.3g}"
    if kind == "int":
        return f"{int(value):,}"
    return str(value)


def _upper(lo: Any, hi: Any, kind: str) -> str:
    return "∞" if hi is None and lo is not None else _fmt(hi, kind)  # an upper bound of None is unbounded


def _png(png: bytes) -> Markup:
    # Safe by construction: base64 of bytes made here.
    return Markup("data:image/png;base64," + base64.b64encode(png).decode("ascii"))


TEMPLATE = r"""{%- macro cell(key, value, kind, worst=False) -%}
<td{% if value is none %} class="na" title="not measured"{% elif worst %} class="worst"{% endif %} data-key="{{ key }}" data-value="{{ value | tojson_value }}">{{ value | fmt(kind) }}</td>
{%- endmacro -%}
{%- macro ci_cell(key, ci, kind) -%}
{%- if ci is none -%}<td class="na" data-key="{{ key }}" data-value="null">—</td>
{%- else -%}<td><span data-key="{{ key }}.0" data-value="{{ ci[0] | tojson_value }}">{{ ci[0] | fmt(kind) }}</span> – <span data-key="{{ key }}.1" data-value="{{ ci[1] | tojson_value }}">{{ upper(ci[0], ci[1], kind) }}</span></td>
{%- endif -%}
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentface fairness audit</title>
<style>{{ css }}</style></head><body>
<h1>Face-verification fairness audit</h1>
<p class="note">Model <code>{{ r.model_id or "unknown" }}</code> · groups by <code>{{ r.group_by | join(" × ") }}</code> ·
generated {{ r.generated_at or "" }} by latentface · report schema {{ r.schema or "" }}</p>

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
<p>All groups are measured at <b>one global threshold</b> ({{ threshold_source }}), because a deployed system uses one threshold
for everybody. The column “threshold for FMR {{ target }}” shows the threshold each group would need on
its own to reach the target: the further it is from the global one, the more that group's false matches differ.</p>
<p><b>Differentials</b> summarise how unequal the groups are: the ratio of the worst to the best group's rate
(max / min) and of the worst group to the geometric mean of all groups (max / geometric mean, the measure NIST proposed in
2022). A ratio of 1 means equal error rates; 10 means the worst group suffers ten times the errors.</p>
<p><b>Intervals</b> ({{ confidence }}) come from a bootstrap that resamples <i>people</i>, not pairs, because
pairs of the same person are not independent. Where a group has no errors at all, the interval is [0, 3/N] (the
“rule of three”). A group with fewer than {{ "{:,.0f}".format(r.min_impostor_pairs) }} impostor pairs (10 / target FMR) cannot
measure an FMR of {{ target }}; it is flagged and left blank rather than given a misleading number.</p>

<h2>Data and operating point</h2>
<table>
{%- for label, key, value, kind in summary %}
<tr><th class="name">{{ label }}</th>{% if kind.startswith("ci:") %}{{ ci_cell(key, value, kind[3:]) }}{% else %}{{ cell(key, value, kind) }}{% endif %}</tr>
{%- endfor %}
</table>

<h2>Error rates per group</h2>
<p class="note">Shaded cells mark the worst group for each rate. “—” means not measured (see flags).</p>
<table><tr><th class="name">group</th><th>identities</th><th>images</th><th>genuine pairs</th><th>FNMR</th><th>FNMR {{ confidence }} CI</th><th>impostor pairs (within group)</th><th>FMR</th><th>FMR {{ confidence }} CI</th><th>threshold for FMR {{ target }}</th><th>flags</th></tr>
{%- for name, g in r.groups.items() %}{% set k = "groups." ~ name %}
<tr><td class="name">{{ name }}</td>{{ cell(k ~ ".n_identities", g.n_identities, "int") }}{{ cell(k ~ ".n_images", g.n_images, "int") }}{{ cell(k ~ ".n_genuine", g.n_genuine, "int") }}{{ cell(k ~ ".fnmr", g.fnmr, "rate", name == worst_fnmr and g.fnmr) }}{{ ci_cell(k ~ ".fnmr_ci", g.fnmr_ci, "rate") }}{{ cell(k ~ ".n_impostor", g.n_impostor, "int") }}{{ cell(k ~ ".fmr", g.fmr, "rate", name == worst_fmr and g.fmr) }}{{ ci_cell(k ~ ".fmr_ci", g.fmr_ci, "rate") }}{{ cell(k ~ ".threshold_for_target", g.threshold_for_target, "threshold") }}<td class="flag">{{ g.flags | map("flag_text") | join("; ") }}</td></tr>
{%- endfor %}
</table>
<img alt="FMR and FNMR per group with intervals" src="{{ rates_png }}">

<h2>Differentials across groups</h2>
<table><tr><th class="name">rate</th><th>max / min</th><th>CI</th><th>max / geometric mean</th><th>CI</th><th class="name">worst group</th><th class="name">best group</th><th>groups compared</th></tr>
{%- for metric in ("fmr", "fnmr") %}{% set d = r.differentials[metric] %}{% set k = "differentials." ~ metric %}
<tr><td class="name">{{ metric | upper }}</td>{{ cell(k ~ ".max_min_ratio", d.max_min_ratio, "ratio") }}{{ ci_cell(k ~ ".max_min_ratio_ci", d.max_min_ratio_ci, "ratio") }}{{ cell(k ~ ".max_geomean_ratio", d.max_geomean_ratio, "ratio") }}{{ ci_cell(k ~ ".max_geomean_ratio_ci", d.max_geomean_ratio_ci, "ratio") }}<td class="name">{{ d.worst_group or "—" }}</td><td class="name">{{ d.best_group or "—" }}</td>{{ cell(k ~ ".n_groups", d.n_groups, "int") }}</tr>
{%- endfor %}
</table>

<h2>Cross-group false match rates</h2>
<p class="note">FMR of impostor pairs with one person from the row group and one from the column group, at the global
threshold. The diagonal equals each group's FMR above.</p>
{%- set cg = r.cross_group_fmr %}
<table><tr><th class="name">group \ group</th>{% for n in cg.groups %}<th>{{ n }}</th>{% endfor %}</tr>
{%- for a in cg.groups %}{% set i = loop.index0 %}
<tr><th class="name">{{ a }}</th>{% for b in cg.groups %}{{ cell("cross_group_fmr.fmr." ~ i ~ "." ~ loop.index0, cg.fmr[i][loop.index0], "rate") }}{% endfor %}</tr>
{%- endfor %}
</table>

<h2>DET curves</h2>
<p class="note">Each curve shows the trade-off for one group as the threshold moves: lower and further left is better.
The dot is where the global threshold puts the group.</p>
<img alt="DET curves per group" src="{{ det_png }}">
<h2>Score distributions</h2>
<p class="note">How similarity scores of impostor pairs (left) and genuine pairs (right) are spread per group. Impostor
mass to the right of the dashed threshold is false matches; genuine mass to its left is false non-matches.</p>
<img alt="score distributions per group" src="{{ scores_png }}">

<h2>Latent analysis of the training data</h2>
{%- set lat = r.latent %}
{%- if not lat %}
<p class='note'>Not included: run <code>latentface analyze</code> on the training set and pass its output folder to the audit
(<code>--analysis-dir</code>) to show under-represented clusters beside the error rates.</p>
{%- else %}
<p class='lead'>From <code>{{ lat.source }}</code> (method {{ lat.method }}, {{ lat.n }} samples). Clusters are regions of the embedding space where the training data is thin,
most under-represented first. A group whose weight share is well above its data share is
under-represented in training; compare with its error rates above.</p>
<h3>Under-represented clusters</h3>
<p class="note">Mass is the cluster's share of the data; mean weight is relative to uniform sampling (1 = no
change). What sets a cluster apart: its <b>direction</b> runs from the centre of all the data to the centre of
the cluster in the analysis' latent space, and <b>direction norm</b> is that distance. <b>Best-aligned groups</b>
are the three values, among all the analysis' label columns, whose own centre lies in the most similar direction,
with the cosine between the two directions (+1 = the same direction, 0 = unrelated, −1 = opposite): a value
near +1 names the attribute the cluster is made of.</p>
<table><tr><th>cluster</th><th>size</th><th>mass</th><th>mean density</th><th>mean weight</th><th>direction norm</th><th class="name">best-aligned groups (cosine)</th><th class="name">group composition</th></tr>
{%- for c in lat.clusters %}{% set k = "latent.clusters." ~ loop.index0 %}
<tr>{{ cell(k ~ ".id", c.id, "int") }}{{ cell(k ~ ".size", c.size, "int") }}{{ cell(k ~ ".mass", c.mass, "rate") }}{{ cell(k ~ ".mean_density", c.mean_density, "rate") }}{{ cell(k ~ ".mean_weight", c.mean_weight, "rate") }}{{ cell(k ~ ".direction_norm", c.direction_norm, "num") }}<td class="name">
{%- for a in c.top_alignment %}{% if not loop.first %}; {% endif %}{{ a.column }} = {{ a.value }} <span data-key="{{ k }}.top_alignment.{{ loop.index0 }}.cosine" data-value="{{ a.cosine | tojson_value }}">{{ a.cosine | fmt("cosine") }}</span>{% else %}—{% endfor -%}
</td><td class="name">
{%- for col, shares in c.group_composition.items() %}{% if not loop.first %}; {% endif %}{{ col }}: {% for v, s in shares.items() %}{% if not loop.first %}, {% endif %}{{ v }} {{ "{:.0%}".format(s) }}{% endfor %}{% endfor -%}
</td></tr>
{%- endfor %}
</table>
<h3>Group weight mass</h3>
<table><tr><th class="name">attribute</th><th class="name">value</th><th>share of data</th><th>share of weight</th></tr>
{%- for col, vals in lat.group_weight_mass.items() %}{% for v, d in vals.items() %}{% set k = "latent.group_weight_mass." ~ col ~ "." ~ v %}
<tr><td class="name">{{ col }}</td><td class="name">{{ v }}</td>{{ cell(k ~ ".data_share", d.get("data_share"), "rate") }}{{ cell(k ~ ".weight_mass", d.get("weight_mass"), "rate") }}</tr>
{%- endfor %}{% endfor %}
</table>
{%- endif %}
<h2>Caveats</h2><ul>{% for c in r.caveats %}<li>{{ c }}</li>{% endfor %}</ul>
<p class="note">Every number on this page is also in <code>report.json</code>, under the key shown in each cell's
<code>data-key</code> attribute.</p>
</body></html>
"""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    # json.dumps, escaped by autoescape like any other text (Jinja's own tojson marks its output safe).
    env.filters["tojson_value"] = json.dumps
    env.filters["flag_text"] = lambda f: FLAG_TEXT.get(f, f)
    env.globals["upper"] = _upper
    return env


_TEMPLATE = _environment().from_string(TEMPLATE)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page that a first-time reader can follow."""
    d = report["data"]
    o = report["overall"]
    confidence = f"{report['confidence']:.0%}"
    threshold_source = (
        f"set so that the FMR over all impostor pairs is at most {report['target_fmr']:g}"
        if report["threshold_source"] == "target_fmr"
        else "given by the deployment (not derived from a target FMR)"
    )
    summary = [
        ("global threshold (cosine; match when score ≥ threshold)", "threshold", report["threshold"], "threshold"),
        ("target FMR", "target_fmr", report["target_fmr"], "rate"),
        ("overall FMR (all impostor pairs)", "overall.fmr", o["fmr"], "rate"),
        (f"overall FMR, {confidence} interval", "overall.fmr_ci", o["fmr_ci"], "ci:rate"),
        ("overall FNMR (all genuine pairs)", "overall.fnmr", o["fnmr"], "rate"),
        (f"overall FNMR, {confidence} interval", "overall.fnmr_ci", o["fnmr_ci"], "ci:rate"),
        ("images", "data.n_images", d["n_images"], "int"),
        ("images audited (identity has a group label)", "data.n_images_audited", d["n_images_audited"], "int"),
        ("identities", "data.n_identities", d["n_identities"], "int"),
        ("identities audited", "data.n_identities_audited", d["n_identities_audited"], "int"),
        ("identities with a single image (no genuine pair)", "data.n_identities_single_image", d["n_identities_single_image"], "int"),
        ("genuine pairs scored", "overall.n_genuine", o["n_genuine"], "int"),
        ("impostor pairs scored", "overall.n_impostor", o["n_impostor"], "int"),
        ("minimum impostor pairs to report a group's FMR", "min_impostor_pairs", report["min_impostor_pairs"], "int"),
    ]
    r = {"latent": None, "model_id": None, "generated_at": None, "schema": None, **report}
    return _TEMPLATE.render(
        r=r,
        css=Markup(CSS),  # our own constant
        summary=summary,
        confidence=confidence,
        target=f"{report['target_fmr']:g}",
        threshold_source=threshold_source,
        worst_fmr=report["differentials"]["fmr"].get("worst_group"),
        worst_fnmr=report["differentials"]["fnmr"].get("worst_group"),
        rates_png=_png(rates_png(report)),
        det_png=_png(det_png(report)),
        scores_png=_png(scores_png(report)),
    )

"""Acceptance tests of the fairness audit on synthetic data with planted group behaviour."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embeddings.audit import (
    AuditOptions,
    audit_arrays,
    audit_pairs,
    build_pairs,
    identity_bootstrap,
    percentile_interval,
)
from embeddings.errors import Cancelled, InvalidInput
from embeddings.synthetic.verification import make_verification_set, simulate_scores

FAST = AuditOptions(n_bootstrap=200, impostor_budget=4_000_000, cross_budget=1_000_000)


@pytest.fixture(scope="module")
def planted():
    """Group B's identities are packed closer together: about 10x group A's FMR."""
    return make_verification_set(
        identities_per_group={"A": 1000, "B": 1000}, images_per_identity=5, dim=32,
        center_bias={"A": 0.0, "B": 0.48}, image_noise=0.6, seed=1,
    )


@pytest.fixture(scope="module")
def planted_report(planted):
    return audit_arrays(planted.vectors, planted.identities, planted.groups, group_by=["group"], options=FAST, seed=0)


def _brute_fmr(vectors: np.ndarray, identities: np.ndarray, t: float) -> float:
    s = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    a, b = np.triu_indices(len(vectors), 1)
    keep = identities[a] != identities[b]
    return float(np.mean(s[a[keep], b[keep]] >= t))


def test_planted_fmr_gap_matches_brute_force(planted, planted_report) -> None:
    rep = planted_report.report
    t = rep["threshold"]
    assert rep["data"]["impostor_pairs_scored"] < rep["data"]["impostor_pairs_possible"]  # sampling was exercised
    assert rep["overall"]["fmr"] == pytest.approx(1e-3, rel=0.02)
    everyone = _brute_fmr(planted.vectors, planted.identities, t)  # all impostor pairs, across groups too
    assert rep["overall"]["fmr"] == pytest.approx(everyone, rel=0.1)
    assert rep["overall"]["fmr_ci"][0] <= everyone <= rep["overall"]["fmr_ci"][1]
    assert rep["overall"]["fnmr_ci"][0] <= rep["overall"]["fnmr"] <= rep["overall"]["fnmr_ci"][1]
    truth = {}
    for g in ("A", "B"):
        sel = planted.groups["group"] == g
        truth[g] = _brute_fmr(planted.vectors[sel], planted.identities[sel], t)
        assert rep["groups"][g]["fmr"] == pytest.approx(truth[g], rel=0.15)
        lo, hi = rep["groups"][g]["fmr_ci"]
        assert lo <= truth[g] <= hi
    true_ratio = truth["B"] / truth["A"]
    assert 7 < true_ratio < 14  # the planted gap is about 10x
    d = rep["differentials"]["fmr"]
    assert d["max_min_ratio"] == pytest.approx(true_ratio, rel=0.10)
    assert d["worst_group"] == "B" and d["best_group"] == "A"
    assert d["max_min_ratio_ci"][0] <= true_ratio <= d["max_min_ratio_ci"][1]
    # the per-group threshold for the target: B needs a higher one
    assert rep["groups"]["B"]["threshold_for_target"] > t > rep["groups"]["A"]["threshold_for_target"]
    # cross-group matrix is symmetric with the group FMRs on its diagonal
    m = rep["cross_group_fmr"]["fmr"]
    assert m[0][1] == m[1][0] and m[0][0] == rep["groups"]["A"]["fmr"] and m[1][1] == rep["groups"]["B"]["fmr"]


def test_shuffled_labels_remove_the_differential(planted) -> None:
    rng = np.random.default_rng(7)
    ids = np.unique(planted.identities)
    new = dict(zip(ids, rng.permutation(np.where(np.arange(len(ids)) % 2 == 0, "A", "B")), strict=True))
    shuffled = {"group": np.array([new[i] for i in planted.identities])}
    rep = audit_arrays(planted.vectors, planted.identities, shuffled, group_by=["group"], options=FAST).report
    d = rep["differentials"]["fmr"]
    assert d["max_min_ratio"] < 1.25
    assert d["max_min_ratio_ci"][0] <= 1.25


def test_monotone_rescaling_changes_nothing(planted) -> None:
    ident, group = np.unique(planted.identities, return_inverse=True)
    gi = np.unique(planted.groups["group"], return_inverse=True)[1]
    ident_group = np.zeros(len(ident), np.int64)
    ident_group[group] = gi
    pairs = build_pairs(planted.vectors, group, ident_group, n_groups=2, impostor_budget=300_000, cross_budget=50_000)
    f = lambda s: (2.0 * np.asarray(s, np.float64) ** 3 + 5.0)  # noqa: E731  strictly increasing
    from dataclasses import replace

    scaled = replace(pairs, genuine_scores=f(pairs.genuine_scores), impostor_scores=f(pairs.impostor_scores))
    opts = AuditOptions(n_bootstrap=50)
    keys = ("fnmr", "fnmr_ci", "fmr", "fmr_ci", "n_genuine", "n_impostor", "flags")
    for thr in (None, 0.55):  # threshold from the target FMR, and a given (deployed) threshold
        a = audit_pairs(pairs, ["A", "B"], threshold=thr, options=opts)
        b = audit_pairs(scaled, ["A", "B"], threshold=None if thr is None else float(f(thr)), options=opts)
        for g in ("A", "B"):
            assert {k: a["groups"][g][k] for k in keys} == {k: b["groups"][g][k] for k in keys}
        assert a["differentials"]["fmr"] == b["differentials"]["fmr"]


def test_small_group_is_flagged_not_scored() -> None:
    ds = make_verification_set(identities_per_group={"big": 400, "tiny": 15}, images_per_identity=4, dim=32, seed=3)
    rep = audit_arrays(ds.vectors, ds.identities, ds.groups, group_by=["group"], options=AuditOptions(n_bootstrap=50)).report
    tiny = rep["groups"]["tiny"]
    assert tiny["n_impostor"] < 10 / 1e-3
    assert "too_few_impostor_pairs" in tiny["flags"]
    assert tiny["fmr"] is None and tiny["fmr_ci"] is None and tiny["threshold_for_target"] is None
    assert rep["groups"]["big"]["fmr"] is not None and "too_few_impostor_pairs" not in rep["groups"]["big"]["flags"]
    assert rep["differentials"]["fmr"]["n_groups"] == 1  # the unscored group is not compared


def test_identity_bootstrap_interval_coverage() -> None:
    """Across 200 simulated evaluation sets, the 95% intervals contain the population rate >= 93% of the time."""
    t_fnmr, t_fmr = 0.45, 0.3
    hit_fnmr = hit_fmr = 0
    n_rep = 200
    for r in range(n_rep):
        sim = simulate_scores(n_identities=300, seed=1000 + r)
        p = sim.pairs
        gen, imp = p.genuine_scores.astype(np.float64), p.impostor_scores.astype(np.float64)
        fm = imp >= t_fmr
        reps = identity_bootstrap(
            identity_group=p.identity_group, n_groups=1,
            genuine_errors=np.bincount(p.genuine_identity, weights=gen < t_fnmr, minlength=300),
            genuine_counts=np.bincount(p.genuine_identity, minlength=300), image_counts=p.image_counts,
            error_a=p.impostor_a[fm], error_b=p.impostor_b[fm],
            cell_sampled=p.cell_sampled, cell_possible=p.cell_possible, n_boot=1000, seed=r,
        )
        lo, hi = percentile_interval(reps.fnmr[:, 0])
        hit_fnmr += lo <= sim.true_fnmr(t_fnmr) <= hi
        lo, hi = percentile_interval(reps.fmr[:, 0])
        hit_fmr += lo <= sim.true_fmr(t_fmr) <= hi
    assert hit_fnmr / n_rep >= 0.93
    assert hit_fmr / n_rep >= 0.93


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Any] = {}
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-key" in a:
            self.values[a["data-key"]] = json.loads(a["data-value"])
        for k in ("src", "href"):
            if a.get(k):
                self.links.append(a[k])


def _lookup(report: dict[str, Any], key: str) -> Any:
    node: Any = report
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_html_holds_the_json_numbers(planted_report, tmp_path: Path) -> None:
    paths = planted_report.write(tmp_path)
    report = json.loads(paths["report.json"].read_text())
    html = paths["report.html"].read_text()
    cells = _Cells()
    cells.feed(html)
    assert len(cells.values) > 40
    for key, value in cells.values.items():
        assert _lookup(report, key) == value, key
    for g in report["groups"]:  # every headline number is on the page
        for field in ("fnmr", "fmr", "threshold_for_target", "n_identities", "n_genuine", "n_impostor", "fmr_ci.0", "fnmr_ci.1"):
            assert f"groups.{g}.{field}" in cells.values
    for key in ("threshold", "target_fmr", "differentials.fmr.max_min_ratio", "differentials.fnmr.max_geomean_ratio"):
        assert key in cells.values
    # self-contained: every resource is inline, nothing points to the network
    assert all(link.startswith("data:image/png;base64,") for link in cells.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert html.count("data:image/png;base64,") == 3


def test_latent_findings_and_cancellation(planted, tmp_path: Path) -> None:
    summary = {
        "method": "histogram", "params": {}, "n": 10, "effective_sample_size": 7.5,
        "clusters": [{"id": 4, "size": 3, "mass": 0.02, "mean_density": 0.1, "mean_weight": 2.5,
                      "group_composition": {"group": {"B": 1.0}}}],
        "group_weight_mass": {"group": {"A": {"data_share": 0.5, "weight_mass": 0.4}, "B": {"data_share": 0.5, "weight_mass": 0.6}}},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    sel = np.isin(planted.identities, np.unique(planted.identities)[::20])
    res = audit_arrays(planted.vectors[sel], planted.identities[sel], {"group": planted.groups["group"][sel]},
                       group_by=["group"], analysis_dir=tmp_path, options=AuditOptions(n_bootstrap=20))
    lat = res.report["latent"]
    assert lat["clusters"][0]["id"] == 4 and lat["group_weight_mass"]["group"]["B"]["weight_mass"] == 0.6
    assert 'data-key="latent.group_weight_mass.group.B.weight_mass"' in res.to_html()
    with pytest.raises(Cancelled):
        audit_arrays(planted.vectors, planted.identities, planted.groups, group_by=["group"], should_stop=lambda: True)
    with pytest.raises(InvalidInput):
        audit_arrays(planted.vectors, planted.identities, planted.groups, group_by=["sex"])


def test_intersections_and_unlabelled_identities() -> None:
    ds = make_verification_set(identities_per_group={"x": 60, "y": 60}, images_per_identity=3, dim=16, seed=2)
    rng = np.random.default_rng(0)
    sex_by_id = {i: rng.choice(["f", "m", ""]) for i in np.unique(ds.identities)}
    sex = np.array([sex_by_id[i] for i in ds.identities])
    rep = audit_arrays(ds.vectors, ds.identities, {**ds.groups, "sex": sex}, group_by=["group", "sex"],
                       options=AuditOptions(n_bootstrap=20)).report
    assert set(rep["groups"]) == {"x & f", "x & m", "y & f", "y & m"}
    n_unlab = sum(1 for v in sex_by_id.values() if v == "")
    assert rep["data"]["n_identities_unlabelled"] == n_unlab
    assert sum(g["n_identities"] for g in rep["groups"].values()) == 120 - n_unlab


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(planted_report, tmp_path: Path) -> None:
    planted_report.write(tmp_path)
    script = Path(__file__).resolve().parents[1] / "scripts" / "render_report"
    out = subprocess.run([str(script), str(tmp_path / "report.html"), str(tmp_path / "report.png")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    from PIL import Image

    with Image.open(tmp_path / "report.png") as im:
        assert im.size[0] == 1280
        px = np.asarray(im.convert("L"))
    assert px.std() > 10  # not a blank page: text, tables and plots were drawn


# -- issue #10 item 11 and the browser check: escaping, and every number the browser shows -------------
EVIL_COLUMN = "<script>alert('pwned')</script>"
EVIL_VALUE = '<img src=x onerror="alert(1)">'  # no '.': data-key paths split on dots


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    """HTML in the group column's name and values, in the error tables and the latent section alike
    (the old renderer escaped the tables but wrote the latent section's column names raw)."""
    ds = make_verification_set(identities_per_group={"x": 40, "y": 40}, images_per_identity=3, dim=16, seed=3)
    values = np.where(ds.groups["group"] == "x", EVIL_VALUE, "plain")
    analysis = tmp_path_factory.mktemp("evil-analysis")
    summary = {
        "method": "histogram", "params": {}, "n": 10, "effective_sample_size": 7.5,
        "clusters": [{"id": 1, "size": 3, "mass": 0.02, "mean_density": 0.1, "mean_weight": 2.5,
                      "group_composition": {EVIL_COLUMN: {EVIL_VALUE: 1.0}}, "direction_norm": 1.5,
                      "group_alignment": {EVIL_COLUMN: {EVIL_VALUE: 0.9, "plain": -0.9}}}],
        "group_weight_mass": {EVIL_COLUMN: {EVIL_VALUE: {"data_share": 0.5, "weight_mass": 0.4}}},
    }
    (analysis / "summary.json").write_text(json.dumps(summary))
    return audit_arrays(ds.vectors, ds.identities, {EVIL_COLUMN: values}, group_by=[EVIL_COLUMN],
                        analysis_dir=analysis, options=AuditOptions(n_bootstrap=20), seed=0)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]


def test_group_column_and_values_named_like_html_are_shown_as_text(evil_report) -> None:
    html = evil_report.to_html()
    tags = _Tags()
    tags.feed(html)
    assert "script" not in tags.tags  # before the fix the column name became a live <script> element
    assert not [a for a in tags.attrs if a.startswith("on")]
    assert tags.tags.count("img") == 3  # the three plots, not the group value
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html
    assert evil_report.report["latent"]["clusters"][0]["top_alignment"][0]["value"] == EVIL_VALUE
    assert 'data-key="latent.clusters.0.top_alignment.0.cosine"' in html  # shown, as text (checked above)
    cells = _Cells()
    cells.feed(html)
    report = evil_report.report
    for key, value in cells.values.items():
        assert _lookup(report, key) == value, key


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(html_path: Path, tmp_path: Path) -> str:
    profile = tmp_path / "profile"
    out = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


class _Shown(HTMLParser):
    """The text the page shows inside every element that carries a data-key, and every number in a table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None, list[str]]] = []
        self.shown: list[tuple[str, str]] = []  # (data-key, text shown)
        self.cells: list[tuple[bool, str]] = []  # (cell has a data-key inside, text) for every td
        self.title: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        if tag in ("td", "span", "th"):
            self.stack.append((tag, a.get("data-key"), []))

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        if tag in ("td", "span", "th") and self.stack:
            t, key, parts = self.stack.pop()
            text = "".join(parts).strip()
            if key is not None:
                self.shown.append((key, text))
            if t == "td":
                self.cells.append((key is not None or 'data-key' in "".join(parts), text))
            if self.stack:
                self.stack[-1][2].append(text if key is None else f"{text}\x00data-key")

    def handle_data(self, data):
        if self._in_title:
            self.title.append(data)
        if self.stack:
            self.stack[-1][2].append(data)


def _number(text: str) -> float | None:
    text = text.replace(",", "").strip()
    if text in ("—", "∞"):
        return None
    return float(text)


NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?(e[-+]?\d+)?$")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (scripts/test installs it as root)")
@pytest.mark.parametrize("which", ["planted", "evil"])
def test_every_number_chromium_shows_matches_report_json(which, planted_report, evil_report, tmp_path: Path) -> None:
    result = planted_report if which == "planted" else evil_report
    paths = result.write(tmp_path)
    report = json.loads(paths["report.json"].read_text())
    shown = _Shown()
    shown.feed(_dump_dom(paths["report.html"], tmp_path))
    assert "".join(shown.title) == "latentface fairness audit"  # no injected script ran and retitled the page
    assert len(shown.shown) > 40
    for key, text in shown.shown:
        value = _lookup(report, key)
        number = _number(text)
        if value is None or number is None:
            # "—" is shown for a missing value; "∞" only for an unbounded upper interval end.
            assert value is None and (text == "—" or (text == "∞" and key.endswith(".1"))), (key, text, value)
            continue
        # Shown rounded: rates to 3 significant digits, thresholds to 4 decimals, ratios to 2.
        assert abs(number - value) <= 0.005 * abs(value) + 5e-5, (key, text, value)
    # No number in a table cell lacks its data-key (so none escapes the check above).
    bare = [text for has_key, text in shown.cells if not has_key and NUMBER.match(text.replace("–", "").strip() or "x")]
    assert bare == []
    if which == "evil":
        assert EVIL_COLUMN in "".join(t for _, t in shown.cells) or EVIL_VALUE in "".join(t for _, t in shown.cells)

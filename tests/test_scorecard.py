"""``geoft.scorecard``: RMSE skill against a reference with paired significance, and the
self-contained HTML report -- checked against numbers computed by hand here and, where
Chromium is installed, rendered in a real headless browser."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from geoft.errors import GeoftError
from geoft.scorecard import (OUTPUT_COLUMNS, SKILL_CAP, scorecard_table, skill_colour,
                             write_html)

INITS = pd.date_range("2021-01-01", periods=40, freq="2D")


def _rows(source, variable, level, lead, mse, inits=INITS):
    return [{"source": source, "variable": variable, "level": level, "lead": lead,
             "init_time": t, "mse": float(m)} for t, m in zip(inits, mse)]


def _cell(table, source, variable, level, lead):
    sel = (table["source"] == source) & (table["variable"] == variable) & (table["lead"] == lead)
    sel &= table["level"].isna() if level is None else (table["level"] == level)
    assert sel.sum() == 1, table[sel]
    return table[sel].iloc[0]


@pytest.fixture(scope="module")
def per_init():
    """Three sources; every expected number below is derived from these arrays in the test."""
    rng = np.random.default_rng(42)
    rows = []
    ones, fours = np.ones(len(INITS)), np.full(len(INITS), 4.0)
    # "better": mse 1 vs reference 4 on every init -> rmse 1 vs 2, skill exactly 0.5.
    for variable, level in [("t2m", np.nan), ("msl", np.nan), ("z", 500.0), ("z", 850.0)]:
        for lead in (6, 12):
            rows += _rows("ref", variable, level, lead, fours)
            rows += _rows("better", variable, level, lead, ones)
    # "same": equal in distribution with noise: the reference's per-init mse reversed, so
    # the two means are equal (skill exactly 0) and every resample has a mirror image with
    # the sources swapped (the bootstrap skills are symmetric about 0 -> p near 1).
    noisy = rng.gamma(shape=2.0, scale=1.5, size=len(INITS))
    rows = [r for r in rows if not (r["source"] == "ref" and r["variable"] == "z"
                                    and r["level"] == 500.0 and r["lead"] == 12)]
    rows += _rows("ref", "z", 500.0, 12, noisy)
    rows += _rows("same", "z", 500.0, 12, noisy[::-1])
    # "better" at z500 lead 12: 10 % lower mse than this noisy reference on every init but
    # with init-to-init noise far bigger than the difference -- only a *paired* test sees it.
    rows = [r for r in rows if not (r["source"] == "better" and r["variable"] == "z"
                                    and r["level"] == 500.0 and r["lead"] == 12)]
    rows += _rows("better", "z", 500.0, 12, 0.9 * noisy)
    # "same" at t2m (surface, level NaN) lead 6 with missing inits on both sides: the
    # reference lacks the first 5 inits, "same" lacks the last 5 -> 30 paired inits.
    wobbly = rng.gamma(shape=3.0, scale=1.0, size=len(INITS))
    rows += _rows("same", "t2m", np.nan, 6, wobbly[:-5], INITS[:-5])
    return pd.DataFrame(rows), noisy, wobbly


def test_scorecard_known_answers(per_init):
    df, noisy, wobbly = per_init
    df = df.copy()
    df.loc[(df["source"] == "ref") & (df["variable"] == "t2m") & (df["lead"] == 6)
           & df["init_time"].isin(INITS[:5]), "mse"] = np.nan  # reference missed 5 inits
    table = scorecard_table(df, "ref", n_boot=500, seed=1)
    assert list(table.columns) == OUTPUT_COLUMNS
    # better: 4 variable/levels x 2 leads; same: 2 cells. The two surface variables (level
    # NaN) stay apart and are not merged with each other or with a pressure level.
    assert len(table) == 8 + 2
    assert table["level"].isna().sum() == 2 * 2 + 1

    for variable, level in [("t2m", None), ("msl", None), ("z", 500.0), ("z", 850.0)]:
        for lead in (6, 12):
            if (variable, level, lead) == ("z", 500.0, 12):
                continue
            c = _cell(table, "better", variable, level, lead)
            # the reference's NaN inits at t2m lead 6 drop out of "better" too
            assert c["n_init"] == (35 if (variable, level, lead) == ("t2m", None, 6) else 40)
            assert c["rmse"] == pytest.approx(1.0) and c["rmse_ref"] == pytest.approx(2.0)
            assert c["skill"] == pytest.approx(0.5, abs=1e-12)
            # every resample has skill 0.5: no resampled skill <= 0 -> p = 0
            assert c["p_value"] == 0.0 and bool(c["significant"])
            assert np.isnan(c["p_ttest"])  # differences constant: t undefined

    # sqrt(mean mse) over inits, not mean of sqrt (WB2 order): 1 - sqrt(0.9).
    c = _cell(table, "better", "z", 500.0, 12)
    assert c["rmse"] == pytest.approx(np.sqrt(np.mean(0.9 * noisy)), rel=1e-12)
    assert c["rmse_ref"] == pytest.approx(np.sqrt(np.mean(noisy)), rel=1e-12)
    assert c["skill"] == pytest.approx(1 - np.sqrt(0.9), rel=1e-12)
    assert c["p_value"] < 0.05 and bool(c["significant"])
    assert c["p_ttest"] == pytest.approx(stats.ttest_rel(0.9 * noisy, noisy).pvalue, rel=1e-12)
    # an unpaired Welch test on the same numbers sees nothing: pairing is what matters here
    assert stats.ttest_ind(0.9 * noisy, noisy, equal_var=False).pvalue > 0.2

    c = _cell(table, "same", "z", 500.0, 12)
    assert c["skill"] == pytest.approx(0.0, abs=1e-12)
    assert c["p_value"] > 0.5 and not bool(c["significant"])
    assert c["p_ttest"] == pytest.approx(stats.ttest_rel(noisy[::-1], noisy).pvalue, rel=1e-9)

    # inner join on init_time: inits 5..34 only (reference NaN on 0..4, "same" lacks 35..39)
    c = _cell(table, "same", "t2m", None, 6)
    m, r = wobbly[5:35], np.full(30, 4.0)
    assert c["n_init"] == 30
    assert c["rmse"] == pytest.approx(np.sqrt(m.mean()), rel=1e-12)
    assert c["rmse_ref"] == pytest.approx(2.0)
    assert c["skill"] == pytest.approx(1 - np.sqrt(m.mean()) / 2.0, rel=1e-12)
    assert c["p_ttest"] == pytest.approx(stats.ttest_rel(m, r).pvalue, rel=1e-9)

    assert table["p_value"].between(0, 1).all()
    assert (table["significant"] == (table["p_value"] < 0.05)).all()
    assert table.attrs["reference"] == "ref" and table.attrs["alpha"] == 0.05


def test_scorecard_deterministic_and_alpha(per_init):
    df = per_init[0]
    a = scorecard_table(df, "ref", n_boot=300, seed=7)
    b = scorecard_table(df, "ref", n_boot=300, seed=7)
    pd.testing.assert_frame_equal(a, b)
    # alpha only moves the threshold, never the p-values
    strict = scorecard_table(df, "ref", n_boot=300, seed=7, alpha=1e-9)
    np.testing.assert_array_equal(strict["p_value"], a["p_value"])
    assert (strict["significant"] == (strict["p_value"] < 1e-9)).all()


def test_scorecard_one_init_and_unknown_reference():
    df = pd.DataFrame(_rows("ref", "t2m", np.nan, 6, [4.0], INITS[:1])
                      + _rows("m", "t2m", np.nan, 6, [1.0], INITS[:1]))
    c = scorecard_table(df, "ref").iloc[0]
    assert c["n_init"] == 1 and c["skill"] == pytest.approx(0.5)
    assert np.isnan(c["p_value"]) and np.isnan(c["p_ttest"]) and not bool(c["significant"])

    with pytest.raises(GeoftError) as info:
        scorecard_table(df, "persistence")
    assert "persistence" in str(info.value)
    assert "m, ref" in str(info.value)  # names the sources there are


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

def _figures(folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for i in range(2):
        fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
        ax.plot([0, 1, 2], [i, 1 - i, i])
        path = folder / f"fig{i}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


@pytest.fixture
def report(tmp_path, per_init):
    figures = _figures(tmp_path)
    card = scorecard_table(per_init[0], "ref", n_boot=200, seed=0)
    models = pd.DataFrame({"model": ["c", "a", "b"], "rmse": [3.25, 1.5, 2.75],
                           "bias": [0.123456, -2.0, np.pi]})
    # a pivot table: its columns carry a name ("source") and there is a real index
    wide = card.pivot_table(index=["variable", "lead"], columns="source", values="rmse")
    out = tmp_path / "out" / "report.html"
    write_html(out, title="Scorecard <test> & co", summary=["40 inits", "lead 6 & 12 h"],
               tables=[("models", models), ("skill", card), ("wide", wide)], scorecard=card,
               reference="ref", figures=figures)
    return out, figures, card


def test_write_html_self_contained(report):
    out, figures, card = report
    text = out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no partial left
    # self-contained: no URL anywhere, let alone in src/href/url()
    assert not re.search(r"https?://", text), re.search(r".{60}https?://.{60}", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]""", text, re.I)
    # the figures, byte for byte, as base64 PNGs
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [f.read_bytes() for f in figures]
    # text escaped; tables with 4 significant digits
    assert "Scorecard &lt;test&gt; &amp; co" in text and "<test>" not in text
    assert "<li>lead 6 &amp; 12 h</li>" in text
    assert ">3.142</td>" in text and "3.14159" not in text and ">0.1235</td>" in text
    # the legend: colours, reference, significance test
    legend = re.search(r'<div class="legend" id="scorecard-legend">(.*?)</div>', text, re.S)
    assert legend and "<b>ref</b>" in legend.group(1)
    assert "green" in legend.group(1) and "red" in legend.group(1)
    assert "paired bootstrap" in legend.group(1) and "p &lt; 0.05" in legend.group(1)
    # scorecard cells: "better" is +50 % everywhere but z500 lead 12, full green, marked
    assert skill_colour(0.5) == "#1a9850" and skill_colour(-0.7) == "#d73027"
    # a fifth of the cap: each channel 255 - 0.2 * (255 - green), rounded
    assert skill_colour(0.0) == "#ffffff" and skill_colour(0.2 * SKILL_CAP) == "#d1eadc"
    full = int((card["skill"] >= SKILL_CAP).sum())
    assert full >= 7  # "better" at skill 0.5
    assert text.count(f"background:{skill_colour(0.5)};") == full + 1  # + the legend swatch
    assert re.search(r'<td class="cell sig" style="background:#1a9850;[^"]*"[^>]*>\+50\.0%\*</td>',
                     text)
    same = _cell(card, "same", "z", 500.0, 12)
    assert not same["significant"]
    assert re.search(r'<td class="cell" style="background:#ffffff;[^"]*"[^>]*>[+-]0\.0%</td>',
                     text)
    assert "<h3>better vs ref</h3>" in text and "<h3>same vs ref</h3>" in text
    assert "<h3>ref vs ref</h3>" not in text
    # every table has as many header cells as cells in each row (one header row; what the
    # sorting script needs), the pivot table included
    for table in re.findall(r"<table.*?</table>", text, re.S):
        heads = re.findall(r"<thead>(.*?)</thead>", table, re.S)
        assert len(heads) == 1 and heads[0].count("<tr") == 1, table[:300]
        n = heads[0].count("<th")
        rows = re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], re.S)
        assert rows and all(r.count("<td") == n and "<th" not in r for r in rows), table[:300]
    assert "<th>variable</th>\n      <th>lead</th>\n      <th>better</th>" in text
    # a sorting script is there
    assert re.search(r"<script>.*addEventListener\(\"click\"", text, re.S)


def test_write_html_missing_figure(tmp_path):
    figures = _figures(tmp_path)
    out = tmp_path / "out" / "report.html"
    with pytest.raises(GeoftError) as info:
        write_html(out, title="t", summary=[], tables=[], scorecard=None, reference=None,
                   figures=[figures[0], tmp_path / "nope.png"])
    assert "nope.png" in str(info.value)
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------------------------
# a real browser
# --------------------------------------------------------------------------------------------

_HEAD_CHECK = """<script>
window.__geoftErrors = []; window.__geoftResourceErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) {  // a resource (img, script, link) failed to load
    var where = String(t.src || t.href || "").slice(0, 40);
    window.__geoftResourceErrors.push(t.tagName + " " + where);
  } else {
    window.__geoftErrors.push(String(e.message) + " line " + e.lineno);
  }
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__geoftErrors.push("unhandled rejection: " + String(e.reason));
});
document.addEventListener("securitypolicyviolation", function (e) {
  window.__geoftErrors.push("CSP " + e.violatedDirective + " " + e.blockedURI);
});
</script>"""

_BODY_CHECK = """<script>
window.addEventListener("load", function () {
  var result = {errors: window.__geoftErrors, resource_errors: window.__geoftResourceErrors};
  var imgs = Array.prototype.slice.call(document.images);
  result.images = imgs.length;
  result.broken_images = imgs.filter(function (i) {
    return !(i.complete && i.naturalWidth > 0); }).length;
  try {
    var ths = Array.prototype.slice.call(document.querySelectorAll("table.sortable th"));
    var th = ths.filter(function (h) {
      return h.textContent.trim() === "rmse" &&
        Array.prototype.some.call(h.closest("tr").cells, function (c) {
          return c.textContent.trim() === "model"; });
    })[0];
    var table = th.closest("table");
    var column = function () {
      return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
        return r.cells[th.cellIndex].textContent.trim(); });
    };
    result.before = column();
    th.click(); result.ascending = column();
    th.click(); result.descending = column();
    result.sorted = JSON.stringify(result.ascending) === JSON.stringify(["1.5", "2.75", "3.25"])
      && JSON.stringify(result.descending) === JSON.stringify(["3.25", "2.75", "1.5"]);
  } catch (err) {
    result.sorted = false; result.sort_error = String(err);
  }
  var pre = document.createElement("pre");
  pre.id = "geoft-check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _render(browser, page, profile):
    """Load ``page`` headless and return the checker's JSON from the dumped DOM."""
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
           "--dump-dom", page.as_uri()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser we started, with its children
        proc.communicate()
        pytest.fail(f"{browser} did not finish within 60 s on {page}")
    found = re.search(r'<pre id="geoft-check">(.*?)</pre>', dom, re.S)
    assert found, f"no checker output (rc {proc.returncode}); stderr tail: {err[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _instrument(text, extra_body=""):
    head = text.index("<head>") + len("<head>")
    text = text[:head] + _HEAD_CHECK + text[head:]
    body = text.rindex("</body>")
    return text[:body] + extra_body + _BODY_CHECK + text[body:]


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (apt-get install -y chromium): the HTML scorecard "
                    "is not rendered in a browser here")
    out, figures, _ = report
    text = out.read_text()

    good = tmp_path / "check.html"
    good.write_text(_instrument(text))
    result = _render(browser, good, tmp_path / "profile-good")
    assert result["errors"] == [] and result["resource_errors"] == [], result
    assert result["images"] == len(figures) and result["broken_images"] == 0, result
    assert result["before"] == ["3.25", "1.5", "2.75"], result
    assert result["sorted"] is True, result

    # negative control: the same checker must see a corrupt image and a script error
    bad_text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,AAAA",
                      text, count=1)
    assert bad_text != text
    bad = tmp_path / "check-bad.html"
    bad.write_text(_instrument(bad_text, "<script>undefinedFunction()</script>"))
    result = _render(browser, bad, tmp_path / "profile-bad")
    assert result["images"] == len(figures) and result["broken_images"] == 1, result
    assert len(result["errors"]) == 1 and "undefinedFunction" in result["errors"][0], result
    assert len(result["resource_errors"]) == 1 and result["resource_errors"][0].startswith("IMG")

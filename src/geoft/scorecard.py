"""WeatherBench-style scorecards: RMSE skill against a reference forecast, with significance,
and one self-contained HTML report.

:func:`scorecard_table` takes a long per-initial-time table (``source, variable, level, lead,
init_time, mse``; ``mse`` is one init's area-weighted spatial mean squared error, ``level`` is
NaN for surface variables) and, for every source other than the reference and every
``(variable, level, lead)``, pairs the inits both sources scored and reports

* ``rmse = sqrt(mean over inits of mse)`` -- WeatherBench 2's order: space, then time, then
  the square root -- and the same for the reference, ``rmse_ref``;
* ``skill = 1 - rmse / rmse_ref``: positive when the source beats the reference, 0.1 = 10 %
  lower RMSE;
* ``p_value``: a paired bootstrap over initial times (resample the paired inits with
  replacement, recompute the skill; two-sided p-value of skill == 0), which keeps the
  correlation between the two sources' errors on the same init -- the reason a paired test is
  far more powerful than comparing two RMSEs;
* ``p_ttest``: the paired t-test on the per-init mse differences (``scipy.stats.ttest_rel``),
  for comparison; it assumes the differences are roughly normal and independent across inits;
* ``significant = p_value < alpha``.

Consecutive initial times are autocorrelated (a bad weather regime lasts days), so both
p-values are optimistic when inits are close in time; space inits a few days apart for a
strict test.

:func:`write_html` writes one HTML file with no external reference of any kind (inline CSS
and script, figures embedded as base64 ``data:`` URIs, a Content-Security-Policy that forbids
loading anything else): the summary, tables, figures and the scorecard grids (one per source:
variables/levels down, leads across, each cell coloured by skill and marked when
significant). Clicking a table header sorts by that column.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from geoft.errors import GeoftError
from geoft.io import atomic_write

KEYS = ["variable", "level", "lead"]
INPUT_COLUMNS = ["source", "variable", "level", "lead", "init_time", "mse"]
OUTPUT_COLUMNS = ["source", "variable", "level", "lead", "n_init", "rmse", "rmse_ref", "skill",
                  "p_value", "p_ttest", "significant"]
SKILL_CAP = 0.2  # |skill| at which a scorecard cell reaches full colour (GraphCast-style)
_LEVEL_KEY = "_level_key"


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

def _level_sentinel(levels: pd.Series) -> float:
    """A float that is not a level, standing in for NaN (surface) while grouping and joining."""
    finite = levels[np.isfinite(levels)]
    return float(finite.min() - 1.0e6) if len(finite) else -1.0e6


def _bootstrap_p(m: np.ndarray, r: np.ndarray, n_boot: int,
                 rng: np.random.Generator) -> float:
    """Two-sided paired-bootstrap p-value of skill == 0: resample the paired inits with
    replacement ``n_boot`` times; 2 * min(P(skill* <= 0), P(skill* >= 0)), at most 1."""
    n = m.size
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        skills = 1.0 - np.sqrt(m[idx].mean(axis=1)) / np.sqrt(r[idx].mean(axis=1))
    finite = np.isfinite(skills)
    if not finite.any():
        return float("nan")
    skills = skills[finite]
    return float(min(1.0, 2.0 * min(np.mean(skills <= 0.0), np.mean(skills >= 0.0))))


def _ttest_p(m: np.ndarray, r: np.ndarray) -> float:
    """Paired t-test p-value on the per-init mse differences; NaN with < 2 inits or when the
    differences do not vary (the t statistic is undefined)."""
    from scipy import stats

    diff = m - r
    if diff.size < 2 or not np.all(np.isfinite(diff)) or np.ptp(diff) == 0.0:
        return float("nan")
    if np.abs(diff).max() <= 1e-12 * max(np.abs(m).max(), np.abs(r).max()):
        return float("nan")  # the same forecast up to round-off: nothing to test
    return float(stats.ttest_rel(m, r).pvalue)


def scorecard_table(per_init: pd.DataFrame, reference: str, *, n_boot: int = 1000,
                    seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """RMSE, skill against ``reference`` and its significance per source, variable, level and
    lead, from per-init mean squared errors (see the module docstring).

    Only initial times present for both the source and the reference count (inner join on
    ``init_time``); a cell with no common init is left out. Rows whose ``mse`` is NaN are
    dropped first (that init was not scored). With one common init there is nothing to
    resample: ``p_value`` and ``p_ttest`` are NaN and the cell is not significant. One
    ``numpy.random.default_rng(seed)`` draws every resample, cells in the order of the output
    table, so the same table and seed give the same p-values.

    Returns columns ``source, variable, level, lead, n_init, rmse, rmse_ref, skill, p_value,
    p_ttest, significant`` (``level`` NaN for surface variables), sorted by source, variable,
    level, lead; ``.attrs`` holds ``reference``, ``alpha`` and ``n_boot``.
    """
    missing = [c for c in INPUT_COLUMNS if c not in per_init.columns]
    if missing:
        raise GeoftError(f"per-init table lacks column(s) {', '.join(missing)}",
                         where="scorecard_table",
                         fix=f"give one row per {', '.join(INPUT_COLUMNS[:-1])} with its mse")
    if n_boot < 1:
        raise GeoftError(f"n_boot must be at least 1, got {n_boot}", where="scorecard_table")
    sources = sorted(per_init["source"].astype(str).unique().tolist())
    if reference not in sources:
        raise GeoftError(f"reference {reference!r} is not a source in the table",
                         where="scorecard_table",
                         fix=f"choose one of: {', '.join(sources) or '(the table is empty)'}")

    df = per_init[INPUT_COLUMNS].copy()
    df["source"] = df["source"].astype(str)
    df["level"] = df["level"].astype(float)
    df["mse"] = df["mse"].astype(float)
    df = df[df["mse"].notna()]
    if (df["mse"] < 0).any():
        bad = df[df["mse"] < 0].iloc[0]
        raise GeoftError(f"negative mse {bad['mse']} for {bad['source']} {bad['variable']} "
                         f"lead {bad['lead']}", where="scorecard_table",
                         fix="pass mean squared errors, not biases or skill scores")
    sentinel = _level_sentinel(df["level"])
    df[_LEVEL_KEY] = df["level"].fillna(sentinel)
    group_keys = ["variable", _LEVEL_KEY, "lead"]
    dup = df.duplicated(["source", *group_keys, "init_time"])
    if dup.any():
        row = df[dup].iloc[0]
        raise GeoftError(f"{int(dup.sum())} duplicate row(s), e.g. {row['source']} "
                         f"{row['variable']} level {row['level']} lead {row['lead']} init "
                         f"{row['init_time']}", where="scorecard_table",
                         fix="keep one mse per source, variable, level, lead and init_time")

    ref = df[df["source"] == reference][[*group_keys, "init_time", "mse"]]
    rng = np.random.default_rng(seed)
    rows = []
    for source in sources:
        if source == reference:
            continue
        own = df[df["source"] == source][[*group_keys, "init_time", "mse"]]
        paired = own.merge(ref, on=[*group_keys, "init_time"], how="inner",
                           suffixes=("", "_ref"))
        for (variable, level_key, lead), cell in paired.groupby(group_keys, sort=True):
            m = cell["mse"].to_numpy(dtype=float)
            r = cell["mse_ref"].to_numpy(dtype=float)
            rmse, rmse_ref = float(np.sqrt(m.mean())), float(np.sqrt(r.mean()))
            skill = 1.0 - rmse / rmse_ref if rmse_ref > 0 else float("nan")
            if m.size >= 2 and np.isfinite(skill):
                p_value = _bootstrap_p(m, r, n_boot, rng)
            else:
                p_value = float("nan")
            p_ttest = _ttest_p(m, r)
            rows.append({
                "source": source, "variable": variable,
                "level": float("nan") if level_key == sentinel else float(level_key),
                "lead": lead, "n_init": int(m.size), "rmse": rmse, "rmse_ref": rmse_ref,
                "skill": skill, "p_value": p_value, "p_ttest": p_ttest,
                "significant": bool(p_value < alpha),
            })
    out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
    out["n_init"] = out["n_init"].astype(int)
    out["significant"] = out["significant"].astype(bool)
    out["level"] = out["level"].astype(float)
    out.attrs.update(reference=reference, alpha=alpha, n_boot=n_boot)
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# the HTML report
# --------------------------------------------------------------------------------------------

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}
_GREEN = (26, 152, 80)
_RED = (215, 48, 39)
_NA = "#e6e6e6"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table.geoft-table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
table.geoft-table th, table.geoft-table td { border: 1px solid #ccc; padding: 0.25em 0.6em;
       text-align: right; }
table.geoft-table th { background: #f3f3f3; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th.sorted-asc::after { content: " \\25B2"; font-size: 0.7em; }
table.sortable th.sorted-desc::after { content: " \\25BC"; font-size: 0.7em; }
table.scorecard td.cell { min-width: 4.2em; text-align: center; }
table.scorecard td.sig { font-weight: bold; }
table.scorecard td.label { text-align: left; }
.legend { font-size: 0.9em; margin: 0.6em 0 1em 0; }
.legend span.swatch { display: inline-block; min-width: 3.6em; text-align: center;
       padding: 0.15em 0.3em; border: 1px solid #ccc; margin-right: 0.15em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
"""

# Sort a table by the clicked header: numbers numerically (a cell's data-sort wins over its
# text; "%", "*" and spaces are ignored), text alphabetically, empty / text after numbers;
# a second click reverses the order.
_SCRIPT = """
(function () {
  function key(cell) {
    if (!cell) return [2, ""];
    var t = cell.getAttribute("data-sort");
    if (t === null) t = cell.textContent.trim();
    var n = Number(t.replace(/[%*\\s]/g, ""));
    if (t === "" || isNaN(n)) return [1, t.toLowerCase()];
    return [0, n];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) return a[0] - b[0];
    if (a[0] === 0) return a[1] - b[1];
    return a[1] < b[1] ? -1 : (a[1] > b[1] ? 1 : 0);
  }
  function sortBy(table, th) {
    var col = th.cellIndex;
    var body = table.tBodies[0];
    if (!body) return;
    var asc = !th.classList.contains("sorted-asc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var c = compare(key(r1.cells[col]), key(r2.cells[col]));
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.querySelectorAll("thead th"), function (h) {
      h.classList.remove("sorted-asc", "sorted-desc");
      h.removeAttribute("aria-sort");
    });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead) return;
    var head = table.tHead.rows[table.tHead.rows.length - 1];
    Array.prototype.forEach.call(head.cells, function (th) {
      th.title = "click to sort";
      th.addEventListener("click", function () { sortBy(table, th); });
    });
  });
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def skill_colour(skill: float) -> str:
    """The background of a scorecard cell: white at 0, green (better than the reference) or
    red (worse) at full strength from |skill| = ``SKILL_CAP``; grey when undefined."""
    if skill is None or not np.isfinite(skill):
        return _NA
    t = min(abs(float(skill)), SKILL_CAP) / SKILL_CAP
    base = _GREEN if skill > 0 else _RED
    r, g, b = (round(255 + (c - 255) * t) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_colour(skill: float) -> str:
    return "#fff" if np.isfinite(skill) and abs(skill) > 0.6 * SKILL_CAP else "#222"


def _level_label(level: float) -> str:
    return "surface" if pd.isna(level) else f"{level:g}"


def _table_html(df: pd.DataFrame) -> str:
    """One header row and plain cells (the sorting script relies on it): the index becomes
    columns unless it is the default one; a columns name (a pivot table's ``source``) would
    add a header cell without a column, and MultiIndex columns are flattened to one row."""
    frame = df if isinstance(df.index, pd.RangeIndex) else df.reset_index()
    frame = frame.copy(deep=False)
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" ".join(str(p) for p in col if str(p) != "").strip()
                         for col in frame.columns]
    frame.columns = pd.Index([str(c) for c in frame.columns], name=None)
    return frame.to_html(classes=["geoft-table", "sortable"], index=False, border=0,
                         float_format=_fmt, na_rep="", escape=True)


def _figure_html(path: Path) -> str:
    mime = _MIME[path.suffix.lower()]
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(path.name)}">'
            f"<figcaption>{_esc(path.name)}</figcaption></figure>")


def _scorecard_grid(card: pd.DataFrame) -> str:
    """One source's grid: a row per (variable, level), a column per lead."""
    leads = sorted(card["lead"].unique().tolist())
    keyed = card.assign(lvl_key=card["level"].fillna(-np.inf))
    rows = keyed[["variable", "lvl_key"]].drop_duplicates().sort_values(["variable", "lvl_key"])
    cells = {(r.variable, r.lvl_key, r.lead): r for r in keyed.itertuples(index=False)}
    head = "".join(f'<th data-lead="{_esc(lead)}">lead {_esc(lead)}</th>' for lead in leads)
    out = ['<table class="geoft-table scorecard sortable">',
           f"<thead><tr><th>variable</th><th>level</th>{head}</tr></thead><tbody>"]
    for variable, lvl in rows.itertuples(index=False):
        level = np.nan if lvl == -np.inf else lvl
        level_sort = "" if pd.isna(level) else _esc(level)
        tds = [f'<td class="label">{_esc(variable)}</td>',
               f'<td class="label" data-sort="{level_sort}">{_esc(_level_label(level))}</td>']
        for lead in leads:
            r = cells.get((variable, lvl, lead))
            if r is None:
                tds.append(f'<td class="cell" style="background:{_NA}" '
                           f'title="no common initial time">&ndash;</td>')
                continue
            skill = float(r.skill)
            sig = bool(r.significant)
            text = "n/a" if not np.isfinite(skill) else f"{100 * skill:+.1f}%"
            tip = (f"{variable} {_level_label(level)} lead {lead}: skill {text}, "
                   f"RMSE {_fmt(r.rmse)} vs {_fmt(r.rmse_ref)}, n_init {r.n_init}, "
                   f"bootstrap p {_fmt(r.p_value)}, t-test p {_fmt(r.p_ttest)}")
            cls = "cell sig" if sig else "cell"
            key = repr(skill) if np.isfinite(skill) else ""
            star = "*" if sig else ""
            tds.append(f'<td class="{cls}" '
                       f'style="background:{skill_colour(skill)};color:{_text_colour(skill)}" '
                       f'data-sort="{key}" title="{_esc(tip)}">{_esc(text)}{star}</td>')
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _legend_html(reference: str, alpha: float | None, n_boot: int | None) -> str:
    steps = [f * SKILL_CAP for f in (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)]
    swatches = "".join(
        f'<span class="swatch" style="background:{skill_colour(s)};color:{_text_colour(s)}">'
        f"{100 * s:+.0f}%</span>" for s in steps)
    level = f"p &lt; {alpha:g}" if alpha is not None else "p below the chosen level"
    boots = f"{n_boot} resamples" if n_boot else "resamples"
    return (
        '<div class="legend" id="scorecard-legend">'
        f"<p>Each cell is the RMSE skill against the reference <b>{_esc(reference)}</b>, "
        "1 &minus; RMSE / RMSE<sub>ref</sub>, in percent, over the initial times both "
        "forecasts have (RMSE = &radic;(mean over inits of the area-weighted MSE)).</p>"
        f"<p>{swatches}</p>"
        "<p><span style=\"color:#1a9850\"><b>green</b></span>: lower RMSE than the reference "
        "(better); <span style=\"color:#d73027\"><b>red</b></span>: higher (worse); colour "
        f"strength grows with |skill| and is full from {100 * SKILL_CAP:.0f}%; grey: no "
        "common initial time.</p>"
        f"<p><b>Bold with *</b>: significant, {level}, two-sided paired bootstrap over "
        f"initial times ({boots} of the paired inits, p = 2 min(P(skill* &le; 0), "
        "P(skill* &ge; 0))). Hover a cell for RMSEs, the number of inits and the paired "
        "t-test p-value.</p></div>")


def write_html(path, *, title: str, summary: list[str], tables: list[tuple[str, pd.DataFrame]],
               scorecard: pd.DataFrame | None, reference: str | None,
               figures: list[Path]) -> Path:
    """Write one self-contained HTML report to ``path`` (atomically) and return its path.

    ``summary``: lines shown as a list; ``tables``: (heading, DataFrame) pairs, floats to 4
    significant digits; ``scorecard``: the output of :func:`scorecard_table` (or ``None``),
    drawn as one grid per source other than ``reference``; ``figures``: image files embedded
    as base64 ``data:`` URIs (a missing one is a :class:`GeoftError` and nothing is written).
    """
    path = Path(path)
    figures = [Path(f) for f in figures]
    for fig in figures:
        if not fig.is_file():
            raise GeoftError(f"figure {fig} does not exist", where=str(path),
                             fix="make the figure first or leave it out of the report")
        if fig.suffix.lower() not in _MIME:
            raise GeoftError(f"figure {fig} is not an image geoft can embed",
                             where=str(path), fix=f"save it as one of {', '.join(_MIME)}")

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    if summary:
        parts.append('<ul class="summary">' + "".join(f"<li>{_esc(line)}</li>"
                                                      for line in summary) + "</ul>")

    if scorecard is not None:
        missing = [c for c in OUTPUT_COLUMNS if c not in scorecard.columns]
        if missing:
            raise GeoftError(f"scorecard lacks column(s) {', '.join(missing)}",
                             where=str(path), fix="pass the output of scorecard_table")
        ref = reference or scorecard.attrs.get("reference") or "the reference"
        parts.append(f"<h2>Scorecard against {_esc(ref)}</h2>")
        parts.append(_legend_html(ref, scorecard.attrs.get("alpha"),
                                  scorecard.attrs.get("n_boot")))
        card = scorecard[scorecard["source"].astype(str) != str(ref)]
        if card.empty:
            parts.append("<p>No source to compare with the reference.</p>")
        for source in sorted(card["source"].astype(str).unique()):
            parts.append(f"<h3>{_esc(source)} vs {_esc(ref)}</h3>")
            parts.append(_scorecard_grid(card[card["source"].astype(str) == source]))

    for heading, frame in tables:
        parts.append(f"<h2>{_esc(heading)}</h2>")
        parts.append(_table_html(frame))

    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure_html(fig) for fig in figures)

    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    document = "\n".join(parts) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(document, encoding="utf-8"))

"""report.html: one self-contained page that answers "what did each cut save on my hardware, at
what quality, against the published figure".

Every number comes from ledger records (via scoreboard.py) or, for run times, from the runner's
course_state.json; published figures come from costlab.anchors and are labelled as published.
Plots are embedded as base64 PNG and the page loads nothing from the network.

    python -m costlab report                  # results/ledger.jsonl -> results/report.html
    python -m costlab merge A.jsonl B.jsonl --out workshop/   # several machines, grouped by hardware
"""
from __future__ import annotations

import datetime as _dt
import json
from html import escape
from pathlib import Path

from .. import anchors, claims, course, ledger, metrics
from . import report_plots, scoreboard
from .scoreboard import CutResult, Group, QualityDelta

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f2f2f2} small{color:#555} .ratio{font-size:1.15em;font-weight:600}
tr.not-run td{color:#888} .costs-more{color:#b33} .saving{color:#173} .saving-with-loss{color:#a60} .failed{color:#b33;font-weight:600}
.published{color:#444;font-style:italic} .plots{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px} figure.not-run{color:#888;min-width:200px}
figcaption{font-size:12px;color:#555} section.hardware{border-top:3px solid #2a7;margin-top:2em}
code{background:#f4f4f4;padding:0 3px}
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def _value(name: str, value: float) -> str:
    return metrics.format_value(name, value)


def _quality_text(q: QualityDelta) -> str:
    word = "better" if q.change > 0 else "worse" if q.change < 0 else "unchanged"
    return (f"{_e(metrics.spec(q.metric).label)} {q.before:.4g} → {q.after:.4g} "
            f"<small>({q.after - q.before:+.3g}, {word})</small>")


def _published(cut: CutResult) -> tuple[str, str]:
    """(figure, source): the anchor about the headline metric if there is one, else one about a
    metric the headline pair also recorded (with our ratio on it), else the lesson's first."""
    found = anchors.for_lesson(cut.lesson.number)
    numeric = [a for a in found if a.ratio and a.metric]
    same = [a for a in numeric if a.metric == cut.metric]
    ours = [a for a in numeric if scoreboard.same_pair_on(cut, a.metric)]
    pick = (same or ours or numeric or found or [None])[0]
    if pick is None:
        return _e(cut.lesson.published), _e(cut.lesson.source)
    ratio = f"<b>{scoreboard.format_ratio(pick.ratio)}</b> {_e(metrics.spec(pick.metric).label)}: " if pick.ratio else ""
    more = f" <small>(+{len(found) - 1} more in the notebook)</small>" if len(found) > 1 else ""
    text = f"{ratio}{_e(pick.figure)} <small>({_e(pick.conditions)})</small>{more}"
    mine = scoreboard.same_pair_on(cut, pick.metric) if pick.ratio and pick.metric != cut.metric else None
    if mine:
        text += (f'<br><small class="ours">ours on this measure ({_e(mine.variant)} vs {_e(mine.baseline)}): '
                 f"{scoreboard.format_ratio(mine.ratio)}</small>")
    return text, _e(pick.source)


def _measured_only(cut: CutResult) -> str:
    """A lesson without a variant-baseline pair (00 measures, it does not cut): its value."""
    for rec in reversed(cut.records):
        value = rec["metrics"].get(cut.lesson.headline_metric or "")
        if value is not None:
            return (f"no baseline pair; measured {_e(metrics.spec(cut.lesson.headline_metric).label)} "
                    f"= {_e(_value(cut.lesson.headline_metric, value))} <small>({_e(rec['variant'])})</small>")
    return "no variant with a recorded baseline"


def _saving_cell(cut: CutResult) -> str:
    if cut.status == "not run":
        return "not run"
    p = cut.headline
    if p is None:
        return _measured_only(cut) + (f"<br><small>{_e(cut.note)}</small>" if cut.note else "")
    kind = "costs-more" if p.ratio <= 1 else "saving-with-loss" if p.quality_worse else "saving"
    parts = [f'<span class="ratio {kind}">{_e(p.ratio_text)}</span> '
             f"{_e(metrics.spec(p.metric).label)}" + (" <small>(estimated)</small>" if p.estimated else ""),
             f"<small>{_e(p.variant)} vs {_e(p.baseline)}: {_e(_value(p.metric, p.before))} → "
             f"{_e(_value(p.metric, p.after))}</small>"]
    if p.lower_bound:
        parts.append(f"<small>{_e(p.baseline)} did not reach the target: the left figure is what it spent "
                     f"without getting there, so the saving is at least this</small>")
    if p.ratio <= 1:
        parts.append('<small class="costs-more">no saving here</small>')
    elif p.quality_worse:
        names = ", ".join(metrics.spec(q.metric).label for q in p.quality_worse)
        parts.append(f'<small class="saving-with-loss">bought with worse {_e(names)} (beside): not a clean saving</small>')
    if cut.ratio_range:
        lo, hi = cut.ratio_range
        parts.append(f"<small>{cut.run_count} runs: {scoreboard.format_ratio(lo)} – {scoreboard.format_ratio(hi)}</small>")
    if cut.note:
        parts.append(f"<small>{_e(cut.note)}</small>")
    return "<br>".join(parts)


def _row(cut: CutResult, group: Group) -> str:
    quality = ("<br>".join(_quality_text(q) for q in cut.headline.quality) or "not recorded") \
        if cut.headline else "—"
    figure, source = _published(cut)
    cls = "cut not-run" if cut.status == "not run" else "cut"
    cells = [cut.lesson.number, f"<b>{_e(cut.lesson.cut)}</b><br><small>{_e(cut.lesson.change)}</small>",
             _saving_cell(cut), quality, f'<span class="published">{figure}</span>', source,
             _e(group.label), _e(group.profile)]
    return (f'<tr class="{cls}" data-lesson="{_e(cut.lesson.name)}" data-status="{_e(cut.status)}">'
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")


HEADER = ("#", "cut", "headline saving measured here (x better)", "quality change (same pair)",
          "published figure (not measured here)", "source", "hardware", "profile")


def _img(png: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{png}">'


def _cut_figure(cut: CutResult) -> str:
    png = report_plots.cut_plot(cut) if cut.pairs else None
    name = _e(cut.lesson.name)
    if png is None:
        why = "not run" if cut.status == "not run" else "nothing to plot (no variant-baseline pair)"
        return f'<figure class="cut-plot not-run" data-lesson="{name}"><figcaption>{name}: {why}</figcaption></figure>'
    return (f'<figure class="cut-plot" data-lesson="{name}">{_img(png, f"{cut.lesson.name} plot")}'
            f"<figcaption>{name}: {_e(cut.lesson.cut)}</figcaption></figure>")


def _group_section(group: Group, index: int) -> str:
    rows = "\n".join(_row(cut, group) for cut in group.cuts)
    pareto = report_plots.pareto_plot(group)
    pareto_html = (f'<figure class="pareto">{_img(pareto, "cost vs quality across cuts")}</figure>'
                   if pareto else "<p>No measured pairs yet.</p>")
    measured = sum(c.status == "measured" for c in group.cuts)
    return f"""
<section class="hardware" id="group-{index}" data-hardware="{_e(group.label)}" data-profile="{_e(group.profile)}">
<h2>{_e(group.label)} · profile <code>{_e(group.profile)}</code></h2>
<p>{len(group.records)} ledger record(s); {measured} of {len(group.cuts)} lessons with a measured saving.</p>
<table class="cuts"><thead><tr>{"".join(f"<th>{h}</th>" for h in HEADER)}</tr></thead>
<tbody>
{rows}
</tbody></table>
<h3>Cost vs quality across cuts</h3>
{pareto_html}
<h3>Per cut</h3>
<div class="plots">{"".join(_cut_figure(c) for c in group.cuts)}</div>
</section>"""


def _across(groups: list[Group], captions: list[str] | None = None, *, section_id: str = "across",
            title: str = "Across hardware (headline ratio, x better)") -> str:
    """Workshop view: each lesson's headline ratio on each machine, side by side (a caption
    above a column's hardware names where it is, e.g., the reference run)."""
    captions = captions or [""] * len(groups)
    head = "".join(f"<th>{f'{_e(c)}<br>' if c else ''}{_e(g.label)}<br><small>{_e(g.profile)}</small></th>"
                   for g, c in zip(groups, captions))
    def cell(cut: CutResult) -> str:
        return cut.headline.ratio_text if cut.headline else cut.status

    rows = []
    for i, lesson in enumerate(course.LESSONS):
        cells = "".join(f"<td>{cell(g.cuts[i])}</td>" for g in groups)
        rows.append(f'<tr data-lesson="{_e(lesson.name)}"><td>{_e(lesson.name)}</td>{cells}</tr>')
    return (f'<section id="{section_id}"><h2>{_e(title)}</h2>'
            f'<table><thead><tr><th>lesson</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _beside_reference(groups: list[Group], reference: list[tuple[str, Group]]) -> str:
    """Your headline ratios beside the reference run's (reference/<profile>/, made by make reference)."""
    if not reference:
        return ""
    return _across([*groups, *(g for _, g in reference)], ["yours"] * len(groups) + [c for c, _ in reference],
                   section_id="beside-reference", title="Yours beside the reference run (headline ratio, x better)")


def _margin(claim: dict) -> str:
    m = claim.get("margin")
    if not isinstance(m, (int, float)):
        return "—"
    cls = "failed" if m < 0 else "costs-more" if m < claims.FRAGILE_MARGIN else "saving"
    why = claim.get("narrow_because") if 0 <= m < claims.FRAGILE_MARGIN else ""
    return f'<span class="{cls}">{m:+.0%}</span>' + (f'<br><small>narrow by nature: {_e(why)}</small>' if why else "")


def _claims_section(lines: list[dict]) -> str:
    """Each notebook's newest claims per machine (value, threshold, margin), then the claims
    that failed on some machine and where they held."""
    if not lines:
        return ('<section id="claims"><h2>Claims</h2><p>No claim lines in the ledger (each notebook '
                "writes its claims when it runs <code>s.checks.verify()</code>).</p></section>")
    rows = []
    for (where, notebook), found in sorted(claims.latest(claims.numbered(lines)).items()):
        for line in found:
            c = line["claim"]
            status = c.get("status", "") + ("" if c.get("asserted", True) else " (reported)")
            threshold = c.get("threshold")
            bound = "" if threshold is None else f"{'≥' if c.get('direction') == 'at_least' else '≤'} {threshold:.4g}"
            rows.append(f'<tr data-lesson="{_e(notebook)}" data-status="{_e(c.get("status"))}"><td>{_e(where)}</td>'
                        f"<td>{_e(notebook)}</td><td>{_e(c.get('text'))}</td><td>{_e(c.get('measured'))}</td>"
                        f'<td>{_e(bound)}</td><td>{_margin(c)}</td><td class="{"failed" if c.get("status") == "FAILED" else ""}">'
                        f"{_e(status)}</td></tr>")
    failed = claims.failures(lines)
    fail_rows = "".join(
        f'<tr class="claim-failed" data-lesson="{_e(f.notebook)}"><td>{_e(f.notebook)}</td><td>{_e(f.text)}</td><td>'
        + "<br>".join(f"{_e(w)}: {_e(m)}" for w, m in f.failed_on.items())
        + f"</td><td>{_e(', '.join(f.held_on) or '—')}</td></tr>" for f in failed)
    failures = (f"<h3>Claims that failed on some machine</h3><table class='claims-failed'><thead><tr><th>notebook</th>"
                f"<th>claim</th><th>failed on (measured)</th><th>held on</th></tr></thead><tbody>{fail_rows}</tbody></table>"
                if failed else "<p>Every claim held on every machine (newest run of each notebook).</p>")
    return (f'<section id="claims"><h2>Claims</h2><p>Margin: how far inside its floor or bound a claim was, as a '
            f"share of it (negative: it failed; under {claims.FRAGILE_MARGIN:.0%}: it may fail on the next run). "
            f"Newest run of each notebook on each machine.</p>{failures}<table class='claims'><thead><tr><th>machine · profile</th>"
            f"<th>notebook</th><th>claim</th><th>measured</th><th>threshold</th><th>margin</th><th>status</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></section>")


def _course_run(state: dict | None) -> str:
    """Per-notebook status and run time of the last `make course` on this machine."""
    if not state:
        return ('<section id="course-run"><h2>Course run</h2><p>No course_state.json here (a merged report, '
                "or notebooks run by hand): run times are in each machine's own report.</p></section>")
    rows, total = [], 0.0
    for lesson in course.LESSONS:
        info = state.get(lesson.name)
        if not isinstance(info, dict):
            status = "not run" if lesson.path.exists() else "not written yet"
            rows.append(f'<tr data-lesson="{_e(lesson.name)}"><td>{_e(lesson.name)}</td><td>{status}</td><td></td><td>—</td><td></td></tr>')
            continue
        seconds = float(info.get("seconds") or 0)
        total += seconds
        error = (info.get("error") or "").strip().splitlines()
        cls = "failed" if info.get("status") != "ok" else ""
        rows.append(f'<tr data-lesson="{_e(lesson.name)}"><td>{_e(lesson.name)}</td><td class="{cls}">{_e(info.get("status"))}'
                    f'</td><td>{_e(info.get("profile", ""))}</td><td>{seconds:.1f}</td>'
                    f'<td><small>{_e(error[-1] if error else "")}</small></td></tr>')
    return (f'<section id="course-run"><h2>Course run (this machine)</h2><p>Total: {total:.0f} s of notebook '
            f"execution.</p><table><thead><tr><th>notebook</th><th>status</th><th>profile</th><th>seconds</th><th>error</th></tr>"
            f'</thead><tbody>{"".join(rows)}</tbody></table></section>')


def _provenance(records: list[dict], read: ledger.ReadReport, outside: int) -> str:
    commits: dict[str, int] = {}
    versions: dict[str, set] = {}
    created = sorted(str((r.get("provenance") or {}).get("created_at") or "") for r in records)
    for rec in records:
        prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
        key = f"{str(prov.get('git_commit'))[:12]}" + (" (uncommitted changes)" if prov.get("git_dirty") else "")
        commits[key] = commits.get(key, 0) + 1
        for pkg, ver in (prov.get("versions") or {}).items():
            versions.setdefault(pkg, set()).add(str(ver))
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    items = [f"Report generated {now} from {len(records)} ledger record(s)"
             + (f", recorded {_e(created[0])} – {_e(created[-1])}" if created else "") + ".",
             f"Skipped ledger lines: {read.skipped_malformed} malformed, {read.skipped_foreign} foreign; "
             f"{outside} record(s) of notebooks outside this manifest.",
             "Commits: " + (", ".join(f"<code>{_e(k)}</code> ×{v}" for k, v in sorted(commits.items())) or "—"),
             "Versions: " + (", ".join(f"{_e(k)} {_e('/'.join(sorted(v)))}" for k, v in sorted(versions.items())) or "—"),
             "Ratios are baseline ÷ variant for costs where lower is better (and variant ÷ baseline where "
             "higher is better), taken from one run's variant and the baseline it names. Figures marked "
             "estimated are estimates, not measurements. Published figures were measured elsewhere, on "
             "other models and hardware: compare directions and orders of magnitude."]
    return '<section id="provenance"><h2>Provenance</h2><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></section>"


def build(read: ledger.ReadReport, state: dict | None = None, title: str = "costlab report",
          reference: list[tuple[str, Group]] | None = None) -> str:
    """The report's HTML from a ledger read (records + skipped counts) and optional run state;
    reference: (caption, group) of reference runs to show beside the measured groups."""
    groups = scoreboard.groups(read.records)
    outside = scoreboard.outside_manifest(read.records)
    if not groups:  # nothing measured yet: still one row per lesson, all "not run"
        groups = [Group({}, "—", [], [CutResult(l, l.headline_metric) for l in course.LESSONS])]
    sections = "".join(_group_section(g, i) for i, g in enumerate(groups))
    nav = "".join(f'<li><a href="#group-{i}">{_e(g.label)} · {_e(g.profile)}</a></li>' for i, g in enumerate(groups))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{_e(title)}: what each cut saved</h1>
<p>One row per cut: the best variant's saving on the lesson's headline measure against its own
baseline, measured on the hardware named in the row, with the quality change of the same pair
beside it and the published figure (not measured here) for comparison. All measured numbers
come from the ledger.</p>
<ul>{nav}<li><a href="#claims">claims</a></li><li><a href="#course-run">course run</a></li><li><a href="#provenance">provenance</a></li></ul>
{_across(groups) if len(groups) > 1 else ""}
{_beside_reference(groups, reference or [])}
{sections}
{_claims_section(read.claims)}
{_course_run(state)}
{_provenance(read.records, read, outside)}
</body></html>
"""


def write(read: ledger.ReadReport, out_dir: str | Path, state: dict | None = None,
          title: str = "costlab report", reference: list[tuple[str, Group]] | None = None) -> Path:
    out = Path(out_dir) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build(read, state, title, reference), encoding="utf-8")
    return out


def load_state(path: str | Path) -> dict | None:
    """The runner's course_state.json, or None if absent or unreadable (never fatal)."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def from_results(results: str | Path | None = None) -> Path:
    """results/ledger.jsonl (+ course_state.json) -> results/report.html, with the repo's
    reference runs (reference/<profile>/ledger.jsonl) beside the learner's figures."""
    from .reference import reference_groups

    results = Path(results) if results else ledger.results_dir()
    return write(ledger.read_report(results / "ledger.jsonl"), results, load_state(results / "course_state.json"),
                 reference=reference_groups())

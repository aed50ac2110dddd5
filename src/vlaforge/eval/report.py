"""The evaluation report: one self-contained HTML page that opens offline.

Everything is inside the file: CSS inline, the chart as inline SVG (matplotlib, text kept as text),
the rollout videos as base64 `data:` URIs. No CDN, no scripts, no external fetches, so the page can be
mailed, archived next to eval_info.json, or opened on a machine with no network.

Layout: title (policy, date) -> the overall success rate with its Wilson 95% interval, large -> the
protocol -> per-task chart with error bars -> table (tasks, then difficulty groups, then overall) ->
rollout videos (task, success/failure, instruction) -> instructions used -> every episode.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from vlaforge.atomic import write_text

GROUP_COLOURS = {"easy": "#2a9d8f", "medium": "#e9c46a", "hard": "#f4a261", "very_hard": "#e76f51"}

CSS = """
:root { --fg:#1d2430; --muted:#5b6676; --line:#e3e7ee; --bg:#f6f8fb; --card:#fff; --ok:#1f9d55; --bad:#d64545; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width:1100px; margin:0 auto; padding:32px 24px 64px; }
h1 { font-size:26px; margin:0 0 4px; } h2 { font-size:19px; margin:36px 0 12px; }
.sub { color:var(--muted); margin:0 0 24px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:18px 20px; }
.hero { display:flex; gap:32px; align-items:center; flex-wrap:wrap; }
.big { font-size:64px; font-weight:700; letter-spacing:-2px; line-height:1; }
.ci { font-size:18px; color:var(--muted); }
.groups { display:flex; gap:12px; flex-wrap:wrap; margin-left:auto; }
.pill { border-radius:8px; padding:8px 12px; background:var(--bg); border:1px solid var(--line); min-width:120px; }
.pill b { display:block; font-size:20px; }
table { border-collapse:collapse; width:100%; background:var(--card); }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); font-variant-numeric:tabular-nums; }
th { font-size:13px; color:var(--muted); font-weight:600; text-transform:uppercase; letter-spacing:.03em; }
tr.sum td { font-weight:600; background:#fafbfd; }
.bar { position:relative; height:10px; width:140px; background:var(--line); border-radius:5px; display:inline-block;
       vertical-align:middle; margin-right:8px; }
.bar i { position:absolute; left:0; top:0; bottom:0; border-radius:5px; background:var(--ok); }
.dot { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:6px; vertical-align:middle; }
dl.proto { display:grid; grid-template-columns:max-content 1fr; gap:4px 18px; margin:0; }
dl.proto dt { color:var(--muted); } dl.proto dd { margin:0; font-family:ui-monospace, Menlo, Consolas, monospace;
       font-size:13px; word-break:break-all; }
.chart svg { width:100%; height:auto; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(240px, 1fr)); gap:16px; }
.vid video { width:100%; aspect-ratio:1; background:#000; border-radius:6px; image-rendering:pixelated; }
.vid .t { font-weight:600; margin-top:6px; } .vid .i { color:var(--muted); font-size:13px; }
.badge { font-size:12px; font-weight:700; padding:2px 8px; border-radius:10px; color:#fff; margin-left:6px; }
.badge.ok { background:var(--ok); } .badge.bad { background:var(--bad); }
ul.instr { margin:0; padding-left:18px; } details summary { cursor:pointer; color:var(--muted); }
.banner { background:#fff4d6; border:1px solid #e9c46a; border-radius:8px; padding:10px 14px; margin:0 0 18px;
          font-weight:600; }
.untrained { font-size:12px; font-weight:700; padding:2px 8px; border-radius:10px; background:#8892a0; color:#fff;
             margin-left:6px; }
footer { color:var(--muted); font-size:12px; margin-top:40px; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def chart_svg(info: dict[str, Any]) -> str:
    """A horizontal bar chart of per-task success with Wilson 95% error bars, as an inline <svg>."""
    from matplotlib.figure import Figure

    per_task = info["aggregates"]["per_task"]
    tasks = list(per_task)
    rates = [per_task[t]["rate"] for t in tasks]
    lo = [per_task[t]["rate"] - per_task[t]["ci_low"] for t in tasks]
    hi = [per_task[t]["ci_high"] - per_task[t]["rate"] for t in tasks]
    colours = [GROUP_COLOURS.get(info["groups"].get(t, ""), "#8892a0") for t in tasks]

    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 10, "svg.hashsalt": "vlaforge"}):
        fig = Figure(figsize=(8.0, 0.9 + 0.32 * len(tasks)))
        ax = fig.add_subplot()
        y = list(range(len(tasks)))
        ax.barh(y, rates, color=colours, height=0.65)
        ax.errorbar(rates, y, xerr=[lo, hi], fmt="none", ecolor="#1d2430", elinewidth=1.2, capsize=3)
        ax.set_yticks(y, tasks)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("success rate (bars: Wilson 95% interval)")
        ax.grid(axis="x", color="#e3e7ee")
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG lives inside HTML
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def _execution(proto: dict) -> str:
    """The chunk execution strategy in words (reports written before strategies existed: open loop)."""
    kind = proto.get("execution", "open-loop")
    if kind == "ensemble":
        return f"temporal ensembling (a chunk every step, weights exp(-{proto.get('ensemble_decay')} i))"
    if kind == "receding":
        return f"receding horizon, re-plan every {proto.get('replan_every')} step(s)"
    return f"open loop, {proto['execute_steps']} step(s) per chunk"


def _workers(n: int) -> str:
    return "in one process" if n <= 0 else f"{n} worker process{'es' if n > 1 else ''}"


def _video_uri(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _rate_cells(r: dict[str, Any]) -> str:
    return (
        f"<td>{r['successes']}/{r['n']}</td>"
        f'<td><span class="bar"><i style="width:{100 * r["rate"]:.1f}%"></i></span>{_pct(r["rate"])}</td>'
        f"<td>[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]</td>"
    )


def _trained_badge(info: dict[str, Any], task: str) -> str:
    """A badge on a task outside the policy's training set (none when trained or unknown)."""
    if (info.get("trained_on") or {}).get(task) is False:
        return '<span class="untrained" title="not in the policy\'s training data">untrained</span>'
    return ""


def _suites_table(info: dict[str, Any]) -> list[str]:
    """Every instruction suite (training words, held-out paraphrases, perturbations) side by side on the
    same episodes, per task and overall, with intervals; nothing when only one suite ran."""
    suites = info.get("instruction_suites") or {}
    if len(suites) < 2:
        return []
    names = list(suites)
    head = "".join(f"<th>{_e(n)}</th><th>95% CI</th>" for n in names)
    parts = [
        '<h2>Instructions: the same episodes, other words</h2><table id="suites"><thead><tr><th>task</th>'
        f"{head}</tr></thead><tbody>"
    ]

    def cells(r: dict[str, Any] | None) -> str:
        if not r:
            return "<td>-</td><td></td>"
        return f"<td>{r['successes']}/{r['n']} &middot; {_pct(r['rate'])}</td><td>[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]</td>"

    for task in info["tasks"]:
        row = "".join(cells(suites[n]["per_task"].get(task)) for n in names)
        parts.append(f"<tr><td>{_e(task)}{_trained_badge(info, task)}</td>{row}</tr>")
    row = "".join(cells(suites[n]["overall"]) for n in names)
    parts.append(f'<tr class="sum"><td>overall</td>{row}</tr></tbody></table>')
    about = "; ".join(f"<b>{_e(n)}</b>: {_e(suites[n]['about'])}" for n in names)
    parts.append(f'<p class="sub">{about} (rules: vlaforge.eval.suites).</p>')
    return parts


def _compare_table(info: dict[str, Any]) -> list[str]:
    """The policy and the compared evaluation side by side, per task, with intervals."""
    other = info["compare"]
    mine, theirs = info["aggregates"], other["aggregates"]
    a, b = _e(info["policy"]), _e(other["policy"])
    parts = [
        f'<h2>Compared with {b}</h2><table id="compare"><thead><tr><th>task</th>'
        f"<th>{a}</th><th>95% CI</th><th>{b}</th><th>95% CI</th></tr></thead><tbody>"
    ]

    def cells(r: dict[str, Any] | None) -> str:
        if not r:
            return "<td>-</td><td></td>"
        return f"<td>{r['successes']}/{r['n']} &middot; {_pct(r['rate'])}</td><td>[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]</td>"

    for task in mine["per_task"]:
        parts.append(
            f"<tr><td>{_e(task)}{_trained_badge(info, task)}</td>{cells(mine['per_task'][task])}"
            f"{cells(theirs['per_task'].get(task))}</tr>"
        )
    parts.append(
        f'<tr class="sum"><td>overall</td>{cells(mine["overall"])}{cells(theirs["overall"])}</tr></tbody></table>'
    )
    return parts


def render_html(info: dict[str, Any], out_dir: Path) -> str:
    """The report page for an eval_info dict; videos are read from `out_dir` and embedded."""
    agg, proto = info["aggregates"], info["protocol"]
    overall = agg["overall"]
    name = info["policy"]
    heldout = proto["instructions"] == "heldout"
    kind = "held-out instruction evaluation" if heldout else "evaluation"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>vlaforge {'held-out instruction ' if heldout else ''}eval: {_e(name)}</title>"
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{_e(proto.get('env_title') or proto.get('benchmark') or '')} {kind}: {_e(name)}</h1>",
        f'<p class="sub">{_e(info["date"])} &middot; {len(info["tasks"])} tasks &middot; '
        f"{proto['episodes_per_task']} episodes per task &middot; {_e(proto['instructions'])} instructions</p>",
    ]
    if heldout:
        note = proto.get("instructions_note") or "held-out instructions: paraphrases never seen in training"
        parts.append(f'<div class="banner" id="heldout">{_e(note)}</div>')
    untrained = agg.get("untrained")
    if untrained:
        parts.append(
            '<div class="banner" id="untrained">Some tasks were not in the policy\'s training data: they are '
            f"marked untrained and left out of the overall rate (untrained tasks pooled: {_pct(untrained['rate'])}"
            f" [{_pct(untrained['ci_low'])}, {_pct(untrained['ci_high'])}], "
            f"{untrained['successes']}/{untrained['n']}).</div>"
        )

    pills = "".join(
        f'<div class="pill"><span class="dot" style="background:{GROUP_COLOURS.get(g, "#8892a0")}"></span>'
        f"{_e(g)}<b>{_pct(r['rate'])}</b><span class=ci>{r['successes']}/{r['n']}</span></div>"
        for g, r in agg["per_group"].items()
    )
    vs = ""
    for suite, r in list((info.get("instruction_suites") or {}).items())[1:]:
        o = r["overall"]
        vs += (
            f'<div class="ci" id="suite-{_e(suite)}">{_e(suite)} instructions: {_pct(o["rate"])} '
            f"[{_pct(o['ci_low'])}, {_pct(o['ci_high'])}]</div>"
        )
    if info.get("compare"):
        o = info["compare"]["aggregates"]["overall"]
        vs += (
            f'<div class="ci" id="vs">vs {_e(info["compare"]["policy"])}: {_pct(o["rate"])} '
            f"[{_pct(o['ci_low'])}, {_pct(o['ci_high'])}]</div>"
        )
    parts.append(
        '<section class="card hero"><div><div class="big" id="overall">'
        f"{_pct(overall['rate'])}</div>"
        f'<div class="ci">95% CI [{_pct(overall["ci_low"])}, {_pct(overall["ci_high"])}] &middot; '
        f"{overall['successes']}/{overall['n']} episodes succeeded"
        f"{' (trained tasks)' if untrained else ''}</div>{vs}</div>"
        f'<div class="groups">{pills}</div></section>'
    )

    # Protocol: what was measured, how, with which software.
    ck = proto.get("checkpoint")
    rows = [
        ("policy", name if ck is None else ck["resolved"]),
        ("model sha256", ck["model_sha256"] if ck else "(baseline: no weights)"),
        ("cameras / image size", f"{', '.join(proto['cameras'])} / {proto['image_size']} px"),
        ("max steps", proto["max_steps"]),
        ("execution", _execution(proto)),
        ("seed", f"{proto['seed']} ({proto['seed_rule']})"),
        ("success", proto["success"]),
        ("instructions", proto.get("instructions_note") or proto["instructions"]),
        ("tasks chosen", info.get("tasks_rule", "given")),
        ("software", ", ".join(f"{k} {v}" for k, v in proto["versions"].items())),
        (
            "wall time",
            f"{proto['wall_time_s']:.1f} s, {_workers(proto['workers'])}, device {proto['device']}",
        ),
    ]
    if proto.get("training_seed_overlap"):  # only evaluated with allow_training_seeds
        rows.insert(
            6,
            (
                "training scenes",
                f"{proto['training_seed_overlap']} episodes start from scenes the policy was trained on "
                "(--allow-training-seeds): they measure memorisation, not generalisation",
            ),
        )
    parts.append("<h2>Protocol</h2><section class=card><dl class=proto>")
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows]
    parts.append("</dl></section>")

    parts.append(f'<h2>Success per task</h2><section class="card chart">{chart_svg(info)}</section>')

    parts.append(
        '<h2>Results</h2><table id="results"><thead><tr><th>task</th><th>group</th><th>successes/n</th>'
        "<th>rate</th><th>95% CI</th></tr></thead><tbody>"
    )
    for task, r in agg["per_task"].items():
        g = info["groups"][task]
        parts.append(
            f'<tr><td>{_e(task)}{_trained_badge(info, task)}</td><td><span class="dot" style="background:{GROUP_COLOURS.get(g, "#8892a0")}">'
            f"</span>{_e(g)}</td>{_rate_cells(r)}</tr>"
        )
    for g, r in agg["per_group"].items():
        parts.append(f'<tr class="sum"><td>all {_e(g)} tasks</td><td>{_e(g)}</td>{_rate_cells(r)}</tr>')
    if untrained:
        parts.append(f'<tr class="sum"><td>overall (trained tasks)</td><td></td>{_rate_cells(overall)}</tr>')
        parts.append(f'<tr class="sum"><td>untrained tasks</td><td></td>{_rate_cells(untrained)}</tr>')
    else:
        parts.append(f'<tr class="sum"><td>overall</td><td></td>{_rate_cells(overall)}</tr>')
    parts.append("</tbody></table>")
    parts += _suites_table(info)
    if info.get("compare"):
        parts += _compare_table(info)

    videos = [ep for ep in info["episodes"] if ep.get("video")]
    if videos:
        parts.append('<h2>Rollouts</h2><section class="grid">')
        for ep in videos:
            ok = ep["success"]
            badge = (
                '<span class="badge ok">success</span>' if ok else '<span class="badge bad">failure</span>'
            )
            parts.append(
                '<figure class="vid card" style="margin:0">'
                f'<video controls autoplay muted loop playsinline src="{_video_uri(out_dir / ep["video"])}"></video>'
                f'<figcaption><div class="t">{_e(ep["task"])}{badge}</div>'
                f'<div class="i">&ldquo;{_e(ep["instruction"])}&rdquo;</div>'
                f'<div class="i">episode {ep["episode"]} &middot; seed {ep["seed"]} &middot; {ep["steps"]} steps'
                "</div></figcaption></figure>"
            )
        parts.append("</section>")

    parts.append(
        "<h2>Instructions used</h2><table><thead><tr><th>task</th><th>instructions</th></tr></thead><tbody>"
    )
    for task, words in info["instructions"].items():
        items = "".join(f"<li>{_e(w)}</li>" for w in words)
        parts.append(f'<tr><td>{_e(task)}</td><td><ul class="instr">{items}</ul></td></tr>')
    parts.append("</tbody></table>")

    parts.append(
        "<h2>Episodes</h2><details><summary>all {} episodes</summary><table><thead><tr><th>task</th>"
        "<th>episode</th><th>seed</th><th>success</th><th>steps</th><th>instruction</th></tr></thead>"
        "<tbody>".format(len(info["episodes"]))
    )
    for ep in info["episodes"]:
        parts.append(
            f"<tr><td>{_e(ep['task'])}</td><td>{ep['episode']}</td><td>{ep['seed']}</td>"
            f"<td>{'yes' if ep['success'] else 'no'}</td><td>{ep['steps']}</td><td>{_e(ep['instruction'])}</td></tr>"
        )
    parts.append("</tbody></table></details>")
    parts.append(
        "<footer>Generated by vlaforge. The numbers and the protocol are in eval_info.json.</footer>"
    )
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(info: dict[str, Any], out_dir: str | Path) -> Path:
    """Writes `out_dir/report.html` for an eval_info dict and returns its path."""
    out_dir = Path(out_dir)
    path = out_dir / "report.html"
    write_text(path, render_html(info, out_dir))
    return path

"""A self-contained HTML audit report: metrics per category, the worst misses, and flagged images.

Overlays are embedded as base64 PNG thumbnails so the file can be mailed or
archived alone. The number of embedded images is capped to keep the page small.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .metrics import AuditMetrics
from .text import format_value

MAX_FLAGGED = 48
MAX_MISSES = 12

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#1b1b1b;background:#fafafa}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;background:#fff}
th,td{border:1px solid #ddd;padding:.35rem .6rem;text-align:right;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}
th{background:#f0f0f0}
.cards{display:flex;flex-wrap:wrap;gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem;width:380px}
.card img{max-width:100%;display:block;margin:.3rem 0}
.bad{color:#b00020;font-weight:600} .ok{color:#1b7f3b;font-weight:600}
.muted{color:#777;font-size:.9em} code{font-size:.85em}
ul{padding-left:1.1rem;margin:.3rem 0}
"""


def _fmt(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _embed(out: Path, rel: Optional[str]) -> str:
    if not rel:
        return ""
    path = out / rel
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="overlay" src="data:image/png;base64,{data}">'


def _value(v: object) -> str:
    return _e(format_value(v))


def _card(out: Path, r, note: str = "") -> str:
    status = "bad" if r.is_anomalous else "ok"
    decision = "ANOMALOUS" if r.is_anomalous else "normal"
    findings = "".join(
        f"<li><b>{_e(f.rule_id)}</b> {_e(f.rule_text)}<br><span class='muted'>expected {_value(f.expected)}, "
        f"observed {_value(f.observed)}</span>{(' — ' + _e(f.explanation)) if f.explanation else ''}</li>"
        for f in r.failed
    )
    truth = f"{_e(r.label)}" + (f" / {_e(r.anomaly_type)}" if r.anomaly_type else "")
    return (
        f"<div class='card'><div><b>{_e(r.image_id)}</b></div>"
        f"<div>score {_fmt(r.score)} · <span class='{status}'>{decision}</span> · truth: {truth}</div>"
        f"{('<div class=muted>' + _e(note) + '</div>') if note else ''}"
        f"{_embed(out, r.overlay)}"
        f"<div>{_e(r.explanation)}</div>"
        f"{('<ul>' + findings + '</ul>') if findings else ''}"
        f"{('<div class=muted>truth: ' + _e(r.reason) + '</div>') if r.reason else ''}</div>"
    )


def render_report(out: Path, records: Sequence, metrics: AuditMetrics, *, title: str = "logiscan audit") -> str:
    ok = [r for r in records if not r.error and r.score is not None]
    errors = [r for r in records if r.error]
    rows = []
    for name, m in sorted(metrics.categories.items()):
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{m.n_images}</td><td>{m.n_good}</td><td>{m.n_logical}</td>"
            f"<td>{m.n_structural}</td><td>{m.n_errors}</td><td>{_fmt(m.auroc_logical)}</td>"
            f"<td>{_fmt(m.auroc_structural)}</td><td>{_fmt(m.auroc_mean)}</td><td>{_fmt(m.f1_max)}</td>"
            f"<td>{_fmt(m.accuracy)}</td></tr>"
        )
    mean = metrics.mean
    rows.append(
        f"<tr><th>mean</th><th>{metrics.n_images}</th><th></th><th></th><th></th><th>{metrics.n_errors}</th>"
        f"<th>{_fmt(mean.get('auroc_logical'))}</th><th>{_fmt(mean.get('auroc_structural'))}</th>"
        f"<th>{_fmt(mean.get('auroc_mean'))}</th><th>{_fmt(mean.get('f1_max'))}</th><th>{_fmt(mean.get('accuracy'))}</th></tr>"
    )
    per_type = "".join(
        f"<tr><td>{_e(cat)}</td><td>{_e(t)}</td><td>{_fmt(v)}</td></tr>"
        for cat, m in sorted(metrics.categories.items()) for t, v in sorted(m.auroc_per_type.items())
    )
    notes = "".join(f"<li>{_e(cat)}: {_e(n)}</li>" for cat, m in sorted(metrics.categories.items()) for n in m.notes)

    # worst misses: anomalies scored lowest among those not flagged, and good images scored highest among those flagged
    missed = sorted((r for r in ok if r.label not in (None, "good") and not r.is_anomalous), key=lambda r: r.score)
    false_alarms = sorted((r for r in ok if r.label == "good" and r.is_anomalous), key=lambda r: -r.score)
    flagged = sorted((r for r in ok if r.is_anomalous), key=lambda r: -r.score)

    miss_cards = "".join(_card(out, r, "missed anomaly") for r in missed[:MAX_MISSES]) or "<p>No missed anomalies.</p>"
    alarm_cards = "".join(_card(out, r, "false alarm") for r in false_alarms[:MAX_MISSES]) or "<p>No false alarms.</p>"
    flagged_cards = "".join(_card(out, r) for r in flagged[:MAX_FLAGGED]) or "<p>No image was flagged.</p>"
    more = f"<p class=muted>Showing {MAX_FLAGGED} of {len(flagged)} flagged images (highest scores first).</p>" \
        if len(flagged) > MAX_FLAGGED else ""
    error_rows = "".join(f"<tr><td>{_e(r.image_id)}</td><td style='text-align:left'>{_e(r.error)}</td></tr>" for r in errors)
    timing = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in metrics.timing.items())
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(title)}</h1>
<p class="sub">{len(records)} images · {len(errors)} errors · written {when}</p>
<h2>Metrics per category</h2>
<table><tr><th>category</th><th>images</th><th>good</th><th>logical</th><th>structural</th><th>errors</th>
<th>AUROC logical</th><th>AUROC structural</th><th>AUROC mean</th><th>F1-max</th><th>accuracy</th></tr>
{''.join(rows)}</table>
{('<h3>AUROC per anomaly type</h3><table><tr><th>category</th><th>type</th><th>AUROC</th></tr>' + per_type + '</table>') if per_type else ''}
{('<h3>Notes</h3><ul>' + notes + '</ul>') if notes else ''}
<h2>Worst misses</h2>
<h3>Missed anomalies (lowest scores)</h3><div class="cards">{miss_cards}</div>
<h3>False alarms (highest scores)</h3><div class="cards">{alarm_cards}</div>
<h2>Flagged images</h2>{more}<div class="cards">{flagged_cards}</div>
{('<h2>Errors</h2><table><tr><th>image</th><th>error</th></tr>' + error_rows + '</table>') if errors else ''}
<h2>Timing</h2><table>{timing}</table>
</body></html>
"""


def write_report(out: str | Path, records: Iterable, metrics: AuditMetrics, *, title: str = "logiscan audit") -> Path:
    out = Path(out)
    path = out / "report.html"
    path.write_text(render_report(out, list(records), metrics, title=title), encoding="utf-8")
    return path

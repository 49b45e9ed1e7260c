"""The main job on embedded samples: synthetic LOCO-like scenes, plus the real MVTec LOCO
cases when ``../shared/loco`` is present. Prints each verdict with its explanation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

DEFAULT_SYNTH_CATEGORIES = ("splicing_connectors", "screw_bag")


def shared_dir() -> Optional[Path]:
    """``../shared`` beside the repository, or ``$LOGISCAN_SHARED``."""
    env = os.environ.get("LOGISCAN_SHARED")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared")
    for c in candidates:
        if (c / "loco").is_dir():
            return c
    return None


def _print_verdict(console: Console, title: str, truth: str, verdict) -> None:
    colour = "red" if verdict.is_anomalous else "green"
    header = (
        f"[bold]{title}[/bold]  truth: {truth}  →  [{colour}]{'ANOMALOUS' if verdict.is_anomalous else 'normal'}"
        f"[/{colour}] (score {verdict.score:.2f})"
    )
    console.print(Panel(verdict.explanation, title=header, title_align="left", expand=True))


def run_demo(
    console: Optional[Console] = None,
    *,
    categories: Sequence[str] = DEFAULT_SYNTH_CATEGORIES,
    k: int = 4,
    seed: int = 7,
    scale: float = 0.5,
    with_real: bool = True,
    agent=None,
) -> list[dict]:
    """Run the agent on synthetic samples (and the real cases); return a summary row per image."""
    from agent.core import Agent
    from detectors.data.synth import SynthGenerator

    console = console or Console()
    agent = agent or Agent()
    rows: list[dict] = []
    console.rule("[bold]logiscan demo[/bold]: synthetic LOCO-like scenes")
    for category in categories:
        gen = SynthGenerator(category, seed=seed, scale=scale)
        refs = [gen.sample(i, kind="good").image for i in range(k)]
        console.print(f"[dim]{category}: fitting {k} references; the local model writes the LogiCode checks "
                      "on the first run (about a minute per rule set on 2 cores, cached afterwards)...[/dim]")
        t0 = time.perf_counter()
        ctx = agent.prepare(category=category, references=refs)
        console.print(
            f"[dim]{category}: fitted {k} references and prepared the LogiCode program in "
            f"{time.perf_counter() - t0:.1f} s ({len(ctx.program.checked_rule_ids) if ctx.program else 0}"
            f"/{len(ctx.rules.rules)} rules checked by code)[/dim]"
        )
        for index, kind in ((100, "good"), (101, "logical"), (102, "logical"), (103, "structural")):
            sample = gen.sample(index, kind=kind)
            verdict = agent.run_prepared(ctx, sample.image, name=f"synthetic {category} #{index}")
            truth = sample.label + (f" ({sample.reason})" if sample.reason else "")
            _print_verdict(console, f"{category} #{index}", truth, verdict)
            rows.append({"image": f"synth/{category}/{index}", "truth": sample.label, "score": verdict.score,
                         "anomalous": verdict.is_anomalous})

    shared = shared_dir() if with_real else None
    if shared is not None:
        console.rule("[bold]real MVTec LOCO AD cases[/bold] (one normal reference each)")
        for case in sorted((shared / "loco" / "cases").iterdir()):
            meta = json.loads((case / "rules.json").read_text())
            console.print(f"[dim]{case.name}: preparing (one reference: normal.png)...[/dim]")
            ctx = agent.prepare(
                rules=meta["rules"], category=meta["category"], class_context=meta["class_context"],
                references=[case / "normal.png"],
            )
            for name, truth in (("normal.png", "good"), ("abnormal.png", "logical: " + meta["abnormal_shows"])):
                verdict = agent.run_prepared(ctx, case / name, name=str(case / name))
                _print_verdict(console, f"{case.name}/{name}", truth, verdict)
                rows.append({"image": f"{case.name}/{name}", "truth": truth.split(":")[0],
                             "score": verdict.score, "anomalous": verdict.is_anomalous})
    elif with_real:
        console.print("[dim]../shared/loco not found: skipping the real MVTec LOCO cases.[/dim]")

    table = Table(title="summary")
    for col in ("image", "truth", "score", "decision"):
        table.add_column(col)
    correct = 0
    for r in rows:
        ok = r["anomalous"] == (r["truth"] != "good")
        correct += ok
        table.add_row(r["image"], r["truth"], f"{r['score']:.2f}",
                      ("[red]anomalous[/red]" if r["anomalous"] else "[green]normal[/green]") + ("" if ok else " ✗"))
    console.print(table)
    console.print(f"{correct}/{len(rows)} decisions match the ground truth.")
    return rows

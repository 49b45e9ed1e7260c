"""The ``logiscan`` command: inspect, chat, audit, synth, demo, serve."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .text import format_value

app = typer.Typer(
    name="logiscan",
    help="Find logical anomalies in product images (missing parts, wrong counts, wrong colours) and say why.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def make_agent(config: Optional[Path] = None):
    """Build the agent once per command (models load lazily on first use)."""
    from agent import Agent, AgentConfig

    return Agent(AgentConfig.from_file(config) if config else None)


def _check_config(value: Optional[Path]) -> Optional[Path]:
    """Read --config before any work starts, so that a bad file is a usage error, not a traceback."""
    if value is not None:
        from .config import AgentConfig, ConfigError

        try:
            AgentConfig.from_file(value)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
    return value


def _check_overlay_path(value: Optional[Path]) -> Optional[Path]:
    """The overlay's format comes from its extension: check it before the (long) inspection runs."""
    if value is not None:
        from PIL import Image

        if value.suffix.lower() not in Image.registered_extensions():
            raise typer.BadParameter(f"'{value}' has no image extension Pillow can write (use .png or .jpg).")
    return value


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def resolve_rules(rules_file: Optional[Path], rule_texts: Optional[list[str]], category: Optional[str]):
    """Rules from a file, from --rule texts, or the built-in pack of --category (first that is given)."""
    from prompts import load_rules

    if rules_file is not None and rule_texts:
        raise typer.BadParameter("give either --rules FILE or --rule TEXT, not both")
    if rules_file is not None:
        return load_rules(Path(rules_file), category=category)
    if rule_texts:
        return load_rules(list(rule_texts), category=category)
    if category:
        return load_rules(None, category=category)
    from prompts import RulesError, builtin_categories

    raise RulesError(
        "No rules given: pass --category (built-in: " + ", ".join(builtin_categories()) + "), --rules FILE or --rule TEXT."
    )


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything (Python prints and C-level writes, e.g. llama.cpp) to stderr.

    ``--json`` promises that stdout carries the verdict and nothing else.
    """
    saved_fd = None
    try:
        sys.__stdout__.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except (OSError, AttributeError, ValueError):
        saved_fd = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.__stdout__.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def print_verdict(console: Console, verdict) -> None:
    decision = "[bold red]ANOMALOUS[/]" if verdict.is_anomalous else "[bold green]NORMAL[/]"
    head = f"{decision}  score [bold]{verdict.score:.3f}[/] (threshold {verdict.threshold:.2f})"
    if verdict.component_scores:
        head += "\n" + "  ".join(f"{k} {v:.3f}" for k, v in verdict.component_scores.items())
    body = head + (f"\n\n{verdict.explanation}" if verdict.explanation else "")
    if not verdict.logic_available and verdict.logic_note:
        body += f"\n[yellow]{verdict.logic_note}[/]"
    console.print(Panel(body, title=f"{verdict.category}: {verdict.image or 'image'}", expand=False))
    if verdict.findings:
        table = Table(show_lines=False)
        for col in ("rule", "text", "result", "expected", "observed", "why"):
            table.add_column(col, overflow="fold")
        for f in verdict.findings:
            table.add_row(
                f.rule_id, f.rule_text, "[green]pass[/]" if f.passed else "[bold red]FAIL[/]",
                format_value(f.expected, 60), format_value(f.observed, 60), f.explanation,
            )
        console.print(table)
    if verdict.program is not None:
        console.print(f"[dim]program {verdict.program.sha256[:12]} ({verdict.program.origin})"
                      + (f" · {sum(verdict.timings.values()):.2f}s" if verdict.timings else "") + "[/]")


# ------------------------------------------------------------------------------ inspect
@app.command()
def inspect(
    image: Path = typer.Argument(..., help="the image to check"),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="built-in rule pack / product category"),
    rules: Optional[Path] = typer.Option(None, "--rules", "-r", help="YAML/JSON rules file"),
    rule: Optional[list[str]] = typer.Option(None, "--rule", help="a rule in words; repeat for several"),
    ref: Optional[list[Path]] = typer.Option(None, "--ref", help="a reference image of a normal product; repeatable"),
    as_json: bool = typer.Option(False, "--json", help="print only the Verdict as JSON on stdout"),
    overlay: Optional[Path] = typer.Option(None, "--overlay", "-o", help="write an overlay PNG here",
                                           callback=_check_overlay_path),
    config: Optional[Path] = typer.Option(None, "--config", help="AgentConfig YAML/JSON", callback=_check_config),
) -> None:
    """Check one image against normality rules and explain the verdict."""
    from detectors.images import ImageInputError, load_image
    from prompts import RulesError

    try:
        normality = resolve_rules(rules, rule, category)
        load_image(image)  # fail fast, before any model loads
        for r in ref or []:
            load_image(r)
    except (RulesError, ImageInputError) as exc:
        _fail(str(exc))
    quiet = stdout_to_stderr() if as_json else contextlib.nullcontext()
    with quiet:
        agent = make_agent(config)
        try:
            verdict = agent.run(str(image), rules=normality, references=[str(r) for r in ref or []] or None,
                                category=category or normality.category)
        except (RulesError, ImageInputError) as exc:
            _fail(str(exc))
        overlay_written = None
        if overlay is not None:
            from .overlay import render_overlay

            overlay.parent.mkdir(parents=True, exist_ok=True)
            render_overlay(image, verdict, scene=getattr(agent, "last_scene", None),
                           anomaly_map=getattr(agent, "last_anomaly_map", None)).save(overlay)
            overlay_written = overlay
    if as_json:
        typer.echo(verdict.model_dump_json(indent=2))
        return
    console = Console()
    print_verdict(console, verdict)
    if overlay_written is not None:
        console.print(f"overlay written to {overlay_written}")


# ------------------------------------------------------------------------------ chat
@app.command()
def chat(
    category: Optional[str] = typer.Option(None, "--category", "-c", help="built-in rule pack to start with"),
    rules: Optional[Path] = typer.Option(None, "--rules", "-r", help="YAML/JSON rules file to start with"),
    ref: Optional[list[Path]] = typer.Option(None, "--ref", help="reference image; repeatable"),
    config: Optional[Path] = typer.Option(None, "--config", help="AgentConfig YAML/JSON", callback=_check_config),
) -> None:
    """An interactive session: 'inspect PATH', then ask 'why did rule 2 fail?', 'how many washers?', ..."""
    from detectors.images import ImageInputError
    from prompts import RulesError

    from .chat import ChatSession

    console = Console()
    try:
        session = ChatSession(agent_factory=lambda: make_agent(config), rules=rules, category=category)
        if ref:
            session.add_references([str(r) for r in ref])
    except (RulesError, ImageInputError) as exc:
        _fail(str(exc))
    rules_note = f"{len(session.rules.rules)} rules for '{session.rules.category}'" if session.rules else "no rules yet"
    console.print(f"[bold]logiscan chat[/] — {rules_note}. Type 'help' for commands, 'quit' to leave.")
    while True:
        try:
            message = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            break
        if message.strip().lower() in ("quit", "exit", "bye", ":q"):
            break
        if not message.strip():
            continue
        reply = session.handle(message)
        if reply.verdict is not None:
            print_verdict(console, reply.verdict)
        else:
            console.print(reply.text, markup=False, highlight=False)


# ------------------------------------------------------------------------------ audit
@app.command()
def audit(
    root: Path = typer.Argument(..., help="an MVTec LOCO category folder or the dataset root"),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="only this category"),
    k: int = typer.Option(4, "--k", help="references drawn from train/good", min=1),
    out: Path = typer.Option(Path("runs/audit"), "--out", "-o", help="folder for predictions, metrics and report"),
    limit: Optional[int] = typer.Option(None, "--limit", help="score at most N test images (in total)", min=1),
    rules: Optional[Path] = typer.Option(None, "--rules", "-r", help="rules file overriding the dataset's own"),
    workers: int = typer.Option(0, "--workers", "-w", min=0,
                                help="perception worker processes (0 = one per core when there are enough images)"),
    config: Optional[Path] = typer.Option(None, "--config", help="AgentConfig YAML/JSON", callback=_check_config),
) -> None:
    """Score every test image of an MVTec LOCO folder; write predictions.jsonl, metrics.json, report.html."""
    from functools import partial

    from prompts import RulesError

    from .audit import AuditError, AuditInterrupted, run_audit

    console = Console()
    try:
        rules_obj = None
        if rules is not None:
            from prompts import load_rules

            rules_obj = load_rules(rules)
        result = run_audit(root, out=out, category=category, k=k, limit=limit, rules=rules_obj, workers=workers,
                           agent_factory=partial(make_agent, config), console=console)
    except (AuditError, RulesError) as exc:
        _fail(str(exc))
    except AuditInterrupted as exc:
        _fail(str(exc), EXIT_INTERRUPTED)
    print_metrics(console, result.metrics)
    console.print(f"scored {result.scored_now} now, {result.resumed} resumed, {result.errors} errors · "
                  f"{result.metrics.timing.get('images_per_second', 0):.2f} images/s")
    console.print(f"wrote {result.predictions}, {result.metrics_path}" + (f", {result.report_path}" if result.report_path else ""))


def print_metrics(console: Console, metrics) -> None:
    table = Table(title="image-level metrics")
    for col in ("category", "images", "errors", "AUROC logical", "AUROC structural", "AUROC mean", "F1-max", "accuracy"):
        table.add_column(col, justify="right" if col != "category" else "left")

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for name, m in sorted(metrics.categories.items()):
        table.add_row(name, str(m.n_images), str(m.n_errors), f(m.auroc_logical), f(m.auroc_structural),
                      f(m.auroc_mean), f(m.f1_max), f(m.accuracy))
    mean = metrics.mean
    table.add_row("[bold]mean[/]", str(metrics.n_images), str(metrics.n_errors), f(mean.get("auroc_logical")),
                  f(mean.get("auroc_structural")), f(mean.get("auroc_mean")), f(mean.get("f1_max")),
                  f(mean.get("accuracy")))
    console.print(table)
    for name, m in sorted(metrics.categories.items()):
        for note in m.notes:
            console.print(f"[yellow]note[/] {name}: {note}")


# ------------------------------------------------------------------------------ synth, demo, serve
@app.command()
def synth(
    out: Path = typer.Argument(..., help="folder to write the synthetic LOCO-layout dataset into"),
    seed: int = typer.Option(0, "--seed"),
    categories: Optional[str] = typer.Option(None, "--categories", help="comma-separated subset"),
    per_split: Optional[int] = typer.Option(None, "--per-split", min=1, help="images per split"),
    scale: float = typer.Option(0.5, "--scale", min=0.05, max=4.0, help="image size relative to LOCO"),
) -> None:
    """Generate a synthetic dataset in MVTec LOCO layout (with masks and rules)."""
    from detectors.data.synth import CATEGORIES, generate_dataset

    chosen = None
    if categories:
        chosen = [c.strip() for c in categories.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in CATEGORIES]
        if unknown:
            _fail(f"unknown synthetic categories {unknown}; choose from {', '.join(CATEGORIES)}")
    kwargs: dict[str, Any] = {"seed": seed, "categories": chosen, "scale": scale}
    if per_split is not None:
        kwargs["per_split"] = per_split
    try:
        summary = generate_dataset(out, **kwargs)
    except ValueError as exc:  # SynthError: bad arguments or an output path that is a file
        _fail(str(exc))
    Console().print_json(json.dumps(summary, default=str))


@app.command()
def demo() -> None:
    """Run the agent on the embedded sample images and show what it finds."""
    from .demo import run_demo

    run_demo(Console())


@app.command()
def serve(
    port: int = typer.Option(7860, "--port", "-p", min=1, max=65535),
    config: Optional[Path] = typer.Option(None, "--config", help="AgentConfig YAML/JSON", callback=_check_config),
) -> None:
    """Start the web chat UI on 127.0.0.1."""
    from functools import partial

    from .web import PortInUseError, serve as serve_web

    try:
        serve_web(port=port, agent_factory=partial(make_agent, config))
    except PortInUseError as exc:
        _fail(str(exc), 1)


if __name__ == "__main__":  # pragma: no cover
    app()

"""Batch logical audits of MVTec LOCO AD data.

``run_audit(root, out=...)`` scores every test image of one category (or every
category under a dataset root) against ``k`` references from ``train/good`` and
writes, into ``out``:

* ``predictions.jsonl``: one :class:`PredictionRecord` per image, appended and
  fsynced as each image finishes, so an interrupted audit resumes where it
  stopped (ids already in the file are skipped);
* ``metrics.json``: :class:`agent.metrics.AuditMetrics` plus timing;
* ``report.html``: see :mod:`agent.report`;
* ``overlays/``: PNG thumbnails for flagged images and misses, used by the report.

References are fitted and the LogiCode program generated once per category, in
the parent process (``Agent.prepare``); each image then only runs
``Agent.run_prepared``. With ``workers > 1`` images are scored in worker processes
that never prepare: the parent ships each category's prepared context to them (the
fitted detectors as files it saved, the program and rules as data), so the fitting
and the language model run once per audit, not once per worker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import multiprocessing as mp
from pydantic import BaseModel, Field

from .metrics import AuditMetrics, ScoredImage, compute_metrics

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
REPORT = "report.html"
OVERLAYS = "overlays"


class AuditError(RuntimeError):
    """The audit cannot start: bad dataset layout, empty split, missing rules. The message says why."""


class AuditPrepareError(RuntimeError):
    """A category could not be prepared; every image of it is recorded with this error."""


class AuditInterrupted(RuntimeError):
    """The audit was stopped (Ctrl-C); ``predictions.jsonl`` is complete up to the last image."""

    def __init__(self, done: int, total: int, predictions: Path):
        self.done, self.total, self.predictions = done, total, predictions
        super().__init__(
            f"Audit interrupted after {done} of {total} images. {predictions} is intact; "
            "run the same command again to resume."
        )


class FindingSummary(BaseModel):
    rule_id: str
    rule_text: str
    expected: Any = None
    observed: Any = None
    explanation: str = ""


class PredictionRecord(BaseModel):
    """One line of ``predictions.jsonl``."""

    image_id: str = Field(description="unique within the audit: category/split/defect_type/stem")
    category: str
    path: str
    label: Optional[str] = Field(default=None, description="'good', 'logical' or 'structural'")
    defect_type: Optional[str] = None
    anomaly_type: Optional[str] = None
    reason: Optional[str] = None
    score: Optional[float] = None
    is_anomalous: Optional[bool] = None
    threshold: Optional[float] = None
    explanation: str = ""
    failed: list[FindingSummary] = Field(default_factory=list)
    n_findings: int = 0
    component_scores: dict[str, float] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    program_sha256: Optional[str] = None
    seconds: float = 0.0
    overlay: Optional[str] = Field(default=None, description="path relative to the audit folder")
    error: Optional[str] = None


# --------------------------------------------------------------------------- dataset side

@dataclass
class AuditTask:
    """One image to score, with everything a worker needs to prepare its category."""

    image_id: str
    category: str
    path: str
    label: Optional[str]
    defect_type: Optional[str]
    anomaly_type: Optional[str]
    reason: Optional[str]


@dataclass
class CategoryPlan:
    category: str
    root: Path
    references: list[str]
    rules: Any  # NormalityRules or None (then the built-in pack for ``category``)
    tasks: list[AuditTask] = field(default_factory=list)


def _as_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def pick_references(paths: list[str], k: int) -> list[str]:
    """``k`` references spread evenly over the sorted ``train/good`` list (deterministic)."""
    paths = sorted(paths)
    if k <= 0:
        raise AuditError(f"--k must be at least 1, got {k}.")
    if k >= len(paths):
        return paths
    step = len(paths) / k
    return [paths[int(i * step)] for i in range(k)]


def _load_datasets(root: Path, category: Optional[str]):
    from detectors.data.loco import LocoDataset, LocoLayoutError

    if not root.exists():
        raise AuditError(f"Audit root '{root}' does not exist.")
    if not root.is_dir():
        raise AuditError(f"Audit root '{root}' is not a folder.")
    try:
        found = LocoDataset.discover(root)
    except LocoLayoutError as exc:
        raise AuditError(f"'{root}' is not in MVTec LOCO layout: {exc}") from exc
    datasets = list(found) if isinstance(found, (list, tuple)) else [found]
    if category is not None:
        wanted = category.strip().lower()
        chosen = [d for d in datasets if str(d.category).lower() == wanted]
        if not chosen:
            names = ", ".join(sorted(str(d.category) for d in datasets)) or "none"
            raise AuditError(f"No category '{category}' under '{root}'. Categories found: {names}.")
        datasets = chosen
    if not datasets:
        raise AuditError(
            f"'{root}' is not in MVTec LOCO layout: expected <category>/train/good and <category>/test/* folders."
        )
    return datasets


def plan_audit(
    root: str | os.PathLike, *, category: Optional[str] = None, k: int = 4, limit: Optional[int] = None,
    rules: Any = None,
) -> list[CategoryPlan]:
    """Find the categories and test images to score, and the references for each category."""
    from prompts import RulesError, load_rules

    root = Path(root)
    plans: list[CategoryPlan] = []
    budget = limit
    for ds in _load_datasets(root, category):
        name = str(ds.category)
        train = [str(it.path) for it in ds.train_good()]
        if not train:
            raise AuditError(f"Category '{name}' has an empty train/good split: no reference images to learn from.")
        tests = list(ds.test())
        if not tests:
            raise AuditError(f"Category '{name}' has an empty test split: nothing to score.")
        try:
            category_rules = load_rules(rules if rules is not None else getattr(ds, "rules", None), category=name)
        except RulesError as exc:
            raise AuditError(f"No usable normality rules for category '{name}': {exc} Pass --rules FILE.") from exc
        plan = CategoryPlan(category=name, root=Path(getattr(ds, "root", root)), references=pick_references(train, k),
                            rules=category_rules)
        ordered = sorted(tests, key=lambda item: str(item.path))

        def folder_of(item) -> str:
            return _as_str(getattr(item, "defect_type", None)) or _as_str(getattr(item, "label", None)) or "test"

        # test/<defect_type>/<stem> is unique in the LOCO layout; where two files share a stem
        # (000.png beside 000.jpg) their ids keep the suffix, so neither is skipped as done
        stems = Counter((folder_of(it), Path(it.path).stem) for it in ordered)
        for it in ordered:
            if budget is not None and budget <= 0:
                break
            label = _as_str(getattr(it, "label", None))
            defect_type = _as_str(getattr(it, "defect_type", None))
            path = Path(it.path)
            unique = stems[(folder_of(it), path.stem)] == 1
            image_id = f"{name}/{folder_of(it)}/{path.stem if unique else path.name}"
            plan.tasks.append(AuditTask(
                image_id=image_id, category=name, path=str(it.path), label=label, defect_type=defect_type,
                anomaly_type=_as_str(getattr(it, "anomaly_type", None)), reason=_as_str(getattr(it, "reason", None)),
            ))
            if budget is not None:
                budget -= 1
        if plan.tasks:
            plans.append(plan)
    return plans


# --------------------------------------------------------------------------- scoring side

def default_agent_factory():
    """The agent every audit uses unless told otherwise (CPU defaults)."""
    from agent import Agent

    return Agent()


def _summarise(verdict) -> dict[str, Any]:
    return dict(
        score=float(verdict.score),
        is_anomalous=bool(verdict.is_anomalous),
        threshold=float(verdict.threshold),
        explanation=verdict.explanation,
        failed=[FindingSummary(rule_id=f.rule_id, rule_text=f.rule_text, expected=f.expected, observed=f.observed,
                               explanation=f.explanation) for f in verdict.failed_findings],
        n_findings=len(verdict.findings),
        component_scores=dict(verdict.component_scores),
        timings=dict(verdict.timings),
        program_sha256=verdict.program.sha256 if verdict.program else None,
    )


class Scorer:
    """Holds one agent and its prepared context per category (one per process).

    A worker's scorer gets ``prepared`` (the parent's contexts, shipped with
    :func:`ship_context`) and ``may_prepare=False``: it scores images and never fits or
    generates anything itself.
    """

    def __init__(self, agent_factory: Callable[[], Any], plans: dict[str, tuple[list[str], Any]], out: Path,
                 overlay_side: int = 320, prepared: Optional[dict[str, "ShippedContext"]] = None,
                 may_prepare: bool = True):
        self.agent_factory = agent_factory
        self.plans = plans
        self.out = out
        self.overlay_side = overlay_side
        self.prepared = dict(prepared or {})
        self.may_prepare = may_prepare
        self._agent = None
        self._contexts: dict[str, Any] = {}
        self._errors: dict[str, str] = {}
        self.prepare_seconds: dict[str, float] = {}

    @property
    def agent(self):
        if self._agent is None:
            self._agent = self.agent_factory()
        return self._agent

    def context(self, category: str):
        if category in self._errors:  # prepare failed once: every image of the category says why
            raise AuditPrepareError(self._errors[category])
        if category not in self._contexts:
            if category in self.prepared:
                self._contexts[category] = self.prepared.pop(category).unpack()
            elif not self.may_prepare:
                raise AuditPrepareError(f"category {category!r} was not prepared by the parent process")
            else:
                references, rules = self.plans[category]
                start = time.perf_counter()
                try:
                    self._contexts[category] = self.agent.prepare(rules=rules, references=references,
                                                                  category=category)
                except Exception as exc:
                    self._errors[category] = f"preparing {category} failed: {type(exc).__name__}: {exc}"
                    raise
                finally:
                    self.prepare_seconds[category] = time.perf_counter() - start
        return self._contexts[category]

    def score(self, task: AuditTask) -> PredictionRecord:
        record = PredictionRecord(
            image_id=task.image_id, category=task.category, path=task.path, label=task.label,
            defect_type=task.defect_type, anomaly_type=task.anomaly_type, reason=task.reason,
        )
        start = time.perf_counter()
        try:
            ctx = self.context(task.category)
            verdict = self.agent.run_prepared(ctx, task.path, name=task.path)
            for key, value in _summarise(verdict).items():
                setattr(record, key, value)
            if verdict.is_anomalous or (task.label not in (None, "good")):
                record.overlay = self._write_overlay(task, verdict)
        except Exception as exc:  # one bad image is recorded and skipped, never fatal
            record.error = f"{type(exc).__name__}: {exc}".strip()
            if not str(exc):
                record.error += " " + traceback.format_exc(limit=2).strip().splitlines()[-1]
        record.seconds = time.perf_counter() - start
        return record

    def _write_overlay(self, task: AuditTask, verdict) -> Optional[str]:
        from PIL import Image

        from .overlay import render_overlay

        try:
            image = render_overlay(
                task.path, verdict, scene=getattr(self.agent, "last_scene", None),
                anomaly_map=getattr(self.agent, "last_anomaly_map", None), max_side=self.overlay_side,
            )
        except Exception:  # an overlay is a nicety; the prediction stands without it
            return None
        rel = Path(OVERLAYS) / (task.image_id.replace("/", "__") + ".png")
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        # a 128-colour palette cuts photographic thumbnails ~5x, keeping report.html small
        image.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(self.out / rel, format="PNG", optimize=True)
        return rel.as_posix()


@dataclass
class ShippedContext:
    """A prepared context in a form that crosses a process boundary cheaply.

    ``agent.core.Context`` holds fitted detectors (with backbone networks) and reference
    images: those travel as the files the parent saved (``parser``, ``structural``, ``layout``) and
    the reference paths, the rest (rules, program, reference scenes, notes) as data. Any
    other agent's context (e.g. a test double's) travels as it is.
    """

    context: Any
    parser: Optional[str] = None
    structural: Optional[str] = None
    layout: Optional[str] = None
    references: list[str] = field(default_factory=list)

    def unpack(self) -> Any:
        from agent.core import Context

        if not isinstance(self.context, Context):
            return self.context
        from detectors import LayoutDetector, PatchCore, SceneParser
        from detectors.images import load_image

        from .core import MAX_INPUT_SIDE

        return dataclasses.replace(
            self.context,
            parser=SceneParser.load(self.parser) if self.parser else None,
            structural=PatchCore.load(self.structural) if self.structural else None,
            layout=LayoutDetector.load(self.layout) if self.layout else None,
            # only agentic mode shows the references to the model; they load from the paths
            reference_images=[] if self.context.zero_shot
            else [load_image(r, max_side=MAX_INPUT_SIDE) for r in self.references],
        )


def ship_context(ctx: Any, references: list[str], folder: Path) -> ShippedContext:
    """Pack ``ctx`` for worker processes, saving its fitted detectors under ``folder``."""
    from agent.core import Context

    if not isinstance(ctx, Context):
        return ShippedContext(context=ctx)
    folder.mkdir(parents=True, exist_ok=True)
    parser_path = structural_path = layout_path = None
    if ctx.parser is not None:
        parser_path = folder / "parser.json"
        ctx.parser.save(parser_path)
    if ctx.structural is not None:
        structural_path = folder / "structural"
        ctx.structural.save(structural_path)
    if ctx.layout is not None:
        layout_path = folder / "layout"
        ctx.layout.save(layout_path)
    light = dataclasses.replace(ctx, parser=None, structural=None, layout=None, reference_images=[])
    return ShippedContext(context=light, parser=_as_str(parser_path), structural=_as_str(structural_path),
                          layout=_as_str(layout_path), references=list(references))


_WORKER: Optional[Scorer] = None


def _worker_init(agent_factory, plans, out, overlay_side, prepared):
    global _WORKER
    # N workers on N cores: one intra-op thread each, no oversubscription. The variables
    # reach torch if it is imported later; set_num_threads covers an already imported one.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORKER = Scorer(agent_factory, plans, Path(out), overlay_side, prepared=prepared, may_prepare=False)


def _worker_score(task: AuditTask) -> PredictionRecord:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.score(task)


# --------------------------------------------------------------------------- predictions file

def read_predictions(path: str | os.PathLike) -> list[PredictionRecord]:
    """Every complete record in ``path``; a torn last line (hard kill mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(PredictionRecord.model_validate_json(line))
        except ValueError:
            continue
    return records


def _resumable_settings(path: Path, settings: dict, *, resuming: bool) -> dict:
    """The settings to record in ``audit.json``. When resuming, the earlier run's predictions
    must come from the same dataset root, references and rules, or the metrics would mix two
    setups: a difference is an error, never a silent merge. Categories the earlier run scored
    and this one does not (``--category``) stay recorded."""
    if not resuming or not path.is_file():
        return settings
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return settings
    where = f"The predictions in '{path.parent}'"
    fix = "Use another --out folder, or delete that one to start again."
    if before.get("root") != settings["root"]:
        raise AuditError(f"{where} are of the dataset '{before.get('root')}', not '{settings['root']}'. {fix}")
    for name, now in settings["categories"].items():
        then = (before.get("categories") or {}).get(name)
        if then is None:
            continue
        for what in ("references", "rules"):
            if then.get(what) != now[what]:
                raise AuditError(f"{where} were scored with other {what} for '{name}' (an earlier --k or "
                                 f"--rules). {fix}")
    return {**settings, "categories": {**(before.get("categories") or {}), **settings["categories"]}}


class PredictionWriter:
    """Appends one JSON line per record, flushed and fsynced so that a crash loses at most one image."""

    def __init__(self, path: Path):
        self.path = path
        self._repair_torn_tail()
        self._fh = open(path, "a", encoding="utf-8")

    def _repair_torn_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            try:
                # a whole record that only lacks its newline (a file edited or joined by hand) is
                # kept: read_predictions counts it as done, so cutting it would lose it for good
                PredictionRecord.model_validate_json(data[cut:])
            except ValueError:
                # a torn record: keep whole lines only; that image is re-scored on resume
                with open(self.path, "r+b") as fh:
                    fh.truncate(cut)
            else:
                with open(self.path, "ab") as fh:
                    fh.write(b"\n")

    def write(self, record: PredictionRecord) -> None:
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# --------------------------------------------------------------------------- the audit

class AuditResult(BaseModel):
    out: str
    predictions: str
    metrics_path: str
    report_path: Optional[str]
    metrics: AuditMetrics
    scored_now: int
    resumed: int
    errors: int


def _iter_results(tasks: list[AuditTask], scorer_factory, workers: int, agent_factory, plans, out, overlay_side
                  ) -> Iterator[PredictionRecord]:
    scorer = scorer_factory()
    if workers <= 1:
        for task in tasks:
            yield scorer.score(task)
        return
    # Prepare every category once, here, before any worker starts: workers only score images.
    staging = Path(tempfile.mkdtemp(prefix="logiscan-audit-"))
    prepared: dict[str, ShippedContext] = {}
    in_parent: set[str] = set()
    try:
        for category in dict.fromkeys(t.category for t in tasks):
            try:
                ctx = scorer.context(category)
                prepared[category] = ship_context(ctx, plans[category][0], staging / _safe_name(category))
            except Exception:
                # Preparing failed (each of the category's images records why, as in one
                # process), or the context could not be packed: the parent scores those images.
                in_parent.add(category)
        yield from (scorer.score(t) for t in tasks if t.category in in_parent)
        todo = [t for t in tasks if t.category not in in_parent]
        if todo:
            yield from _score_in_workers(todo, workers, agent_factory, plans, out, overlay_side, prepared)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe_name(category: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in category) or "category"


def _score_in_workers(tasks: list[AuditTask], workers: int, agent_factory, plans, out, overlay_side,
                      prepared: dict[str, ShippedContext]) -> Iterator[PredictionRecord]:
    # spawn, not fork: the parent may already hold torch threads, which fork does not survive
    context = mp.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                   initargs=(agent_factory, plans, str(out), overlay_side, prepared))
    pending: set[Future] = set()
    queue = iter(tasks)
    try:
        # a bounded window keeps memory flat and lets Ctrl-C stop promptly
        for task in queue:
            pending.add(executor.submit(_worker_score, task))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(executor.submit(_worker_score, nxt))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


#: below this many images, spawning workers (each loads the models) costs more than it saves
MIN_IMAGES_PER_WORKER = 20


def auto_workers(n_images: int) -> int:
    """Worker processes for ``n_images``: one per core (at most 4, each holds its own models).

    Measured on 2 shared cores (benchmarks/bench_audit.py): 2 workers 0.92 img/s vs 1 process 0.73.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 4, n_images // MIN_IMAGES_PER_WORKER))


def run_audit(
    root: str | os.PathLike,
    *,
    out: str | os.PathLike = "audit",
    category: Optional[str] = None,
    k: int = 4,
    limit: Optional[int] = None,
    rules: Any = None,
    workers: Optional[int] = None,
    agent_factory: Callable[[], Any] = default_agent_factory,
    report: bool = True,
    console=None,
    progress: bool = True,
    overlay_side: int = 320,
) -> AuditResult:
    """Score the test images under ``root`` and write predictions, metrics and the report to ``out``."""
    plans = plan_audit(root, category=category, k=k, limit=limit, rules=rules)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / PREDICTIONS
    previous = read_predictions(pred_path)
    done_ids = {r.image_id for r in previous}
    all_tasks = [t for p in plans for t in p.tasks]
    todo = [t for t in all_tasks if t.image_id not in done_ids]
    plan_map = {p.category: (p.references, p.rules) for p in plans}
    workers = auto_workers(len(todo)) if not workers else workers
    settings = json.loads(json.dumps({
        "root": str(Path(root).resolve()), "k": k, "limit": limit,
        "categories": {p.category: {"references": p.references, "rules": p.rules.model_dump(mode="json")} for p in plans},
    }, default=str))
    settings = _resumable_settings(out / "audit.json", settings, resuming=bool(previous))
    (out / "audit.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")

    scorer_holder: list[Scorer] = []

    def scorer_factory() -> Scorer:
        scorer = Scorer(agent_factory, plan_map, out, overlay_side)
        scorer_holder.append(scorer)
        return scorer

    writer = PredictionWriter(pred_path)
    start = time.perf_counter()
    scored_now = 0
    bar = None
    if progress:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        bar = Progress(TextColumn("[bold]audit[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
    try:
        if bar is not None:
            bar.start()
            task_id = bar.add_task("audit", total=len(all_tasks), completed=len(all_tasks) - len(todo), rate="")
        for record in _iter_results(todo, scorer_factory, workers, agent_factory, plan_map, out, overlay_side):
            writer.write(record)
            scored_now += 1
            if bar is not None:
                rate = scored_now / max(time.perf_counter() - start, 1e-9)
                bar.update(task_id, advance=1, rate=f"{rate:.2f} img/s")
    except KeyboardInterrupt:
        raise AuditInterrupted(len(previous) + scored_now, len(all_tasks), pred_path) from None
    finally:
        writer.close()
        if bar is not None:
            bar.stop()
    wall = time.perf_counter() - start

    records = [r for r in read_predictions(pred_path) if r.image_id in {t.image_id for t in all_tasks}]
    timing = _timing(records, wall, scored_now, scorer_holder[0].prepare_seconds if scorer_holder else {}, workers)
    metrics = metrics_from_records(records, timing=timing)
    metrics_path = out / METRICS
    metrics_path.write_text(metrics.model_dump_json(indent=2), encoding="utf-8")
    report_path = None
    if report:
        from .report import write_report

        report_path = write_report(out, records, metrics)
    return AuditResult(
        out=str(out), predictions=str(pred_path), metrics_path=str(metrics_path),
        report_path=str(report_path) if report_path else None, metrics=metrics, scored_now=scored_now,
        resumed=len(previous), errors=sum(1 for r in records if r.error),
    )


def metrics_from_records(records: Iterable[PredictionRecord], timing: dict[str, float] | None = None) -> AuditMetrics:
    scored, errors = [], {}
    for r in records:
        if r.error or r.score is None or r.label is None:
            errors[r.category] = errors.get(r.category, 0) + (1 if r.error else 0)
            continue
        scored.append(ScoredImage(label=r.label, score=r.score, is_anomalous=bool(r.is_anomalous),
                                  anomaly_type=r.anomaly_type or (r.defect_type if r.label != "good" else None),
                                  category=r.category))
    return compute_metrics(scored, errors_per_category=errors, timing=timing)


def _timing(records: list[PredictionRecord], wall: float, scored_now: int, prepare: dict[str, float],
            workers: int) -> dict[str, float]:
    ok = [r for r in records if not r.error]
    timing: dict[str, float] = {
        "wall_seconds_this_run": round(wall, 3),
        "images_scored_this_run": float(scored_now),
        "images_per_second": round(scored_now / wall, 3) if wall > 0 and scored_now else 0.0,
        "workers": float(workers),
    }
    if ok:
        timing["mean_seconds_per_image"] = round(sum(r.seconds for r in ok) / len(ok), 4)
        stages: dict[str, list[float]] = {}
        for r in ok:
            for stage, seconds in r.timings.items():
                stages.setdefault(stage, []).append(seconds)
        for stage, values in sorted(stages.items()):
            timing[f"mean_{stage}_seconds"] = round(sum(values) / len(values), 4)
    for cat, seconds in prepare.items():
        timing[f"prepare_seconds[{cat}]"] = round(seconds, 3)
    return timing

"""The agent: perceive, check the rules with a cached LogiCode program, fuse, explain.

``Agent.run`` is the one-call entry point. Batch users call ``prepare`` once per rule
set and reference set (it fits the detectors and writes the program) and then
``run_prepared`` per image: that is the hot path, and it loads nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from detectors.images import ImageInput, load_image, slight_variants
from prompts.rules import NormalityRules, RulesInput, load_rules

from .config import AgentConfig
from .evidence import LayoutPeak, linked_rule_findings, part_words
from .fusion import RULE_SOURCES, explain, fuse
from .logicode import (MODEL_FAILURE, LogiCodeGenerator, LogiCodeProgram, ProgramCache, assemble, program_key,
                        validate_pinned)
from .schema import Finding, ProgramInfo, Region, Verdict
from .text import EXPLANATION_CHARS, REASON_CHARS, clip

log = logging.getLogger(__name__)

#: perception works on images no larger than this (long side); geometry is reported at full size
MAX_INPUT_SIDE = 4096
#: prepared (rules, references) contexts kept in memory, least recently used dropped first
MAX_CONTEXTS = 8
#: a rule set whose program generation failed (the model could not load, timed out, errored) is
#: generated again when it is next prepared this long after: a long-lived agent (chat, web) gets
#: its logic checks back once the model works, and a batch over thousands of images does not
#: wait for a failing model on every image
PROGRAM_RETRY_S = 300.0
#: what a verdict without references says about its checks
ZERO_SHOT_NOTE = ("Zero-shot mode (no normal references): the checks read parts learned from this image alone and "
                  "could not be validated on a normal image, so a part the parse splits or merges changes their result.")
#: what an advisory finding adds to its explanation (see ``agent.logicode``: it passed the
#: references, not their slightly altered copies)
ADVISORY_NOTE = ("an advisory check: it misfired on slightly altered copies of the normal references, "
                 "so it names the rule but does not decide the verdict")


def image_digest(image) -> str:
    """A hash of every pixel: part of the cache key of fitted detectors and programs, so two
    reference sets that differ anywhere (even in one row) never share them. About 10 ms for a
    full-resolution LOCO image."""
    arr = np.asarray(image)
    h = hashlib.sha256(f"{arr.shape}{arr.dtype}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Context:
    """Everything fitted for one rule set and reference set; reused for every image."""

    rules: NormalityRules
    refset_hash: str
    parser: Any
    structural: Any = None
    layout: Any = None
    reference_scenes: list[dict] = field(default_factory=list)
    program: Optional[LogiCodeProgram] = None
    program_path: Optional[Path] = None
    logic_note: str = ""
    #: time.monotonic() after which a failed program generation is tried again (None: no retry)
    retry_program_at: Optional[float] = None
    zero_shot: bool = False
    reference_images: list = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _unavailable_reasons(program: LogiCodeProgram) -> str:
    """Why each rule has no check, one clause per distinct reason. Rules that failed for the same
    reason share a clause: when the model itself cannot run, every rule fails with one message,
    and that message (which says how to install or reach the model) is given once, clipped at four
    times the usual length rather than repeated and clipped once per rule."""
    attempts = {f.rule_id: f.attempts for f in program.functions}
    by_reason: dict[str, list[str]] = {}
    for rid, why in program.unavailable.items():
        by_reason.setdefault(why, []).append(rid)
    clauses = []
    for why, rids in by_reason.items():
        # a model failure's fix comes last; a generous bound still keeps a server's error page out
        text = clip(why, 4 * REASON_CHARS if why.startswith(MODEL_FAILURE) else REASON_CHARS)
        if len(rids) == 1:
            clauses.append(f"{rids[0]} after {attempts.get(rids[0], 0)} attempt(s): {text}")
        else:
            clauses.append(f"{', '.join(rids)}: {text}")
    return "; ".join(clauses)


class Agent:
    """Logical anomaly inspection with a language model, detectors and a sandbox.

    >>> agent = Agent()
    >>> verdict = agent.run("img.png", category="screw_bag", references=["ref1.png", "ref2.png"])
    """

    def __init__(self, config: AgentConfig | dict | None = None, *, chat_model: Any = None,
                 model_id: Optional[str] = None):
        """``chat_model`` injects an already-built LangChain chat model; give its ``model_id``
        too, since the id is part of the program cache key."""
        if isinstance(config, dict):
            config = AgentConfig.model_validate(config)
        self.config = config or AgentConfig()
        self._chat_model = chat_model
        self._model_id = model_id
        self._lock = threading.RLock()
        self._contexts: OrderedDict[str, Context] = OrderedDict()
        self._programs = ProgramCache(self.config.cache_dir / "programs" if self.config.use_disk_cache else None)
        self.last_verdict: Optional[Verdict] = None
        self.last_scene = None
        self.last_anomaly_map: Optional[np.ndarray] = None
        self.last_context: Optional[Context] = None

    # -- models -------------------------------------------------------------------------
    @property
    def llm_config(self):
        """The backend configuration; its ``timeout_s`` is the agent's ``generation_timeout_s``
        (one budget per model call, enforced by the backend and by ``invoke_with_timeout``)."""
        from agent.llm import LLMConfig

        return LLMConfig(**(self.config.llm or {}), timeout_s=self.config.generation_timeout_s)

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            from agent.llm import model_id

            self._model_id = model_id(self.llm_config)
        return self._model_id

    @property
    def chat_model(self):
        """The LangChain chat model, loaded once, lazily."""
        with self._lock:
            if self._chat_model is None:
                from agent.llm import make_chat_model

                self._chat_model = make_chat_model(self.llm_config)
            return self._chat_model

    def _chat(self, messages: list, attempt: int = 0, timeout_s: Optional[float] = None) -> str:
        """Greedy on the first attempt; sampled (reproducibly seeded) on repairs, because a
        greedy model given the same mistake tends to repeat it word for word. ``timeout_s``
        (the rest of a generation budget) shortens this call's time limit; the backend itself
        stops then, so the model is free at once."""
        from agent.llm import LLMError, invoke_with_timeout

        limit = self.config.generation_timeout_s if timeout_s is None \
            else min(timeout_s, self.config.generation_timeout_s)
        if attempt == 0:
            return invoke_with_timeout(self.chat_model, messages, limit)
        try:
            return invoke_with_timeout(self.chat_model, messages, limit, temperature=0.7, seed=attempt)
        except LLMError as exc:
            if "unsupported generation options" not in str(exc):
                raise
            return invoke_with_timeout(self.chat_model, messages, limit)

    # -- preparation ----------------------------------------------------------------------
    def prepare(
        self,
        rules: RulesInput = None,
        references: Optional[Sequence[ImageInput]] = None,
        category: Optional[str] = None,
        class_context: Optional[str] = None,
    ) -> Context:
        """Fit the detectors on the references and get (cached or new) LogiCode for the rules."""
        rules = load_rules(rules, category=category, class_context=class_context)
        ref_images = [load_image(r, max_side=MAX_INPUT_SIDE) for r in (references or [])]
        if not ref_images:
            raise ValueError(
                "prepare() needs at least one normal reference image; run() without references "
                "uses the zero-shot mode instead."
            )
        return self._prepare(rules, ref_images, zero_shot=False)

    def _prepare(self, rules: NormalityRules, ref_images: list, *, zero_shot: bool) -> Context:
        refset_hash = hashlib.sha256("".join(image_digest(im) for im in ref_images).encode()).hexdigest()[:16]
        key = f"{rules.digest()}:{refset_hash}:{zero_shot}"
        with self._lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                ctx = self._contexts[key]
                if ctx.retry_program_at is not None and time.monotonic() >= ctx.retry_program_at:
                    ctx.retry_program_at, ctx.logic_note, ctx.program = None, "", None
                    t0 = time.perf_counter()
                    self._attach_program(ctx)
                    ctx.timings["program"] = time.perf_counter() - t0
                return ctx
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            parser, structural, layout = self._fit_perception(ref_images, refset_hash, zero_shot=zero_shot)
            timings["fit_perception"] = time.perf_counter() - t0
            ctx = Context(
                rules=rules,
                refset_hash=refset_hash,
                parser=parser,
                structural=structural,
                layout=layout,
                # In zero-shot mode the only "reference" is the query itself: nothing to compare with.
                reference_scenes=[] if zero_shot else [s.model_dump(mode="json") for s in parser.reference_scenes],
                zero_shot=zero_shot,
                reference_images=[] if zero_shot else ref_images,
                timings=timings,
            )
            t0 = time.perf_counter()
            self._attach_program(ctx)
            timings["program"] = time.perf_counter() - t0
            self._contexts[key] = ctx
            while len(self._contexts) > MAX_CONTEXTS:  # each holds fitted detectors: bound the memory
                self._contexts.popitem(last=False)
            return ctx

    def _fit_perception(self, ref_images: list, refset_hash: str, *, zero_shot: bool):
        """The fitted (parser, structural, layout) detectors, from the disk cache when it holds them.

        In zero-shot mode the only "reference" is the query itself, so only the parser is fitted:
        a detector that compares the image with its references would compare it with itself.
        """
        from detectors import LayoutDetector, PatchCore, SceneParser

        pc = self.config.perception
        paths = self.fitted_paths(refset_hash)
        wanted = {"parser": True, "structural": pc.structural and not zero_shot, "layout": pc.layout and not zero_shot}
        loaders = {"parser": SceneParser.load, "structural": PatchCore.load, "layout": LayoutDetector.load}
        fitted: dict[str, Any] = {}
        for name, loader in loaders.items():
            if wanted[name] and self.config.use_disk_cache and paths[name].exists():
                try:
                    fitted[name] = loader(paths[name])
                except Exception as exc:  # a stale or corrupt cache entry is refitted, never fatal
                    log.warning("refitting: cached %s detector %s unusable (%s)", name, paths[name], exc)
        if "parser" not in fitted:
            parser = SceneParser(**pc.parser_kwargs()).fit(ref_images)
            if pc.part_names:
                parser.set_part_names(pc.part_names)
            fitted["parser"] = parser
            self._save_fitted(parser, paths["parser"])
        if wanted["structural"] and "structural" not in fitted:
            fitted["structural"] = PatchCore(**pc.patchcore_kwargs()).fit(ref_images)
            self._save_fitted(fitted["structural"], paths["structural"])
        if wanted["layout"] and "layout" not in fitted:
            fitted["layout"] = LayoutDetector(**pc.layout_kwargs()).fit(ref_images)
            self._save_fitted(fitted["layout"], paths["layout"])
        return fitted["parser"], fitted.get("structural"), fitted.get("layout")

    def _save_fitted(self, detector: Any, path: Path) -> None:
        if self.config.use_disk_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            detector.save(path)

    def fitted_paths(self, refset_hash: str) -> dict[str, Path]:
        """Where the fitted detectors for a reference set are cached: ``parser``,
        ``structural`` and ``layout``.

        Each name carries a digest of every setting that changes the fit (backbone, the
        detector's effective arguments, defaults included, and the part names), so changing a
        perception parameter, in the config or in a detector's defaults, never reuses a stale fit.
        Each detector has its own key: a PatchCore setting does not refit the parser.
        """
        from detectors import LayoutDetector, PatchCore, SceneParser

        pc = self.config.perception
        parser_params = _effective_params(SceneParser, pc.parser_kwargs(), skip=("labeler", "part_hints"))
        parser_params["part_names"] = dict(sorted(pc.part_names.items()))
        # Unfitted detectors are cheap (their backbone loads lazily) and resolve the
        # backbone-dependent defaults (layers, grid layer) that the signature cannot show.
        structural_params = PatchCore(**pc.patchcore_kwargs()).get_params()
        layout_params = LayoutDetector(**pc.layout_kwargs()).get_params()
        fitted_dir = self.config.cache_dir / "fitted" / f"{pc.backbone}-{refset_hash}"
        return {"parser": fitted_dir / f"parser-{_digest(parser_params)}.json",
                "structural": fitted_dir / f"structural-{_digest(structural_params)}",
                "layout": fitted_dir / f"layout-{_digest(layout_params)}"}

    def _attach_program(self, ctx: Context) -> None:
        import sandbox

        started = time.perf_counter()
        if self.config.pinned_program is not None:
            path = Path(self.config.pinned_program)
            source = path.read_text(encoding="utf-8")
            problems = validate_pinned(
                source, run=self._run_sandboxed, check_source=sandbox.check_source,
                reference_scenes=ctx.reference_scenes,
            )
            ctx.program = LogiCodeProgram(
                key="pinned-" + hashlib.sha256(source.encode()).hexdigest()[:16], category=ctx.rules.category,
                model_id="user", origin="pinned", functions=[], source=source,
            )
            ctx.program_path = path
            if problems:
                ctx.logic_note = "The pinned program has problems on the references: " + "; ".join(problems[:3])
            return

        parts_table = ctx.parser.describe_parts()
        try:
            model_id = self.model_id
        except Exception as exc:
            ctx.logic_note = f"Logic check unavailable: no language model ({exc})."
            ctx.retry_program_at = time.monotonic() + PROGRAM_RETRY_S
            return
        key = program_key(ctx.rules, ctx.refset_hash + ("-zs" if ctx.zero_shot else ""), sandbox.API_VERSION,
                          model_id, parts_table)
        program = self._programs.get(key)
        generator = LogiCodeGenerator(
            self._chat,
            run=self._run_sandboxed,
            check_source=sandbox.check_source,
            api_reference=sandbox.SCENE_API_REFERENCE,
            repair_rounds=self.config.repair_rounds,
            budget_s=self.config.generation_budget_s,
            ground_rules=self.config.link_evidence_to_rules,
        )
        if program is None:
            try:
                variants = None if ctx.zero_shot else self._variant_scenes(ctx)
                if generator.budget_s is not None:
                    # the budget covers the whole wait for a program: the parses of the references'
                    # altered copies too (1.0 and 2.8 s on two synthetic categories), which used to
                    # run before its clock started
                    generator.budget_s = max(0.0, generator.budget_s - (time.perf_counter() - started))
                program = generator.generate(
                    ctx.rules, parts_table=parts_table, reference_scenes=ctx.reference_scenes,
                    key=key, model_id=model_id,
                    validation_scenes=(
                        [s.model_dump(mode="json") for s in ctx.parser.reference_scenes] if ctx.zero_shot else None
                    ),
                    variant_scenes=variants,
                )
            except Exception as exc:  # e.g. the model cannot be loaded
                log.warning("LogiCode generation failed: %s", exc)
                ctx.logic_note = f"Logic check unavailable: program generation failed ({exc})."
                ctx.retry_program_at = time.monotonic() + PROGRAM_RETRY_S
                return
            if program.model_failed:
                log.warning("not caching the LogiCode program: the model failed on some rules")
                ctx.retry_program_at = time.monotonic() + PROGRAM_RETRY_S
            else:
                self._programs.put(program)
        else:
            if program.rule_parts is None and self.config.link_evidence_to_rules:  # not grounded yet
                program.rule_parts = generator.ground(ctx.rules, parts_table=parts_table,
                                                      part_ids=ctx.parser.part_ids())
                self._programs.put(program)
            program = program.model_copy(update={"origin": "cached"})
        ctx.program = program
        ctx.program_path = self._programs.path_of(key)
        if program.unavailable:
            reasons = _unavailable_reasons(program)
            budget = " Generation stopped when its time budget was spent." if program.budget_spent else ""
            cover = ("in zero-shot mode no detector stands in for them (there are no references to fit one on)"
                     if ctx.zero_shot else "the detectors (structural, layout, composition) cover them")
            ctx.logic_note = (
                f"Logic check unavailable for rule(s) {', '.join(program.unavailable)} "
                f"({reasons}); {cover}.{budget}"
            )
            if program.advisory_rule_ids:
                ctx.logic_note += (f" Rule(s) {', '.join(program.advisory_rule_ids)} keep their unstable check as "
                                   "advisory: it names the rule in an anomalous verdict, never decides one.")
        if ctx.zero_shot and program.checked_rule_ids:
            ctx.logic_note = f"{ZERO_SHOT_NOTE} {ctx.logic_note}".strip()

    @staticmethod
    def _variant_scenes(ctx: Context) -> list[tuple[int, dict]]:
        """Parses of slightly altered copies of each reference, where checks must pass too
        (only while a program is generated: a few parses per reference)."""
        return [(i, ctx.parser.parse(variant).model_dump(mode="json"))
                for i, image in enumerate(ctx.reference_images) for variant in slight_variants(image)]

    def _run_sandboxed(self, source: str, entrypoint: str, args: dict):
        from sandbox import run_program

        return run_program(
            source, entrypoint, args,
            timeout_s=self.config.program_timeout_s, memory_mb=self.config.program_memory_mb,
        )

    # -- inspection -----------------------------------------------------------------------
    def run(
        self,
        image: ImageInput,
        rules: RulesInput = None,
        references: Optional[Sequence[ImageInput]] = None,
        category: Optional[str] = None,
        class_context: Optional[str] = None,
    ) -> Verdict:
        """Inspect one image against the rules; returns a :class:`Verdict`."""
        rules_obj = load_rules(rules, category=category, class_context=class_context)
        img = load_image(image, max_side=MAX_INPUT_SIDE)
        if references:
            ctx = self._prepare(rules_obj, [load_image(r, max_side=MAX_INPUT_SIDE) for r in references], zero_shot=False)
        else:
            # Zero-shot: the parts are learned from the image itself, and only what the
            # rules state explicitly can be checked.
            ctx = self._prepare(rules_obj, [img], zero_shot=True)
        return self.run_prepared(ctx, img, name=image if isinstance(image, (str, Path)) else None)

    def run_prepared(self, ctx: Context, image: ImageInput, *, name: Any = None) -> Verdict:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        img = load_image(image, max_side=MAX_INPUT_SIDE)
        timings["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        structural_result = ctx.structural.score(img) if ctx.structural is not None else None
        timings["structural"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        layout_result = ctx.layout.score(img) if ctx.layout is not None else None
        timings["layout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scene = ctx.parser.parse(img)
        composition = None if ctx.zero_shot else float(ctx.parser.composition_score(scene))
        timings["parse"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        trace: list = []
        if self.config.mode == "agentic":
            findings, trace, logic_note = self._agentic_findings(ctx, img, scene, structural_result, composition,
                                                                 layout_result)
            if not findings:  # the model gave nothing usable: the validated program still stands
                findings, pipeline_note = self._logic_findings(ctx, scene)
                logic_note = " ".join(n for n in (logic_note, pipeline_note) if n)
        else:
            findings, logic_note = self._logic_findings(ctx, scene)
        timings["logic"] = time.perf_counter() - t0

        advisory = [f for f in findings if f.source == "advisory"]
        findings = [f for f in findings if f.source != "advisory"]
        structural = structural_result.score if structural_result is not None else None
        layout = layout_result.score if layout_result is not None else None
        score, components = fuse(findings, structural=structural, composition=composition, layout=layout,
                                 config=self.config.fusion)
        threshold = self.config.fusion.threshold
        is_anomalous = score >= threshold
        # an advisory check names its rule when the verdict is anomalous; it never makes it so
        linked = [f for f in advisory if not f.passed and f.observed is not None] if is_anomalous else []
        composition_notes = self._composition_notes(ctx, scene) if composition is not None else []
        peak = LayoutPeak.locate(layout_result.peak_xy, scene, ctx.parser.reference_scenes) \
            if layout_result is not None and layout_result.peak_xy else None
        layout_note = peak.sentence(scene) if peak is not None else None
        if (is_anomalous and self.config.link_evidence_to_rules and ctx.program is not None
                and ctx.program.rule_parts):
            linked += linked_rule_findings(
                ctx.rules, ctx.program.rule_parts, scene=scene,
                judged={f.rule_id for f in findings if f.source in RULE_SOURCES} | {f.rule_id for f in linked},
                deviations=ctx.parser.composition_report(scene) if composition is not None
                and composition >= threshold else [],
                layout_peak=peak if layout is not None and layout >= threshold else None,
            )
        findings += self._evidence_findings(structural_result, composition, composition_notes, threshold)
        if layout_result is not None:
            findings.append(self._layout_finding(layout_result, layout_note, threshold))
        findings += linked
        verdict = Verdict(
            score=score,
            is_anomalous=is_anomalous,
            threshold=threshold,
            findings=findings,
            explanation=explain(
                [f for f in findings if f.source in RULE_SOURCES], score=score, is_anomalous=is_anomalous,
                threshold=threshold, components=components, logic_note=logic_note,
                composition_notes=composition_notes, layout_peak=layout_note, linked=linked,
            ),
            category=ctx.rules.category,
            image=str(name) if name is not None else None,
            logic_available=any(f.source in RULE_SOURCES for f in findings),
            logic_note=logic_note,
            component_scores=components,
            anomaly_peak_xy=structural_result.peak_xy if structural_result is not None else None,
            program=self._program_info(ctx),
            timings=timings,
            models=self._models_used(ctx),
            tool_trace=trace,
        )
        self.last_verdict, self.last_scene, self.last_context = verdict, scene, ctx
        self.last_anomaly_map = structural_result.anomaly_map if structural_result is not None else None
        return verdict

    def _logic_findings(self, ctx: Context, scene) -> tuple[list[Finding], str]:
        note = ctx.logic_note
        if ctx.program is None or not (ctx.program.checked_rule_ids or ctx.program.advisory_rule_ids
                                       or ctx.program.origin == "pinned"):
            return [], note or "Logic check unavailable: no rule could be turned into a validated program."
        res = self._run_sandboxed(
            ctx.program.source, "check",
            {"scene": scene.model_dump(mode="json"), "references": ctx.reference_scenes},
        )
        if not res.ok:
            return [], f"Logic check unavailable for this image: the program failed ({res.error_kind}: {res.error})."
        rules_by_id = {r.id: r for r in ctx.rules.rules}
        findings = []
        for item in res.value if isinstance(res.value, list) else []:
            if not isinstance(item, dict) or str(item.get("rule_id")) not in rules_by_id:
                continue
            rule = rules_by_id[str(item["rule_id"])]
            advisory = item.get("advisory") is True
            explanation = clip(item.get("explanation") or "", EXPLANATION_CHARS)
            if advisory:
                explanation = "; ".join(x for x in (explanation, ADVISORY_NOTE) if x)
            findings.append(
                Finding(
                    rule_id=rule.id,
                    rule_text=rule.text,
                    passed=item.get("passed") is True,
                    expected=item.get("expected"),
                    observed=item.get("observed"),
                    explanation=explanation,
                    # A check that crashed on this image says something is off, not what.
                    confidence=0.5 if item.get("error") or advisory else 1.0,
                    evidence=_regions(item.get("evidence")),
                    source="advisory" if advisory else "logicode",
                )
            )
        return findings, note

    def _agentic_findings(self, ctx: Context, img, scene, structural_result, composition, layout_result=None):
        from prompts.multimodal import build_inspection_messages

        from .agentic import build_tools, run_agentic

        tools = build_tools(scene=scene, ctx=ctx, structural_result=structural_result,
                            composition=composition, run_program=self._run_sandboxed, layout_result=layout_result)
        messages = build_inspection_messages(
            ctx.rules, img, ctx.reference_images, scene_text=scene,
            reference_scene_text=ctx.parser.describe_parts(), mode="images",
        )
        return run_agentic(self.chat_model, messages, tools, ctx.rules, timeout_s=self.config.generation_timeout_s)

    @staticmethod
    def _composition_notes(ctx: Context, scene) -> list[str]:
        report = getattr(ctx.parser, "composition_report", None)
        if report is None:
            return []
        return [row.sentence(part_words(scene, row.part)) if hasattr(row, "sentence") else str(row)
                for row in report(scene)[:3]]

    @staticmethod
    def _evidence_findings(structural_result, composition, composition_notes, threshold) -> list[Finding]:
        out = []
        if structural_result is not None:
            x, y = structural_result.peak_xy or (0, 0)
            out.append(
                Finding(
                    rule_id="structural", rule_text="No local defect (scratch, contamination, damage).",
                    passed=structural_result.score < threshold, expected=f"< {threshold:.2f}",
                    observed=round(structural_result.score, 3),
                    explanation=f"structural anomaly score, peak at ({x}, {y})",
                    confidence=1.0, source="structural",
                    evidence=[Region(bbox=(max(0, x - 32), max(0, y - 32), x + 32, y + 32), label="peak")]
                    if structural_result.peak_xy else [],
                )
            )
        if composition is not None:
            out.append(
                Finding(
                    rule_id="composition", rule_text="The mix of parts matches the references.",
                    passed=composition < threshold, expected=f"< {threshold:.2f}", observed=round(composition, 3),
                    explanation=clip("; ".join(composition_notes[:2]), EXPLANATION_CHARS)
                    or "rules-free composition score",
                    confidence=1.0, source="composition",
                )
            )
        return out

    @staticmethod
    def _layout_finding(result, note: Optional[str], threshold: float) -> Finding:
        x, y = result.peak_xy or (0, 0)
        return Finding(
            rule_id="layout", rule_text="Every region looks like the same region of the references.",
            passed=result.score < threshold, expected=f"< {threshold:.2f}", observed=round(result.score, 3),
            explanation=clip(note or "layout score", EXPLANATION_CHARS), confidence=1.0, source="layout",
            evidence=[Region(bbox=(max(0, x - 48), max(0, y - 48), x + 48, y + 48), label="layout peak")]
            if result.peak_xy else [],
        )

    def _program_info(self, ctx: Context) -> Optional[ProgramInfo]:
        if ctx.program is None:
            return None
        attempts = max((f.attempts for f in ctx.program.functions), default=1)
        return ProgramInfo.of(
            ctx.program.source, model_id=ctx.program.model_id,
            origin=ctx.program.origin if ctx.program.origin in ("generated", "pinned", "cached") else "generated",
            attempts=attempts, path=str(ctx.program_path) if ctx.program_path else None,
        )

    def _models_used(self, ctx: Context) -> dict[str, str]:
        models = {"scene_parser": f"SceneParser({self.config.perception.backbone})"}
        if ctx.structural is not None:
            models["structural"] = f"PatchCore({self.config.perception.backbone})"
        if ctx.layout is not None:
            models["layout"] = f"LayoutDetector({self.config.perception.backbone})"
        if ctx.program is not None:
            models["logicode"] = ctx.program.model_id
        return models


def _effective_params(cls: type, kwargs: dict, skip: tuple[str, ...] = ()) -> dict:
    """``kwargs`` completed with the constructor's defaults, as JSON-able data."""
    import inspect

    bound = inspect.signature(cls).bind_partial(**kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in skip}


def _digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _regions(evidence: Any) -> list[Region]:
    """Evidence boxes of a finding. A generated program may return anything here (a number, a
    string, infinite coordinates): what is not a list of boxes is dropped, never raised."""
    if not isinstance(evidence, (list, tuple)):
        return []
    out = []
    for item in evidence:
        box = item.get("bbox") if isinstance(item, dict) else item
        try:
            x0, y0, x1, y1 = (int(round(float(v))) for v in box)
            out.append(Region(bbox=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))))
        except (TypeError, ValueError, OverflowError):
            continue
        if len(out) == 50:
            break
    return out


__all__ = ["Agent", "Context", "assemble"]

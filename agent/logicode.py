"""LogiCode: a language model writes one small check function per rule; we validate,
repair and cache them, and run the assembled program in the sandbox.

Why per rule: a small local model writes a short function far more reliably than a
whole program, a bad rule is repaired (or given up) alone, and the shared prompt
prefix (context, parts, helper API) is evaluated once by the model's prompt cache.

Validation is strict: the function must pass the sandbox's static check, run on every
normal reference, and PASS on every one of them, each judged against the OTHER references
(leave-one-out; a check that compares with the references passes trivially on one of them).
A check that flags a normal reference is wrong by construction. It must also pass on slightly
altered copies of the references (4 % brighter or darker, shifted by a few pixels, resampled):
four references rarely show how far the parse wanders on normal images, and these copies show
some of it at no cost. A check whose verdict moves with them measures noise: if no repair
fixes it, it is kept as an *advisory* check, which names its rule in an anomalous verdict and
never decides one.

Its measurement often is not. A small model reads "exactly two screws" and checks
``count == 2`` on a part that the parse sees as three pieces on every normal image; the
verdict is wrong, the measured count is a faithful signal. With enough references, such
a check is *calibrated* instead of rejected: the program keeps the model's function as the
measurement and judges its observed value against the references' values
(``lc.calibrated``). It is accepted only when every reference measures the same value: a
count the parse reports as 3, 2, 2, 3 on normal images misfires on the next normal image
about as often as it catches an anomaly, so it is rejected and repaired. In the cached
answers of the last agent benchmark, 45 of the rejections were of this kind and repairs
rescued 2 of 46 rules. With calibration, on the
synthetic agent benchmark (4 references, fresh programs), the logical AUROC went from 0.753
to 0.783, the structural one from 0.753 to 0.797, and the share of detected logical
anomalies whose explanation names a failed rule with observed and expected values from
0.00 to 0.38. (Those checks included counts that varied between the references; once they
were rejected, the detectors carried nearly all of the synthetic score: see the README.)

Generation goes round by round over the rules within a time budget: first every rule's first
attempt, then repairs share what is left; no call runs past the budget.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from pydantic import BaseModel, Field

from detectors.schema import position_words

from prompts.logicode import (
    LOGICODE_TEMPLATE_VERSION,
    grounding_request,
    logicode_repair_request,
    logicode_rule_request,
    rule_function_name,
)
from prompts.rules import NormalityRules, Rule

log = logging.getLogger(__name__)

PRELUDE = "import math\nimport logicode as lc\n"
MODEL_FAILURE = "the language model failed"
REPEATED_ANSWER = "The repair repeated an answer that was already rejected; no further rounds."
BUDGET_SPENT = "The rule set's generation time budget was spent: no more repairs."
#: notes about why repairs stopped, not validation problems: never the reason a rule has no check
_STOP_NOTES = (REPEATED_ANSWER, BUDGET_SPENT)
#: what a generated check must pass (part of the cache key: a stricter validation regenerates)
#: 2: also slightly altered copies of the references (``LogiCodeGenerator._unstable``)
#: 3: a check that passes the references but not their copies is kept as advisory
#: 4: a check must be able to fail: on counterfactual copies of a reference (``_vacuous``)
#: 5: ... and its observed value must change on them
#: 6: the references with their components listed in reverse order join the altered copies
#: 7: a steady value is calibrated only if it does not follow a part count that the references vary
VALIDATION_VERSION = 7
#: calibration needs a leave-one-out range of at least two references for each reference
MIN_CALIBRATION_REFERENCES = 3
SYSTEM_PROMPT = (
    "You are an expert Python programmer who writes short, correct inspection checks. "
    "You only use the helpers you are given."
)


GROUNDING_SYSTEM_PROMPT = "You answer with one JSON object and nothing else."


def parse_grounding(answer: str, *, rule_ids: Sequence[str], part_ids: Sequence[str]) -> dict[str, list[str]]:
    """The first JSON object in ``answer`` as ``{rule id: [part ids]}``, keeping known ids only.
    A rule mapped to more than half of the parts (and more than two) is left unmapped."""
    known_rules, known_parts = set(rule_ids), set(part_ids)
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(answer) if ch == "{"):
        try:
            data, _ = decoder.raw_decode(answer[start:])
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        out: dict[str, list[str]] = {}
        for rid, parts in data.items():
            if str(rid) not in known_rules:
                continue
            items = parts if isinstance(parts, list) else [parts]
            ids = sorted({str(p) for p in items if str(p) in known_parts}, key=lambda p: (len(p), p))
            # "every part" says nothing about the rule: a small model answers so when unsure
            out[str(rid)] = [] if len(ids) > max(2, len(known_parts) // 2) else ids
        return out
    return {}


def _part_ids(scenes: Sequence[dict]) -> list[str]:
    return sorted({p["id"] for s in scenes for p in s.get("parts", [])})


class RuleFunction(BaseModel):
    rule_id: str
    function_name: str
    source: Optional[str] = Field(default=None, description="the validated function, or None if it failed")
    attempts: int = 0
    problems: list[str] = Field(default_factory=list, description="what went wrong in each failed attempt")
    seconds: float = 0.0
    calibrated: bool = Field(
        default=False,
        description="the model's check flagged normal references, so its measured value is judged against the "
                    "references' values instead of its own verdict (lc.calibrated)",
    )
    advisory: bool = Field(
        default=False,
        description="the check passed the references but misfired on slightly altered copies of them: it runs, "
                    "and may name its rule in an anomalous verdict, but never decides one",
    )

    @property
    def ok(self) -> bool:
        """A validated check (an advisory one is not)."""
        return self.source is not None and not self.advisory


class LogiCodeProgram(BaseModel):
    """An assembled, validated program: the audit trail of the logic check."""

    key: str
    category: str
    model_id: str
    origin: str = "generated"
    functions: list[RuleFunction]
    source: str
    created: float = Field(default_factory=time.time)
    generation_seconds: float = 0.0
    rule_parts: Optional[dict[str, list[str]]] = Field(
        default=None,
        description="rule id -> the part ids the rule is about, as the model read the parts table "
                    "(None: not asked yet). Links the detectors' evidence to rules in explanations.",
    )

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def unavailable(self) -> dict[str, str]:
        """rule id -> why it has no check: the last validation problem (not the note that a
        repair repeated itself)."""
        reasons = {}
        for f in self.functions:
            if not f.ok:
                found = [p for p in f.problems if p not in _STOP_NOTES]
                if found:
                    reasons[f.rule_id] = found[-1]
                elif BUDGET_SPENT in f.problems:
                    reasons[f.rule_id] = ("The rule set's generation time budget was spent before this rule's "
                                          "check was written.")
                else:
                    reasons[f.rule_id] = "no program"
        return reasons

    @property
    def model_failed(self) -> bool:
        """A rule was given up because the model itself failed (not because its code was
        wrong): such a program is not cached on disk, so the next process tries again, and an
        :class:`~agent.Agent` generates it again when the rule set is next used at least
        ``agent.core.PROGRAM_RETRY_S`` later."""
        return any(p.startswith(MODEL_FAILURE) for f in self.functions if not f.ok for p in f.problems[-1:])

    @property
    def budget_spent(self) -> bool:
        """Some rule's repairs were cut short by the generation time budget."""
        return any(BUDGET_SPENT in f.problems for f in self.functions)

    @property
    def checked_rule_ids(self) -> list[str]:
        return [f.rule_id for f in self.functions if f.ok]

    @property
    def advisory_rule_ids(self) -> list[str]:
        return [f.rule_id for f in self.functions if f.advisory]


def assemble(functions: Sequence[tuple[str, str, str]], advisory: Sequence[tuple[str, str, str]] = ()) -> str:
    """One program from ``(rule_id, function_name, source)`` parts, with a ``check`` entry point
    that isolates each rule: a rule whose check raises yields a failed finding, not a lost verdict.
    ``advisory`` checks (not stable on altered copies of the references) run after them, and their
    findings are marked ``advisory``."""
    body = [PRELUDE]
    for _, _, src in list(functions) + list(advisory):
        body.append(src.strip() + "\n")
    table = ", ".join(f"({rid!r}, {fname})" for rid, fname, _ in functions)
    advisory_table = ", ".join(f"({rid!r}, {fname})" for rid, fname, _ in advisory)
    body.append(
        f"RULE_CHECKS = [{table}]\n"
        + (f"ADVISORY_CHECKS = [{advisory_table}]\n" if advisory else "") + "\n"
        "def check(scene, references):\n"
        "    findings = []\n"
        "    for rule_id, rule_check in RULE_CHECKS" + (" + ADVISORY_CHECKS" if advisory else "") + ":\n"
        "        try:\n"
        "            result = rule_check(scene, references)\n"
        "        except Exception as error:\n"
        "            result = lc.finding(rule_id, False, None, None, 'the check could not be evaluated: ' + str(error))\n"
        "            result['error'] = True\n"
        "        if not isinstance(result, dict):\n"
        "            result = lc.finding(rule_id, False, None, None, 'the check returned no finding')\n"
        "            result['error'] = True\n"
        "        result['rule_id'] = rule_id\n"
        + ("        if (rule_id, rule_check) in ADVISORY_CHECKS:\n"
           "            result['advisory'] = True\n" if advisory else "") +
        "        findings.append(result)\n"
        "    return findings\n"
    )
    return "\n".join(body)


def clean_function(code: str, function_name: str) -> str:
    """Keep the imports and function definitions of a model's answer, rename a lone
    function to ``function_name``; drop example calls and prints at top level."""
    tree = ast.parse(code)
    kept: list[ast.stmt] = []
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if not functions:
        raise SyntaxError("the answer defines no function")
    if not any(f.name == function_name for f in functions):
        # The model named its function differently: take the last one as the rule check.
        functions[-1].name = function_name
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom)):
            kept.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            kept.append(node)
    # All rules share one module once assembled: give this rule's own helpers and constants
    # a rule-specific name so that another rule's `EXPECTED` or `helper` cannot replace them.
    own = {n.name for n in kept if isinstance(n, ast.FunctionDef) and n.name != function_name}
    own |= {t.id for n in kept if isinstance(n, ast.Assign) for t in n.targets}
    module = ast.Module(body=kept, type_ignores=[])
    if own:
        module = _Renamer({name: f"{function_name}_{name}" for name in own}).visit(module)
    return ast.unparse(ast.fix_missing_locations(module))


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.mapping.get(node.id, node.id)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.name = self.mapping.get(node.name, node.name)
        self.generic_visit(node)
        return node


def calibrate_function(source: str, function_name: str, rule_id: str) -> str:
    """Turn a cleaned rule check into a measurement judged against the references: the model's
    function becomes ``<name>_measured`` and ``<name>`` calls ``lc.calibrated`` on it."""
    measured = f"{function_name}_measured"
    module = _Renamer({function_name: measured}).visit(ast.parse(source))
    return (
        ast.unparse(ast.fix_missing_locations(module)) + "\n\n"
        f"def {function_name}(scene, references):\n"
        f"    # The model's own verdict flagged normal references; its measurement is kept and\n"
        f"    # judged against what the references measure (added by the agent, not the model).\n"
        f"    return lc.calibrated({rule_id!r}, {measured}, scene, references)\n"
    )


def _is_measurement(value: Any) -> bool:
    """A value calibration can compare: a count, a list of counts or a word.

    Not a verdict (bool), not a missing value, and not a continuous quantity: four references
    cannot tell how far an area or a length wanders on normal images. On the real juice bottle
    a calibrated total area (steady within 15 % on 4 references) failed on other normal
    bottles and cut the logical AUROC from 0.94 to 0.76; a count either matches or not."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, (int, str)):
        return True
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def program_key(rules: NormalityRules, refset_hash: str, api_version: str, model_id: str, parts_table: str) -> str:
    blob = json.dumps(
        {
            "rules": rules.digest(),
            "class_context": rules.class_context,
            "refs": refset_hash,
            "api": api_version,
            "model": model_id,
            "template": LOGICODE_TEMPLATE_VERSION,
            "validation": VALIDATION_VERSION,
            "parts": hashlib.sha256(parts_table.encode()).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ProgramCache:
    """Programs in memory and on disk (``<dir>/<key>.json`` plus a readable ``<key>.py``)."""

    def __init__(self, directory: Optional[Path]):
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, LogiCodeProgram] = {}

    def get(self, key: str) -> Optional[LogiCodeProgram]:
        if key in self._memory:
            return self._memory[key]
        if self.directory is not None:
            path = self.directory / f"{key}.json"
            if path.is_file():
                try:
                    program = LogiCodeProgram.model_validate_json(path.read_text(encoding="utf-8"))
                except ValueError:
                    log.warning("ignoring unreadable cached program %s", path)
                    return None
                self._memory[key] = program
                return program
        return None

    def put(self, program: LogiCodeProgram) -> Optional[Path]:
        self._memory[program.key] = program
        if self.directory is None:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False, encoding="utf-8") as fh:
            fh.write(program.source)
        Path(fh.name).replace(self.directory / f"{program.key}.py")
        # Unique temporary names: parallel audit workers may write the same key at once.
        with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False, encoding="utf-8") as fh:
            fh.write(program.model_dump_json(indent=1))
        Path(fh.name).replace(self.directory / f"{program.key}.json")
        return self.directory / f"{program.key}.py"

    def path_of(self, key: str) -> Optional[Path]:
        return self.directory / f"{key}.py" if self.directory else None


def _answer_key(answer: str) -> str:
    """An answer's code with blank lines and trailing spaces dropped: two answers with the same
    key validate the same way."""
    from agent.llm import extract_code

    code = extract_code(answer) or answer
    return "\n".join(line.rstrip() for line in code.splitlines() if line.strip())


def _describe_value(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) < 200 else text[:200] + "..."


class LogiCodeGenerator:
    """Writes, validates and repairs one check function per rule with a chat model."""

    def __init__(
        self,
        chat: Callable[[list, int], str],
        *,
        run: Callable[..., Any],
        check_source: Callable[[str], list],
        api_reference: str,
        repair_rounds: int = 3,
        budget_s: Optional[float] = None,
        ground_rules: bool = False,
    ):
        """``chat(messages, attempt[, timeout_s=...]) -> text`` talks to the model (greedy first, sampled
        on repairs, which get the rest of the budget as ``timeout_s``); ``run(source, entrypoint, args)``
        is ``sandbox.run_program``; ``check_source`` is the sandbox's static check. ``budget_s`` bounds
        a rule set's generation: the rest of the budget is every call's time limit, first attempts
        included, and a repair starts only if an attempt of the usual length still fits in it."""
        self.chat = chat
        self.run = run
        self.check_source = check_source
        self.api_reference = api_reference
        self.repair_rounds = repair_rounds
        self.budget_s = budget_s
        self.ground_rules = ground_rules  # also ask which parts each rule is about (see ground)

    def generate(
        self,
        rules: NormalityRules,
        *,
        parts_table: str,
        reference_scenes: Sequence[dict],
        key: str,
        model_id: str,
        validation_scenes: Optional[Sequence[dict]] = None,
        variant_scenes: Optional[Sequence[tuple[int, dict]]] = None,
    ) -> LogiCodeProgram:
        """Write a function per rule. Each is validated on ``validation_scenes`` (by default
        the references, where it must pass; in zero-shot mode the query, where it need only run).
        ``variant_scenes``: ``(reference index, scene)`` of slightly altered copies of the
        references (``detectors.images.slight_variants``), where a check must pass too."""
        start = time.perf_counter()
        require_pass = validation_scenes is None
        scenes = list(reference_scenes if validation_scenes is None else validation_scenes)
        variants = [{"reference": int(i), "scene": v} for i, v in (variant_scenes or [])] if require_pass else []
        # Round by round over the rules, not rule by rule: every rule's first attempt comes before
        # any repair (most validated checks come from it), and repairs share what the budget leaves.
        # without references (zero-shot) the request asks for checks of what the rules state only
        zero_shot = not require_pass and not reference_scenes
        drafts = [_RuleDraft(rules, rule, parts_table, self.api_reference, zero_shot) for rule in rules.rules]
        for attempt in range(1 + self.repair_rounds):
            for draft in drafts:
                if draft.done:
                    continue
                left = None if self.budget_s is None else self.budget_s - (time.perf_counter() - start)
                # Every call gets the rest of the budget as its deadline, first attempts too: four
                # first attempts of 8-20 s took a synthetic breakfast box's rule set to 61.0 s of 60
                # (66.8 s with the model read from a cold disk). The deadline keeps back the usual
                # validation time (the sandbox runs the answer on every reference and altered copy):
                # without it, the last answer was validated after the budget (61.7 s of 60).
                # A repair starts only if an attempt of the usual (mean) length still fits: repairs
                # carry the rejected code and its error, so some run longer than the mean.
                deadline = None
                if left is not None:
                    checked = sum(d.validations for d in drafts)
                    deadline = left - (sum(d.validation_seconds for d in drafts) / checked if checked else 0.0)
                    made = sum(d.result.attempts for d in drafts)
                    expected = sum(d.result.seconds for d in drafts) / made if made else 0.0
                    if deadline <= 0 or (attempt > 0 and left < expected):
                        draft.result.problems.append(BUDGET_SPENT)
                        draft.done = True
                        continue
                began = time.perf_counter()
                self._attempt(draft, attempt, scenes=scenes, references=list(reference_scenes),
                              require_pass=require_pass, deadline_s=deadline, variants=variants)
                draft.result.seconds += time.perf_counter() - began
        for draft in drafts:
            if not draft.result.ok and draft.advisory is not None:
                draft.result.source, draft.result.calibrated = draft.advisory
                draft.result.advisory = True
        functions = [draft.result for draft in drafts]
        parts = [(f.rule_id, f.function_name, f.source) for f in functions if f.ok]
        advisory = [(f.rule_id, f.function_name, f.source) for f in functions if f.advisory]
        rule_parts = self.ground(rules, parts_table=parts_table,
                                 part_ids=_part_ids(list(reference_scenes) + list(validation_scenes or []))) \
            if self.ground_rules else None
        return LogiCodeProgram(
            key=key,
            category=rules.category,
            model_id=model_id,
            functions=functions,
            source=assemble(parts, advisory),
            generation_seconds=time.perf_counter() - start,
            rule_parts=rule_parts,
        )

    def ground(self, rules: NormalityRules, *, parts_table: str, part_ids: Sequence[str]) -> dict[str, list[str]]:
        """Ask the model once which parts each rule is about: ``{rule id: [part ids]}``.

        Unknown rule or part ids are dropped; a model that fails or answers without JSON gives
        ``{}`` (evidence is then not linked to rules), never an exception."""
        from langchain_core.messages import HumanMessage, SystemMessage

        try:
            answer = self.chat([SystemMessage(GROUNDING_SYSTEM_PROMPT),
                                HumanMessage(grounding_request(rules, parts_table=parts_table))], 0)
        except Exception as exc:
            log.warning("rule grounding failed: %s", exc)
            return {}
        return parse_grounding(answer, rule_ids=[r.id for r in rules.rules], part_ids=part_ids)

    # -- one rule ---------------------------------------------------------------------
    def _attempt(self, draft: "_RuleDraft", attempt: int, *, scenes: list[dict], references: list[dict],
                 require_pass: bool, deadline_s: Optional[float] = None, variants: Sequence[dict] = ()) -> None:
        """One model call for one rule: its first answer, or a repair of its last rejected one.
        ``deadline_s``: what is left of the generation budget, the call's time limit."""
        from langchain_core.messages import AIMessage, HumanMessage

        rule, result = draft.rule, draft.result
        result.attempts = attempt + 1
        called = time.perf_counter()
        try:
            answer = self.chat(draft.messages, attempt) if deadline_s is None \
                else self.chat(draft.messages, attempt, timeout_s=deadline_s)
        except TimeoutError as exc:
            # Cut at the budget's end, the budget was spent: the model did not fail, and the
            # program may be cached. A timeout before it (the model's own limit) is a failure.
            spent = deadline_s is not None and time.perf_counter() - called >= deadline_s
            result.problems.append(BUDGET_SPENT if spent else f"{MODEL_FAILURE}: {exc}")
            draft.done = True
            return
        except Exception as exc:  # a model that errors: record and give up this rule
            result.problems.append(f"{MODEL_FAILURE}: {exc}")
            draft.done = True
            return
        key = _answer_key(answer)
        if key in draft.rejected:
            # The model gave an answer it was already told is wrong: more rounds of the same
            # conversation rarely change its mind, and each costs a full generation.
            result.problems.append(REPEATED_ANSWER)
            draft.done = True
            return
        draft.rejected.add(key)
        validating = time.perf_counter()
        source, problem, observations, calibrated = self._validate(
            answer, result.function_name, rule, scenes, references, require_pass, variants)
        draft.validation_seconds += time.perf_counter() - validating
        draft.validations += 1
        if problem is None:
            result.source, result.calibrated = source, calibrated
            draft.done = True
            return
        if source is not None:  # runs and passes the references, but is not stable: kept as advisory
            draft.advisory = (source, calibrated)
        result.problems.append(problem)
        log.info("rule %s attempt %d rejected: %s", rule.id, attempt + 1, problem)
        log.debug("rejected answer for rule %s:\n%s", rule.id, answer)
        # Only the latest failed answer stays in the conversation: a small model shown its
        # whole history tends to copy it, and the prompt stays short.
        draft.messages = draft.messages[:2] + [
            AIMessage(answer),
            HumanMessage(logicode_repair_request(rule, problem=problem, observations=observations,
                                                 zero_shot=draft.zero_shot)),
        ]

    def _validate(
        self, answer: str, fname: str, rule: Rule, scenes: list[dict], references: list[dict],
        require_pass: bool, variants: Sequence[dict] = (),
    ) -> tuple[Optional[str], Optional[str], str, bool]:
        """Returns ``(clean source, problem or None, observations for the repair prompt, whether
        the source is the calibrated form of the model's check)``. A source with a problem passed
        the references but not their altered copies: it may serve as an advisory check."""
        from agent.llm import extract_code

        code = extract_code(answer)
        if not code:
            return None, "The answer contains no Python code. Answer with the function in a ```python block.", "", False
        try:
            source = clean_function(code, fname)
        except SyntaxError as exc:
            return None, f"The code is not valid Python: {exc}.", "", False
        problems = self.check_source(PRELUDE + source)
        if problems:
            return None, "The sandbox rejected the code: " + "; ".join(str(p) for p in problems[:3]), "", False

        # Each normal reference is judged against the OTHER references: a check that compares with
        # the references always passes on a reference judged against itself, so only this tests it.
        leave_one_out = require_pass and len(references) >= 2
        if leave_one_out:
            res = self._run_against_others(source, fname, _own_copies(references), references)
        else:
            driver = (
                PRELUDE + source + "\n\n"
                f"def check_all(scenes, references):\n"
                f"    return [{fname}(s, references) for s in scenes]\n"
            )
            res = self.run(driver, "check_all", {"scenes": scenes, "references": references})
        if not res.ok:
            return None, f"Running it on the images failed ({res.error_kind}): {res.error}", "", False
        values = res.value
        if not isinstance(values, list) or len(values) != len(scenes):
            return None, "The function must return one finding (from lc.finding) per call.", "", False
        observations = []
        failed = []
        for i, value in enumerate(values, start=1):
            if not isinstance(value, dict) or "passed" not in value:
                return None, f"It returned {_describe_value(value)}; it must return lc.finding(...).", "", False
            observations.append(
                f"On normal reference {i}: passed={value.get('passed')}, observed={_describe_value(value.get('observed'))}, "
                f"expected={_describe_value(value.get('expected'))}."
            )
            if value.get("passed") is not True:
                failed.append(i)
        if failed and require_pass:
            judged = " (each judged against the other references)" if leave_one_out else ""
            problem = (f"It reports the rule as violated on normal reference image(s) {failed}{judged}, "
                       "which are correct by definition.")
            measured = [v.get("observed") for v in values]
            if len(references) >= MIN_CALIBRATION_REFERENCES and all(_is_measurement(v) for v in measured):
                if len({json.dumps(v, sort_keys=True) for v in measured}) > 1:
                    # A count the parse reports differently on normal images (2, 3, 3, 2) would
                    # misfire on the next normal image as often as it catches an anomaly.
                    problem += (" Its observed value varies between the normal references ("
                                + ", ".join(_describe_value(v) for v in measured)
                                + "), so it cannot be judged against them either.")
                    return None, problem, "\n".join(observations), False
                coincidence = self._steady_by_coincidence(source, fname, references, measured[0])
                if coincidence is not None:
                    return None, problem + " " + coincidence, "\n".join(observations), False
                calibrated, why_not = self._calibrate(source, fname, rule, references)
                if calibrated is not None:
                    unstable = self._unstable(calibrated, fname, references, variants)
                    if unstable is None:
                        vacuous = self._vacuous(calibrated, fname, references)
                        if vacuous is not None:
                            return None, problem + " " + vacuous, "\n".join(observations), False
                        return calibrated, None, "\n".join(observations), True
                    return calibrated, problem + " " + unstable, "\n".join(observations), True
                problem += " " + why_not
            return None, problem, "\n".join(observations), False
        if any(isinstance(v, dict) and v.get("rule_id") not in (None, rule.id) for v in values):
            values_ids = sorted({str(v.get("rule_id")) for v in values})
            return None, f"lc.finding must be given the rule id {rule.id!r}, not {values_ids}.", "", False
        unstable = self._unstable(source, fname, references, variants)
        if unstable is not None:
            return source, unstable, "\n".join(observations), False
        if require_pass:
            vacuous = self._vacuous(source, fname, references)
            if vacuous is not None:
                return None, vacuous, "\n".join(observations), False
        return source, None, "\n".join(observations), False

    def _unstable(self, source: str, fname: str, references: list[dict], variants: Sequence[dict]) -> Optional[str]:
        """Why ``source`` is not stable on slightly altered copies of the references (each judged
        like its original: against the other references), or None when it passes on all of them.

        On the real juice bottle, a check of the fill level passed on its 4 references and then
        failed or crashed on 7 of 16 other normal bottles; on copies of its references 4 % brighter
        or darker it crashed already. Checks like it flagged normal images with full confidence and cut the
        agent's AUROC below the detectors' alone.

        The references with their components listed in reverse order are judged too: the order of
        the list means nothing, so a check whose verdict follows "the first component listed"
        measures an accident of the parse. (This does not catch a first component that happens to
        be like the others in all the references: the splicing connectors' "colour of the first
        top component", when the model could read it, passed four references that agreed on it
        and then misfired on normal images.)"""
        variants = list(variants) + [{"reference": i, "scene": _reordered(scene)}
                                     for i, scene in enumerate(references) if len(scene.get("components") or []) > 1]
        if not variants:
            return None
        res = self._run_against_others(source, fname, variants, references)
        if not res.ok:
            return (f"It passes on the normal references but fails on slightly altered copies of them "
                    f"(brighter, darker, shifted, resampled, or with the components listed in another order): "
                    f"{res.error_kind}: {res.error}.")
        values = res.value if isinstance(res.value, list) else []
        bad = sorted({int(v["reference"]) + 1 for v, out in zip(variants, values)
                      if not (isinstance(out, dict) and out.get("passed") is True)})
        if len(values) == len(variants) and not bad:
            return None
        seen = ", ".join(_describe_value(out.get("observed") if isinstance(out, dict) else out) for out in values[:8])
        return (f"It passes on the normal references but reports the rule as violated on slightly altered copies "
                f"of reference(s) {bad or 'all'} (4 % brighter or darker, shifted by a few pixels, resampled, or "
                f"with the components listed in another order), which show the same product: what it measures "
                f"is not stable (observed on the copies: {seen}). Measure something that small changes of the "
                "image do not move, over all components of a part rather than the first one listed.")

    def _vacuous(self, source: str, fname: str, references: list[dict]) -> Optional[str]:
        """Why ``source`` checks nothing, or None when it can fail. It runs on the counterfactual
        copies of the first reference (parts removed, added, resized, moved, recoloured), judged
        like the reference; a check that never reports a violation on any of them, except by
        raising an error, passes whatever the image shows. On the synthetic juice bottle the
        model compared a length with itself (``observed == neck_length``, both the same
        expression): it passed every reference, then failed normal bottles whose parse lacked the
        part, by an IndexError: with it the category's logical AUROC read 0.80, without it 0.91."""
        if not references:
            return None
        copies = [{"reference": 0, "scene": s} for s in counterfactual_scenes(references[0])]
        if not copies:
            return None
        # a crash on one copy is a finding with an error, not a failed run
        res = self.run(_against_others_driver(source, fname, catch_errors=True), "check_against_others",
                       {"scenes": copies, "references": references})
        if not res.ok or not isinstance(res.value, list):
            return None  # it could not be judged: the other tests stand
        judged = [out for out in res.value if isinstance(out, dict) and not out.get("error")]
        observed = {_observation_key(out.get("observed")) for out in judged}
        if len(judged) >= MIN_JUDGED_COPIES and len(observed) == 1 and None not in observed:
            # a tautology can still fail where its expression breaks down (0 < 0 on a missing
            # part): what it reports as observed is the tell
            return (f"It measures nothing: its observed value is {judged[0].get('observed')!r} on every copy "
                    "of a reference with a part's components removed, added, resized, moved or recoloured. "
                    "Report as observed the measurement taken from the scene, and compare it with the number "
                    "the rule states or with the references, not with itself.")
        if any(out.get("passed") is False for out in judged):
            return None
        return ("It passes whatever the image shows: on copies of a reference with a part's components "
                "removed, added, resized, moved or recoloured it never reports the rule as violated, so it "
                "checks nothing. Compare the measurement with the number the rule states or with the "
                "references, not with itself.")

    def _steady_by_coincidence(self, source: str, fname: str, references: list[dict], observed: Any) -> Optional[str]:
        """Why the value that every reference measures is a coincidence, or None. Calibration
        trusts a value that all references share, but a sum of counts that vary between them can
        still come out the same: on the synthetic splicing connectors the model counted clamps
        plus connectors (5 + 3 and 6 + 2, 8 in all four references), the agent calibrated "8",
        and normal images with other clamp counts failed, 4 of 8. Here the first reference gets
        one component fewer of each part whose count differs between the references; if the
        measurement moves with such a part, it follows a count the references do not hold
        steady, and the shared value says nothing about the next normal image."""
        counts: dict[str, set] = {}
        for scene in references:
            for entry in scene.get("parts") or []:
                counts.setdefault(str(entry.get("id")), set()).add(entry.get("count"))
        unsteady = sorted(p for p, seen in counts.items() if len(seen) > 1 and any(
            c.get("part") == p for c in references[0].get("components") or []))
        if not unsteady:
            return None
        copies = [{"reference": 0, "scene": _edited(references[0], p, lambda cs: cs[1:])} for p in unsteady]
        res = self.run(_against_others_driver(source, fname, catch_errors=True), "check_against_others",
                       {"scenes": copies, "references": references})
        if not res.ok or not isinstance(res.value, list):
            return None  # it could not be judged: the other tests stand
        followed = [p for p, out in zip(unsteady, res.value) if isinstance(out, dict) and not out.get("error")
                    and _observation_key(out.get("observed")) != _observation_key(observed)]
        if not followed:
            return None
        seen = "; ".join(f"{p}: " + ", ".join(str(c) for c in sorted(c for c in counts[p] if isinstance(c, int)))
                         for p in followed)
        return (f"Its observed value is the same on every reference, but it follows the count of "
                f"{', '.join(followed)}, which differs between the normal references ({seen}): the shared "
                "value is a coincidence, not what a normal image holds.")

    def _run_against_others(self, source: str, fname: str, scenes: Sequence[dict], references: list[dict]):
        """Run ``fname`` on ``{"reference": i, "scene": ...}`` items, each against the references but the i-th."""
        return self.run(_against_others_driver(source, fname), "check_against_others",
                        {"scenes": list(scenes), "references": references})

    def _calibrate(self, source: str, fname: str, rule: Rule, references: list[dict]) -> tuple[Optional[str], str]:
        """The calibrated form of ``source`` when every reference passes it against the other
        references (leave-one-out); else ``(None, a sentence saying why not)``."""
        calibrated = calibrate_function(source, fname, rule.id)
        problems = self.check_source(PRELUDE + calibrated)
        if problems:
            return None, "Its measurement could not be judged against the references: " + "; ".join(
                str(p) for p in problems[:3]) + "."
        res = self._run_against_others(calibrated, fname, _own_copies(references), references)
        if not res.ok:
            return None, f"Its measurement could not be judged against the references ({res.error_kind}): {res.error}."
        values = res.value if isinstance(res.value, list) else []
        outside = [i for i, v in enumerate(values, start=1) if not (isinstance(v, dict) and v.get("passed") is True)]
        if len(values) != len(references) or outside:
            return None, (f"Its observed value also varies between the normal references (reference(s) {outside} "
                          "lie outside what the others measure).")
        return calibrated, ""


#: a check whose observed value is the same on at least this many counterfactual copies (and on
#: all of them) reads nothing from the scene
MIN_JUDGED_COPIES = 3


def _observation_key(value: Any) -> Optional[str]:
    """A comparable form of an observed value: floats to 6 significant digits, so that the same
    measurement read twice is one value. None (nothing observed) stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return f"{float(value):.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(_observation_key(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_observation_key(v)}" for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))) + "}"
    return repr(value)


#: a size change a rule about sizes or lengths must notice (and a count rule need not)
_GROW, _SHRINK = 1.6, 0.6


def _edited(scene: dict, part: str, edit: Callable[[list[dict]], list[dict]]) -> dict:
    """A copy of ``scene`` whose components of ``part`` went through ``edit``; the part's count
    and total area follow."""
    out = copy.deepcopy(scene)
    mine = [c for c in out.get("components", []) if c.get("part") == part]
    others = [c for c in out.get("components", []) if c.get("part") != part]
    mine = edit(mine)
    for i, c in enumerate(others + mine):
        c["id"] = i
    out["components"] = others + mine
    for entry in out.get("parts", []):
        if entry.get("id") == part:
            entry["count"] = len(mine)
            entry["total_area"] = float(sum(c.get("area", 0.0) for c in mine))
    return out


def _resized(comps: list[dict], factor: float) -> list[dict]:
    for c in comps:
        for key in ("area", "area_frac"):
            if isinstance(c.get(key), (int, float)):
                c[key] = c[key] * factor * factor
        for key in ("major_axis", "minor_axis"):
            if isinstance(c.get(key), (int, float)):
                c[key] = c[key] * factor
    return comps


def _moved(scene: dict, comps: list[dict]) -> list[dict]:
    """Each component a third of the product further right and down (wrapping round)."""
    x0, y0, x1, y1 = scene.get("product_bbox") or (0, 0, *(scene.get("image_size") or (1, 1)))
    grid = scene.get("grid")
    for c in comps:
        rx, ry = ((v + 1 / 3) % 1.0 for v in c.get("centroid_rel") or (0.5, 0.5))
        c["centroid_rel"] = [rx, ry]
        cx, cy = x0 + rx * (x1 - x0), y0 + ry * (y1 - y0)
        if c.get("centroid") and c.get("bbox"):
            dx, dy = cx - c["centroid"][0], cy - c["centroid"][1]
            bx0, by0, bx1, by1 = c["bbox"]
            c["bbox"] = [int(bx0 + dx), int(by0 + dy), int(bx1 + dx), int(by1 + dy)]
        c["centroid"] = [cx, cy]
        c["horizontal"], c["vertical"] = position_words(rx, ry)
        if grid and c.get("grid_cell") is not None:
            rows, cols = grid
            c["grid_cell"] = [int(ry * rows), int(rx * cols)]
    return comps


def _recoloured(comps: list[dict]) -> list[dict]:
    for c in comps:
        c["color_name"] = "purple" if c.get("color_name") != "purple" else "green"
        c["color_rgb"] = [255 - int(v) for v in c.get("color_rgb") or (0, 0, 0)]
    return comps


def counterfactual_scenes(scene: dict) -> list[dict]:
    """Copies of a normal scene that break whatever a rule could state about one of its parts:
    for each part, one component less, none, one more, larger, smaller, moved, and recoloured.
    A check that passes on all of them measures nothing the image can change."""
    out = []
    for part in sorted({c.get("part") for c in scene.get("components", [])} - {None}):
        out += [
            _edited(scene, part, lambda cs: cs[1:]),
            _edited(scene, part, lambda cs: []),
            _edited(scene, part, lambda cs: cs + copy.deepcopy(cs[:1])),
            _edited(scene, part, lambda cs: _resized(cs, _GROW)),
            _edited(scene, part, lambda cs: _resized(cs, _SHRINK)),
            _edited(scene, part, lambda cs: _moved(scene, cs)),
            _edited(scene, part, _recoloured),
        ]
    return out


def _reordered(scene: dict) -> dict:
    """The same scene with its components listed in reverse order: nothing a rule speaks of changes."""
    return {**scene, "components": list(reversed(scene.get("components") or []))}


def _own_copies(references: list[dict]) -> list[dict]:
    """The references as scenes to judge, each against the other references (leave-one-out)."""
    return [{"reference": i, "scene": scene} for i, scene in enumerate(references)]


def _against_others_driver(source: str, fname: str, catch_errors: bool = False) -> str:
    """A program that runs ``fname`` on each scene of a reference (the reference itself, or an
    altered copy of it), judged against the other references (all of them when there is only one).
    ``catch_errors``: a call that raises gives ``{'passed': False, 'error': True}`` instead of
    ending the run."""
    call = f"out.append({fname}(v['scene'], others))"
    if catch_errors:
        call = (f"try:\n            {call}\n"
                "        except Exception:\n            out.append({'passed': False, 'error': True})")
    return (
        PRELUDE + source + "\n\n"
        "def check_against_others(scenes, references):\n"
        "    out = []\n"
        "    for v in scenes:\n"
        "        i = v['reference']\n"
        "        others = references[:i] + references[i + 1:] if len(references) > 1 else references\n"
        f"        {call}\n"
        "    return out\n"
    )


class _RuleDraft:
    """One rule's conversation with the model while its check is being written."""

    def __init__(self, rules: NormalityRules, rule: Rule, parts_table: str, api_reference: str,
                 zero_shot: bool = False):
        from langchain_core.messages import HumanMessage, SystemMessage

        self.rule = rule
        self.zero_shot = zero_shot
        self.result = RuleFunction(rule_id=rule.id, function_name=rule_function_name(rule))
        self.messages: list = [
            SystemMessage(SYSTEM_PROMPT),
            HumanMessage(logicode_rule_request(rules, rule, parts_table=parts_table, api_reference=api_reference,
                                               zero_shot=zero_shot)),
        ]
        self.rejected: set[str] = set()  # keys of the answers already rejected
        self.advisory: Optional[tuple[str, bool]] = None  # (source, calibrated) of an unstable check
        self.done = False
        self.validation_seconds = 0.0  # sandbox time spent validating this rule's answers
        self.validations = 0


def validate_pinned(source: str, *, run: Callable[..., Any], check_source: Callable[[str], list],
                    reference_scenes: Sequence[dict]) -> list[str]:
    """Problems a user-pinned program has on the references (empty when it is sound)."""
    problems = [str(p) for p in check_source(source)]
    if problems:
        return problems
    for i, scene in enumerate(reference_scenes, start=1):
        res = run(source, "check", {"scene": scene, "references": list(reference_scenes)})
        if not res.ok:
            return [f"reference {i}: {res.error_kind}: {res.error}"]
        if isinstance(res.value, list):
            problems += [f"reference {i}: rule {f.get('rule_id')} failed" for f in res.value
                         if isinstance(f, dict) and f.get("passed") is not True]
    return problems

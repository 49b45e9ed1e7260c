"""Chat-style inspection sessions, shared by ``logiscan chat`` and the web UI.

A session holds the rules, the references and the last verdict and scene.
Messages are answered deterministically where the intent is clear (inspect a
file, show the program, why did a rule fail, how many X, change rules or
references) because those answers must be exact; anything else goes to the
agent's chat model with the verdict and scene as context.
"""

from __future__ import annotations

import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .schema import Finding, Verdict
from .text import format_value

HELP = """Commands:
  inspect PATH            check an image against the rules
  rerun                   check the last image again (after changing rules or references)
  why [did rule N fail]   explain the verdict, or one rule's finding
  how many X              counts of a part in the last image
  parts                   every part the scene parser found, with counts
  show the program        the LogiCode program that produced the findings
  findings                the verdict and every finding again
  rules                   the current rules
  rules: TEXT | FILE      replace the rules (one per line or sentence, or a YAML/JSON file)
  add rule TEXT           append one rule
  category NAME           use a built-in rule pack
  ref add PATH...         add reference images of normal products (globs allowed)
  ref clear | refs        forget or list the references
  help                    this text
Anything else is answered by the language model from the last verdict."""


@dataclass
class ChatReply:
    text: str
    verdict: Optional[Verdict] = None
    overlay: Any = None  # PIL image when a new verdict was produced
    program: Optional[str] = None
    intent: str = "llm"


def finding_line(f: Finding) -> str:
    mark = "PASS" if f.passed else "FAIL"
    line = f"[{mark}] {f.rule_id}: {f.rule_text} — expected {format_value(f.expected)}, observed {format_value(f.observed)}"
    return line + (f". {f.explanation}" if f.explanation else "")


def verdict_text(v: Verdict) -> str:
    """A plain-text (also valid Markdown) summary of a verdict."""
    decision = "ANOMALOUS" if v.is_anomalous else "NORMAL"
    lines = [f"Verdict: {decision} (score {v.score:.3f}, threshold {v.threshold:.2f})"]
    if v.explanation:
        lines.append(v.explanation)
    if not v.logic_available and v.logic_note:
        lines.append(f"Note: {v.logic_note}")
    if v.component_scores:
        lines.append("Scores: " + ", ".join(f"{k} {s:.3f}" for k, s in v.component_scores.items()))
    lines += [f"- {finding_line(f)}" for f in v.findings]
    return "\n".join(lines)


def _singular(word: str) -> str:
    w = word.lower().strip()
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"), ("s", "")):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            return w[: -len(suffix)] + repl
    return w


NO_SERVER_PATHS = ("Here, files on the server cannot be named: upload the image and the references "
                   "with the form above, or paste rules as text.")


class ChatSession:
    """One user's conversation with the agent."""

    def __init__(
        self,
        agent: Any = None,
        *,
        agent_factory: Optional[Callable[[], Any]] = None,
        rules: Any = None,
        category: Optional[str] = None,
        references: Optional[list[str]] = None,
        allow_server_paths: bool = True,
    ):
        """``allow_server_paths=False`` (the web UI) refuses commands that name files on the
        server, so that a browser user can reach only what they upload."""
        if agent is None and agent_factory is None:
            from .audit import default_agent_factory

            agent_factory = default_agent_factory
        self._agent = agent
        self._agent_factory = agent_factory
        self.allow_server_paths = allow_server_paths
        self.category = category
        self.rules = None
        self.references: list[str] = list(references or [])
        self.image: Optional[str] = None
        self.verdict: Optional[Verdict] = None
        self.scene: Any = None
        self.anomaly_map: Any = None
        self.history: list[tuple[str, str]] = []
        self._context = None
        if rules is not None or category is not None:
            self.set_rules(rules, category=category)

    # ------------------------------------------------------------------ state
    @property
    def agent(self):
        if self._agent is None:
            self._agent = self._agent_factory()
        return self._agent

    def set_rules(self, rules: Any, *, category: Optional[str] = None) -> None:
        """Replace the rules (raises :class:`prompts.RulesError` with a clear message)."""
        from prompts import RulesError, load_rules
        from prompts.rules import names_a_rules_file

        if not self.allow_server_paths and names_a_rules_file(rules):
            # load_rules would open it: a web user must not read the server's files this way
            raise RulesError(NO_SERVER_PATHS)
        self.rules = load_rules(rules, category=category or self.category)
        if category:
            self.category = category
        self._context = None

    def add_references(self, patterns: list[str]) -> list[str]:
        from detectors.images import ImageInputError

        added = []
        for pattern in patterns:
            matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
            if not matches:
                raise ImageInputError(f"No reference images match '{pattern}'.")
            for m in matches:
                path = Path(m)
                if not path.is_file():
                    raise ImageInputError(f"Cannot use reference '{m}': the file does not exist.")
                added.append(str(path))
        self.references.extend(added)
        self._context = None
        return added

    def clear_references(self) -> None:
        self.references = []
        self._context = None

    def _prepared(self):
        if self._context is None:
            self._context = self.agent.prepare(
                rules=self.rules, references=self.references or None, category=self.category,
            )
        return self._context

    # ------------------------------------------------------------------ actions
    def inspect(self, image: Any) -> ChatReply:
        from .overlay import render_overlay

        if self.rules is None:
            return ChatReply("No rules yet. Set them first: 'category NAME', 'rules: …' or 'add rule …'.",
                             intent="inspect")
        name = str(image) if isinstance(image, (str, Path)) else None
        if self.references:
            verdict = self.agent.run_prepared(self._prepared(), image, name=name)
        else:  # zero-shot: the parts are learned from the image itself
            verdict = self.agent.run(image, rules=self.rules, category=self.category)
        self.image = str(image) if isinstance(image, (str, Path)) else verdict.image
        self.verdict = verdict
        self.scene = getattr(self.agent, "last_scene", None)
        self.anomaly_map = getattr(self.agent, "last_anomaly_map", None)
        try:
            overlay = render_overlay(image, verdict, scene=self.scene, anomaly_map=self.anomaly_map)
        except Exception:  # the verdict matters; an overlay failure must not hide it
            overlay = None
        return ChatReply(verdict_text(verdict), verdict=verdict, overlay=overlay,
                         program=verdict.program.source if verdict.program else None, intent="inspect")

    def handle(self, message: str) -> ChatReply:
        """Answer one message. Errors in user input come back as a reply, never as an exception."""
        from detectors.images import ImageInputError
        from prompts import RulesError

        text = message.strip()
        try:
            reply = self._dispatch(text)
        except (ImageInputError, RulesError, FileNotFoundError, ValueError) as exc:
            reply = ChatReply(f"Error: {exc}", intent="error")
        self.history.append((text, reply.text))
        return reply

    # ------------------------------------------------------------------ intents
    def _dispatch(self, text: str) -> ChatReply:
        low = text.lower().rstrip("?!. ")
        if not low:
            return ChatReply("Say 'help' for the commands.", intent="help")
        if low in ("help", "?", "commands"):
            return ChatReply(HELP, intent="help")

        m = re.match(r"^(?:inspect|check|load|analy[sz]e|open)\s+(.+)$", text, re.I)
        if m:
            if not self.allow_server_paths:
                return ChatReply(NO_SERVER_PATHS, intent="inspect")
            return self.inspect(_one_path(m.group(1)))
        if low in ("rerun", "again", "re-run", "inspect again", "check again"):
            if self.image is None:
                return ChatReply("No image yet: 'inspect PATH' first.", intent="inspect")
            return self.inspect(self.image)

        m = re.match(r"^(?:set\s+)?rules?\s*[:=]\s*(.+)$", text, re.I | re.S)
        if m:
            body = m.group(1).strip()
            from prompts.rules import names_a_rules_file

            if not self.allow_server_paths and names_a_rules_file(body):
                return ChatReply(NO_SERVER_PATHS, intent="rules")
            self.set_rules(body)
            return ChatReply(f"Rules replaced ({len(self.rules.rules)}):\n{self.rules.numbered()}\n"
                             "Say 'rerun' to check the last image again.", intent="rules")
        m = re.match(r"^(?:add\s+rule|rule\s+add)\s*:?\s*(.+)$", text, re.I)
        if m:
            current = [r.text for r in self.rules.rules] if self.rules else []
            self.set_rules(current + [m.group(1).strip()])
            return ChatReply(f"Added {self.rules.rules[-1].id}: {self.rules.rules[-1].text}", intent="rules")
        m = re.match(r"^(?:use\s+)?category\s+([\w-]+)$", text, re.I)
        if m:
            self.category = m.group(1)
            self.set_rules(None, category=m.group(1))
            return ChatReply(f"Using the '{self.rules.category}' rule pack:\n{self.rules.numbered()}", intent="rules")
        if low in ("rules", "show rules", "list rules", "show the rules", "what are the rules"):
            if self.rules is None:
                return ChatReply("No rules yet.", intent="rules")
            return ChatReply(f"{self.rules.category}: {self.rules.class_context}\n{self.rules.numbered()}".strip(),
                             intent="rules")

        m = re.match(r"^(?:refs?|references?)\s+add\s+(.+)$", text, re.I)
        if m:
            if not self.allow_server_paths:
                return ChatReply(NO_SERVER_PATHS, intent="refs")
            added = self.add_references(shlex.split(m.group(1)))
            return ChatReply(f"Added {len(added)} reference(s); {len(self.references)} in all. "
                             "Say 'rerun' to check the last image again.", intent="refs")
        if re.match(r"^(?:refs?|references?)\s+clear$", low):
            self.clear_references()
            return ChatReply("References cleared.", intent="refs")
        if low in ("ref", "refs", "references", "show references", "list references"):
            listing = "\n".join(self.references) or "(none)"
            return ChatReply(f"{len(self.references)} reference(s):\n{listing}", intent="refs")

        if re.search(r"\b(?:program|code|logicode)\b", low) and re.search(r"\b(?:show|print|display|see|what)\b|^program$", low):
            return self._program()
        if low in ("program", "code"):
            return self._program()

        m = re.search(r"\bhow\s+many\s+([a-z][\w\s-]*?)(?:\s+(?:did|do|does|are|were|is|was|can|in|on)\b.*)?$", low)
        if m:
            return self._how_many(m.group(1).strip())
        if low in ("parts", "counts", "what did you see", "scene", "show parts"):
            return self._parts()
        m = re.search(r"\bwhy\b.*?\brule\s*#?\s*([\w.-]+)|\b(?:explain|why)\b.*?\b(r\d+)\b", low)
        if m:
            return self._why_rule(m.group(1) or m.group(2))
        if low in ("why", "why is it anomalous", "why anomalous", "why normal", "explain"):
            return self._why()
        if low in ("findings", "verdict", "summary", "result", "results"):
            if self.verdict is None:
                return ChatReply("No verdict yet: 'inspect PATH' first.", intent="findings")
            return ChatReply(verdict_text(self.verdict), intent="findings")
        return self._ask_model(text)

    def _need_verdict(self) -> Optional[ChatReply]:
        if self.verdict is None:
            return ChatReply("No image inspected yet: say 'inspect PATH' first.", intent="none")
        return None

    def _program(self) -> ChatReply:
        if (missing := self._need_verdict()) is not None:
            return missing
        program = self.verdict.program
        if program is None:
            return ChatReply("The last verdict has no LogiCode program"
                             + (f": {self.verdict.logic_note}" if self.verdict.logic_note else "."), intent="program")
        head = f"LogiCode program ({program.origin}, sha256 {program.sha256[:12]}…):"
        return ChatReply(f"{head}\n```python\n{program.source.rstrip()}\n```", program=program.source, intent="program")

    def _find_rule(self, key: str) -> Optional[Finding]:
        findings = self.verdict.findings
        for f in findings:
            if f.rule_id.lower() == key.lower():
                return f
        if key.isdigit():  # "rule 2" means the second rule when ids are not plain numbers
            for f in findings:
                if f.rule_id.lower() in (f"r{key}", f"rule{key}", f"rule_{key}"):
                    return f
            index = int(key) - 1
            if 0 <= index < len(findings):
                return findings[index]
        return None

    def _why_rule(self, key: str) -> ChatReply:
        if (missing := self._need_verdict()) is not None:
            return missing
        f = self._find_rule(key)
        if f is None:
            ids = ", ".join(x.rule_id for x in self.verdict.findings) or "none"
            return ChatReply(f"There is no rule '{key}' in the last verdict. Rules: {ids}.", intent="why")
        status = "failed" if not f.passed else "passed (it did not fail)"
        lines = [f"Rule {f.rule_id} ({f.rule_text}) {status}.",
                 f"Expected {format_value(f.expected)}; observed {format_value(f.observed)}."]
        if f.explanation:
            lines.append(f.explanation)
        if f.evidence:
            boxes = "; ".join(f"{r.label or 'region'} at {tuple(r.bbox)}" for r in f.evidence[:5])
            lines.append(f"Evidence: {boxes}.")
        lines.append(f"Source: {f.source}, confidence {f.confidence:.2f}.")
        return ChatReply("\n".join(lines), intent="why")

    def _why(self) -> ChatReply:
        if (missing := self._need_verdict()) is not None:
            return missing
        v = self.verdict
        failed = v.failed_findings
        head = (f"The image is {'anomalous' if v.is_anomalous else 'normal'}: score {v.score:.3f} "
                f"against threshold {v.threshold:.2f}.")
        body = [finding_line(f) for f in failed] or ["Every rule passed."]
        if v.component_scores:
            body.append("Scores: " + ", ".join(f"{k} {s:.3f}" for k, s in v.component_scores.items()))
        return ChatReply("\n".join([head, v.explanation, *body]).replace("\n\n", "\n"), intent="why")

    def _parts(self) -> ChatReply:
        if (missing := self._need_verdict()) is not None:
            return missing
        if self.scene is None or not getattr(self.scene, "parts", None):
            return ChatReply("The last run produced no scene parse.", intent="count")
        lines = [f"{p.name or p.id} ({p.id}, {p.color_name}): {p.count}" + _ref_note(p) for p in self.scene.parts]
        return ChatReply("Parts in the last image:\n" + "\n".join(lines), intent="count")

    def _how_many(self, noun: str) -> ChatReply:
        if (missing := self._need_verdict()) is not None:
            return missing
        words = [w for w in re.split(r"[\s-]+", noun) if w not in ("the", "a", "of", "you", "there")]
        keys = {_singular(w) for w in words if w}
        lines = []
        for p in getattr(self.scene, "parts", None) or []:
            names = {_singular(x) for x in re.findall(r"[a-z]+", " ".join(
                filter(None, [p.name or "", p.id, p.color_name, p.description])).lower())}
            if keys & names:
                lines.append(f"{p.name or p.id} ({p.id}, {p.color_name}): {p.count}" + _ref_note(p))
        for f in self.verdict.findings:
            rule_words = {_singular(x) for x in re.findall(r"[a-z]+", f.rule_text.lower())}
            if keys & rule_words:
                lines.append(f"Rule {f.rule_id} ({f.rule_text}): observed {format_value(f.observed)}, "
                             f"expected {format_value(f.expected)} — {'pass' if f.passed else 'FAIL'}.")
        if lines:
            return ChatReply(f"About '{noun}' in the last image:\n" + "\n".join(lines), intent="count")
        parts = ", ".join(f"{p.name or p.id}={p.count}" for p in getattr(self.scene, "parts", None) or []) or "none"
        return ChatReply(f"I found no part or rule called '{noun}'. Parts I counted: {parts}.", intent="count")

    def _ask_model(self, question: str) -> ChatReply:
        try:
            model = self.agent.chat_model
        except Exception as exc:  # a missing or broken model must not end the session
            return ChatReply(f"I can't reach the language model ({exc}). Say 'help' for the exact commands.",
                             intent="llm")
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        messages: list[Any] = [SystemMessage(content=self._context_prompt())]
        for user, answer in self.history[-4:]:
            messages += [HumanMessage(content=user), AIMessage(content=answer[:800])]
        messages.append(HumanMessage(content=question))
        from agent.llm import invoke_with_timeout

        config = getattr(self.agent, "config", None)
        timeout_s = float(getattr(config, "generation_timeout_s", 120.0))
        try:
            # bounded: a busy CPU must not freeze the chat; the error says what happened
            content = invoke_with_timeout(model, messages, timeout_s)
        except Exception as exc:
            return ChatReply(f"The language model failed ({exc}). Say 'help' for the exact commands.", intent="llm")
        return ChatReply(str(content).strip() or "(the model gave no answer)", intent="llm")

    def _context_prompt(self) -> str:
        parts = ["You are logiscan, an inspector of industrial products. Answer in at most four sentences, "
                 "using only the facts below. If they do not answer the question, say so."]
        if self.rules is not None:
            parts.append(f"Product: {self.rules.category}. {self.rules.class_context}\nRules:\n{self.rules.numbered()}")
        if self.verdict is not None:
            decision = "ANOMALOUS" if self.verdict.is_anomalous else "NORMAL"
            # small CPU models latch onto a passed rule and contradict the fused decision
            parts.append(f"The inspection decided: {decision}. This decision is final; explain it, never contradict it.")
            parts.append(f"Image: {self.image}\n{verdict_text(self.verdict)}")
        if self.scene is not None and getattr(self.scene, "parts", None):
            parts.append("Parts counted: " + "; ".join(
                f"{p.name or p.id} ({p.color_name}) x{p.count}: {p.description}" for p in self.scene.parts))
        if self.verdict is None:
            parts.append("No image has been inspected yet.")
        return "\n\n".join(parts)


def _ref_note(part: Any) -> str:
    ref = getattr(part, "ref_count", None)
    return f" (references: {ref.mean:.1f} ± {ref.std:.1f})" if ref is not None else ""


def _one_path(raw: str) -> str:
    raw = raw.strip()
    try:
        parts = shlex.split(raw)
    except ValueError:
        parts = [raw]
    return parts[0] if len(parts) == 1 else raw.strip("'\"")

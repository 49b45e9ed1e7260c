"""Agentic mode: a tool-calling model drives the inspection itself.

The model sees the multi-modal prompt (rules, references, query), calls the perception
tools and the LogiCode runner as it sees fit, and answers with one finding per rule.
Every call is kept in the verdict's tool trace. Meant for capable models (a GPU VLM or
an OpenAI-compatible server); the CPU default uses the fixed pipeline instead.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from .schema import Finding, ToolCall

MAX_STEPS = 8
AGENTIC_INSTRUCTIONS = (
    "Use the tools to measure the query image before you answer: parse_scene gives its parts, counts, sizes and "
    "positions next to the references'; run_logicode runs a Python check(scene, references) program in a sandbox; "
    "structural_score and composition_score give calibrated anomaly scores in [0, 1]. When you are done, answer "
    "with the JSON described above and nothing else."
)


class _NoArgs(BaseModel):
    pass


class _Program(BaseModel):
    source: str = Field(description="Python source defining check(scene, references) -> list of findings")


def build_tools(*, scene: Any, ctx: Any, structural_result: Any, composition: float | None,
                run_program: Callable[..., Any]) -> list[StructuredTool]:
    """Tools bound to one image's perception (computed once, served to the model on request)."""
    scene_json = scene.model_dump(mode="json")

    def parse_scene() -> str:
        return json.dumps({"parts": scene_json["parts"], "grid": scene_json.get("grid"),
                           "n_components": len(scene_json["components"])})

    def structural_score() -> str:
        if structural_result is None:
            return json.dumps({"available": False})
        return json.dumps({"score": structural_result.score, "peak_xy": structural_result.peak_xy})

    def composition_score() -> str:
        report = [str(r) for r in ctx.parser.composition_report(scene)[:5]] if composition is not None else []
        return json.dumps({"score": composition, "largest_deviations": report})

    def run_logicode(source: str) -> str:
        res = run_program(source, "check", {"scene": scene_json, "references": ctx.reference_scenes})
        return json.dumps({"ok": res.ok, "value": res.value, "error": res.error, "error_kind": res.error_kind})

    return [
        StructuredTool.from_function(parse_scene, name="parse_scene", args_schema=_NoArgs,
                                     description="Parts, counts, areas and positions in the query image and the references."),
        StructuredTool.from_function(structural_score, name="structural_score", args_schema=_NoArgs,
                                     description="Calibrated structural (scratch, dent, contamination) anomaly score."),
        StructuredTool.from_function(composition_score, name="composition_score", args_schema=_NoArgs,
                                     description="Rules-free score of how far the parts mix lies from the references."),
        StructuredTool.from_function(run_logicode, name="run_logicode", args_schema=_Program,
                                     description="Run a LogiCode program check(scene, references) in the sandbox."),
    ]


def run_agentic(chat_model: Any, messages: list, tools: list[StructuredTool], rules,
                max_steps: int = MAX_STEPS) -> tuple[list[Finding], list[ToolCall], str]:
    """Run the tool loop. Returns ``(findings, trace, note)``; never raises for model misbehaviour."""
    from prompts.multimodal import parse_inspection_answer

    trace: list[ToolCall] = []
    by_name = {t.name: t for t in tools}
    try:
        bound = chat_model.bind_tools(tools)
    except Exception as exc:
        return [], trace, f"Agentic mode unavailable: the model does not support tool calling ({exc})."
    messages = list(messages) + [HumanMessage(AGENTIC_INSTRUCTIONS)]
    answer = ""
    for _ in range(max_steps):
        try:
            reply: AIMessage = bound.invoke(messages)
        except Exception as exc:
            return [], trace, f"Agentic mode failed: the model errored ({exc})."
        messages.append(reply)
        if not reply.tool_calls:
            answer = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
            break
        for call in reply.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                output = json.dumps({"error": f"no tool named {call['name']!r}; tools: {sorted(by_name)}"})
            else:
                try:
                    output = tool.invoke(call.get("args") or {})
                except Exception as exc:  # bad arguments from the model: tell it, keep going
                    output = json.dumps({"error": str(exc)})
            trace.append(ToolCall(tool=call["name"], arguments=call.get("args") or {}, output=_short(output)))
            messages.append(ToolMessage(content=str(output), tool_call_id=call.get("id") or call["name"]))
    else:
        return [], trace, f"Agentic mode gave no answer within {max_steps} steps."

    rules_by_id = {r.id: r for r in rules.rules}
    findings = []
    for item in parse_inspection_answer(answer):
        rule = rules_by_id.get(str(item.get("rule_id")))
        if rule is None or item.get("passed") is None:  # unreadable: no claim either way
            continue
        findings.append(Finding(
            rule_id=rule.id, rule_text=rule.text, passed=bool(item.get("passed")),
            expected=item.get("expected"), observed=item.get("observed"),
            explanation=str(item.get("reason") or "")[:300], confidence=0.8, source="model",
        ))
    note = "" if findings else "Agentic mode: the model's answer held no per-rule findings."
    return findings, trace, note


def _short(output: Any, limit: int = 2000) -> Any:
    text = output if isinstance(output, str) else json.dumps(output, default=str)
    return text if len(text) <= limit else text[:limit] + "..."

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
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from .schema import Finding, ToolCall
from .text import EXPLANATION_CHARS, clip

MAX_STEPS = 8
#: what each tool is for, in the order the instructions name them (only tools bound are named)
_TOOL_HINTS = {
    "parse_scene": "parse_scene gives the query's parts, counts, sizes and positions next to the references'",
    "run_logicode": "run_logicode runs a Python check(scene, references) program in a sandbox",
    "structural_score": "structural_score gives a calibrated score in [0, 1] for scratches, dents and contamination",
    "composition_score": "composition_score gives a calibrated score in [0, 1] for how far the mix of parts lies "
                         "from the references",
    "layout_score": "layout_score gives a calibrated score in [0, 1] for where the arrangement differs from the "
                    "references (a missing, extra or moved part)",
}


def agentic_instructions(tool_names: list[str]) -> str:
    hints = [hint for name, hint in _TOOL_HINTS.items() if name in tool_names]
    return ("Use the tools to measure the query image before you answer: " + "; ".join(hints) + ". "
            "When you are done, answer with the JSON described above and nothing else.")


class _Program(BaseModel):
    source: str = Field(description="Python source defining check(scene, references) -> list of findings")


class LogicodeOutput(BaseModel):
    """What run_logicode returns: the program's findings, or why it failed."""

    ok: bool
    value: Any = Field(default=None, description="check()'s return value: a list of per-rule findings")
    error: str | None = None
    error_kind: str | None = Field(default=None, description="e.g. syntax, forbidden, timeout, memory, runtime")


def logicode_tool(*, scene_json: dict, reference_scenes: list[dict], run_program: Callable[..., Any]) -> StructuredTool:
    """The LogiCode runner bound to one image's scene. It lives on the agent side, not among the
    detector tools, because it needs the sandbox."""

    def run_logicode(source: str) -> dict:
        res = run_program(source, "check", {"scene": scene_json, "references": reference_scenes})
        return LogicodeOutput(ok=res.ok, value=res.value, error=res.error,
                              error_kind=res.error_kind).model_dump(mode="json")

    return StructuredTool.from_function(
        run_logicode, name="run_logicode", args_schema=_Program, handle_tool_error=True,
        description="Run a LogiCode program check(scene, references) in the sandbox, on the image under inspection.",
        metadata={"output_schema": LogicodeOutput.model_json_schema(mode="serialization"),
                  "output_model": LogicodeOutput.__name__},
    )


def build_tools(*, scene: Any, ctx: Any, structural_result: Any, composition: float | None,
                run_program: Callable[..., Any], layout_result: Any = None) -> list[BaseTool]:
    """Tools bound to one image's perception (computed once by the agent, served on request):
    the detectors' own tools (:func:`detectors.tools.bound_tools`) plus run_logicode."""
    from detectors.tools import bound_tools

    report = getattr(ctx.parser, "composition_report", None)
    deviations = report(scene) if composition is not None and callable(report) else []
    tools = bound_tools(scene=scene, structural=structural_result, composition=composition, deviations=deviations,
                        layout=layout_result)
    tools.append(logicode_tool(scene_json=scene.model_dump(mode="json"), reference_scenes=ctx.reference_scenes,
                               run_program=run_program))
    return tools


def run_agentic(chat_model: Any, messages: list, tools: list[BaseTool], rules, *, timeout_s: float,
                max_steps: int = MAX_STEPS) -> tuple[list[Finding], list[ToolCall], str]:
    """Run the tool loop. Returns ``(findings, trace, note)``; never raises for model misbehaviour.

    Every model call is bounded by ``timeout_s``; a call that runs over ends the loop with a
    note that says at which step and after which tool calls, and the agent falls back to the
    validated program.
    """
    from agent.llm import LLMError, LLMTimeoutError, invoke_message_with_timeout

    trace: list[ToolCall] = []
    by_name = {t.name: t for t in tools}
    try:
        bound = chat_model.bind_tools(tools)
    except Exception as exc:
        return [], trace, f"Agentic mode unavailable: the model does not support tool calling ({exc})."
    messages = list(messages) + [HumanMessage(agentic_instructions(list(by_name)))]
    answer = ""
    for step in range(1, max_steps + 1):
        try:
            reply = invoke_message_with_timeout(bound, messages, timeout_s)
        except LLMTimeoutError as exc:
            return [], trace, (f"Agentic mode stopped at step {step} of {max_steps}, after {len(trace)} tool "
                               f"call(s): {exc} (AgentConfig.generation_timeout_s).")
        except LLMError as exc:
            return [], trace, f"Agentic mode failed at step {step}: the model errored ({exc})."
        if not isinstance(reply, AIMessage):
            return [], trace, f"Agentic mode failed at step {step}: the model returned {type(reply).__name__}."
        messages.append(reply)
        invalid = list(getattr(reply, "invalid_tool_calls", None) or [])
        if not reply.tool_calls and not invalid:
            answer = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
            break
        for call in invalid:  # arguments that are not JSON: every call id needs its answer
            text = _as_text({"error": f"the arguments of {call.get('name')!r} are not valid JSON "
                                      f"({call.get('error') or 'unreadable'}); call it again with a JSON object"})
            trace.append(ToolCall(tool=str(call.get("name") or "?"), arguments={"raw": str(call.get("args"))[:500]},
                                  output=_short(text)))
            messages.append(ToolMessage(content=text, tool_call_id=call.get("id") or str(call.get("name"))))
        for call in reply.tool_calls:
            tool = by_name.get(call["name"])
            if tool is None:
                output: Any = {"error": f"no tool named {call['name']!r}; tools: {sorted(by_name)}"}
            else:
                try:
                    output = tool.invoke(call.get("args") or {})
                except Exception as exc:  # bad arguments from the model: tell it, keep going
                    output = {"error": str(exc)}
            text = _as_text(output)
            trace.append(ToolCall(tool=call["name"], arguments=call.get("args") or {}, output=_short(text)))
            messages.append(ToolMessage(content=text, tool_call_id=call.get("id") or call["name"]))
    findings = _findings(answer, rules)
    if not findings:
        # No readable answer within the steps, or an empty one: ask once more without tools. Some
        # backends cannot answer in words while tools are bound (llama.cpp's function-calling
        # grammar only lets the model name a tool or stop), and a model may keep calling tools.
        messages.append(HumanMessage(FINAL_ANSWER_REQUEST))
        try:
            reply = invoke_message_with_timeout(chat_model, messages, timeout_s)
        except (LLMTimeoutError, LLMError) as exc:
            return [], trace, f"Agentic mode gave no answer within {max_steps} steps, and the final request failed ({exc})."
        content = getattr(reply, "content", "")
        findings = _findings(content if isinstance(content, str) else json.dumps(content), rules)
    note = "" if findings else f"Agentic mode: no per-rule findings in the model's answer ({max_steps} steps at most)."
    return findings, trace, note


#: the last request, without tools, when the loop ended without a readable answer
FINAL_ANSWER_REQUEST = ("Stop calling tools now. Answer with the JSON described above, one entry per rule, "
                        "from what the tools have shown, and nothing else.")


def _findings(answer: str, rules) -> list[Finding]:
    from prompts.multimodal import parse_inspection_answer

    rules_by_id = {r.id: r for r in rules.rules}
    findings = []
    for item in parse_inspection_answer(answer or ""):
        rule = rules_by_id.get(str(item.get("rule_id")))
        if rule is None or item.get("passed") is None:  # unreadable: no claim either way
            continue
        findings.append(Finding(
            rule_id=rule.id, rule_text=rule.text, passed=bool(item.get("passed")),
            expected=item.get("expected"), observed=item.get("observed"),
            explanation=clip(item.get("reason") or "", EXPLANATION_CHARS), confidence=0.8, source="model",
        ))
    return findings


def _as_text(output: Any) -> str:
    """Tool results reach the model as JSON (str() of a dict would be Python syntax)."""
    return output if isinstance(output, str) else json.dumps(output, default=str)


def _short(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

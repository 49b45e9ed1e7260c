"""Tool calling through the prompt, for models whose backend has no tool API (transformers).

The bound tools are described in a system turn, and the model is asked to call them the way the
Hermes and Qwen model families are trained to (their own chat templates use the same tags)::

    <tool_call>
    {"name": "parse_scene", "arguments": {}}
    </tool_call>

Calls are read back from the generated text. Earlier calls and their results are written into
the conversation as text in the same format (results as user turns in ``<tool_response>``
tags), so that every chat template can render them, including those without a ``tool`` role.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool

from .errors import LLMError
from .messages import content_text

#: a block may be left unterminated when generation stopped right after the JSON
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def tool_names(tools: Sequence[dict]) -> list[str]:
    """The names of OpenAI tool dicts."""
    return [t["function"]["name"] for t in tools]


def openai_tools(tools: Sequence[Any], tool_choice: Any = None) -> list[dict]:
    """What ``bind_tools`` binds: the tools as OpenAI tool dicts, with ``tool_choice`` checked
    against them, so that a wrong choice is a clear error at bind time rather than at invoke."""
    formatted = [convert_to_openai_tool(tool) for tool in tools]
    if not formatted:
        raise LLMError("bind_tools needs at least one tool")
    forced_tool(tool_choice, tool_names(formatted))
    return formatted


def forced_tool(tool_choice: Any, names: Sequence[str]) -> str | None:
    """The tool a ``tool_choice`` asks for: a name, ``"any"`` (some tool), or None (model decides).

    ``"none"`` is returned as is: the model must answer without tools."""
    if tool_choice in (None, "auto", False):
        return None
    if tool_choice == "none":
        return "none"
    if tool_choice in ("any", "required", True):
        return names[0] if len(names) == 1 else "any"
    if isinstance(tool_choice, dict):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str):
        if tool_choice not in names:
            raise LLMError(f"tool_choice {tool_choice!r} is not among the bound tools {list(names)}")
        return tool_choice
    raise LLMError(f"unsupported tool_choice {tool_choice!r}")


def tools_instruction(tools: Sequence[dict], tool_choice: Any = None) -> str:
    """The system text that offers ``tools`` (OpenAI tool dicts) to the model."""
    forced = forced_tool(tool_choice, tool_names(tools))
    lines = ["You may call functions to help with the user's request. The functions, as JSON schemas:",
             "<tools>"]
    lines += [json.dumps(t["function"], ensure_ascii=False) for t in tools]
    lines += ["</tools>",
              "To call a function, answer with one block per call, and nothing else in that answer:",
              "<tool_call>",
              '{"name": <function-name>, "arguments": <args-json-object>}',
              "</tool_call>",
              "Each result comes back in a <tool_response> block. When you have what you need, answer "
              "without any <tool_call> block."]
    if forced == "none":
        lines.append("Do not call any function now: answer directly.")
    elif forced == "any":
        lines.append("Your next answer must call at least one function.")
    elif forced is not None:
        lines.append(f"Your next answer must call the function {forced!r}.")
    return "\n".join(lines)


def _call_text(name: str, args: Any) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"


def as_text_conversation(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Tool calls and tool results rewritten as plain turns in the prompt's tool format.

    Other messages are kept as they are (with their images)."""
    out: list[BaseMessage] = []
    for message in messages:
        if isinstance(message, AIMessage) and (message.tool_calls or message.invalid_tool_calls):
            pieces = [content_text(message.content).strip()]
            pieces += [_call_text(c["name"], c.get("args") or {}) for c in message.tool_calls]
            # what the model wrote, so that the error it is answered with refers to something it can see
            pieces += [f"<tool_call>\n{c.get('args') or ''}\n</tool_call>" for c in message.invalid_tool_calls]
            out.append(AIMessage(content="\n".join(p for p in pieces if p)))
        elif isinstance(message, ToolMessage):
            out.append(HumanMessage(content=f"<tool_response>\n{content_text(message.content)}\n</tool_response>"))
        else:
            out.append(message)
    return out


def with_tools(messages: Sequence[BaseMessage], tools: Sequence[dict], tool_choice: Any = None) -> list[BaseMessage]:
    """The conversation with the tools offered in its system turn (one is added if it has none)."""
    instruction = tools_instruction(tools, tool_choice)
    out = as_text_conversation(messages)
    if out and isinstance(out[0], SystemMessage):
        first = out[0]
        content = first.content
        if isinstance(content, str):
            merged: Any = f"{content}\n\n{instruction}" if content else instruction
        else:
            merged = list(content) + [{"type": "text", "text": "\n\n" + instruction}]
        return [SystemMessage(content=merged)] + out[1:]
    return [SystemMessage(content=instruction)] + out


def _loads_call(raw: str) -> tuple[str | None, Any, str | None]:
    """(name, arguments, error) of one call's JSON text."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        match = re.search(r'"name"\s*:\s*"([^"]+)"', raw)
        return (match.group(1) if match else None), None, f"not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None, None, 'a call must be a JSON object with a "name" string and an "arguments" object'
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string, OpenAI style
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return value["name"], None, f"the arguments string is not valid JSON ({exc.msg})"
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return value["name"], None, f'"arguments" must be a JSON object, not {type(args).__name__}'
    return value["name"], args, None


def parse_tool_calls(text: str, tool_names: Sequence[str]) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split generated text into (content, tool calls, invalid tool calls).

    Calls are ``<tool_call>`` blocks. A reply that is nothing but one JSON call of a bound tool
    (bare or in a code fence) also counts: small models often drop the tags. Unknown tool names
    are kept as calls; the caller answers them with the list of tools."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    raws = [m.group(1) for m in _TOOL_CALL.finditer(text)]
    content = _TOOL_CALL.sub("", text).strip() if raws else text.strip()
    if not raws:
        stripped = text.strip()
        fenced = _FENCE.match(stripped)
        candidate = fenced.group(1) if fenced else stripped
        if candidate.startswith("{"):
            name, args, error = _loads_call(candidate)
            if error is None and name in tool_names:
                raws, content = [candidate], ""
    for raw in raws:
        name, args, error = _loads_call(raw)
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        if error is None:
            calls.append(tool_call(name=name, args=args, id=call_id))
        else:
            invalid.append(invalid_tool_call(name=name, args=raw[:2000], id=call_id, error=error))
    return content, calls, invalid

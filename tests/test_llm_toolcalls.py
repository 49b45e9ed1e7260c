"""Tool calls through the prompt (agent.llm.toolcalls): what the model is told, and what is read back."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from agent.llm import LLMError
from agent.llm.toolcalls import as_text_conversation, forced_tool, parse_tool_calls, tools_instruction, with_tools

TOOLS = [{"type": "function", "function": {"name": "parse_scene", "description": "Parse the query.",
                                            "parameters": {"type": "object", "properties": {}}}},
         {"type": "function", "function": {"name": "run_logicode", "description": "Run a program.",
                                            "parameters": {"type": "object", "properties": {"source": {"type": "string"}},
                                                           "required": ["source"]}}}]
NAMES = ["parse_scene", "run_logicode"]


def test_tagged_calls_are_read_with_their_arguments_and_the_rest_is_content():
    text = ('I will look first.\n<tool_call>\n{"name": "parse_scene", "arguments": {}}\n</tool_call>\n'
            '<tool_call>{"name": "run_logicode", "arguments": {"source": "def check(s, r):\\n    return []"}}</tool_call>')
    content, calls, invalid = parse_tool_calls(text, NAMES)
    assert content == "I will look first."
    assert [(c["name"], c["args"]) for c in calls] == [
        ("parse_scene", {}), ("run_logicode", {"source": "def check(s, r):\n    return []"})]
    assert len({c["id"] for c in calls}) == 2 and invalid == []


def test_an_unterminated_last_call_still_counts():
    _, calls, _ = parse_tool_calls('<tool_call>\n{"name": "parse_scene", "arguments": {}}', NAMES)
    assert [c["name"] for c in calls] == ["parse_scene"]


@pytest.mark.parametrize("text", ['{"name": "parse_scene", "arguments": {}}',
                                  '```json\n{"name": "parse_scene", "parameters": {}}\n```',
                                  '{"name": "parse_scene", "arguments": "{}"}'])
def test_a_bare_call_of_a_bound_tool_counts(text):
    content, calls, invalid = parse_tool_calls(text, NAMES)
    assert content == "" and [(c["name"], c["args"]) for c in calls] == [("parse_scene", {})] and invalid == []


@pytest.mark.parametrize("text", ['[{"rule_id": "R1", "passed": true}]',  # the final answer
                                  '{"name": "screw", "arguments": {}}',  # JSON, but no bound tool's name
                                  "All rules pass."])
def test_answers_are_not_calls(text):
    content, calls, invalid = parse_tool_calls(text, NAMES)
    assert content == text and calls == [] and invalid == []


@pytest.mark.parametrize(("raw", "error"), [
    ('{"name": "run_logicode", "arguments": {"source": "x"', "not valid JSON"),
    ('{"name": "run_logicode", "arguments": [1]}', "must be a JSON object"),
    ('{"name": "run_logicode", "arguments": "{oops"}', "arguments string is not valid JSON"),
    ('["parse_scene"]', '"name" string'),
])
def test_unreadable_calls_are_invalid_calls_with_a_reason(raw, error):
    _, calls, invalid = parse_tool_calls(f"<tool_call>{raw}</tool_call>", NAMES)
    assert calls == [] and len(invalid) == 1
    assert error in invalid[0]["error"] and invalid[0]["args"] == raw
    if raw.startswith('{"name": "run_logicode"'):
        assert invalid[0]["name"] == "run_logicode"  # named, so the loop's answer can say which tool


def test_unknown_tools_are_kept_as_calls_for_the_loop_to_answer():
    _, calls, _ = parse_tool_calls('<tool_call>{"name": "measure", "arguments": {}}</tool_call>', NAMES)
    assert [c["name"] for c in calls] == ["measure"]


def test_the_instruction_lists_every_tool_and_the_choice():
    text = tools_instruction(TOOLS)
    assert '"name": "parse_scene"' in text and '"required": ["source"]' in text and "<tool_call>" in text
    assert "must call" not in text
    assert "must call at least one" in tools_instruction(TOOLS, "any")
    assert "must call the function 'run_logicode'" in tools_instruction(TOOLS, "run_logicode")
    assert "must call the function 'parse_scene'" in tools_instruction(TOOLS[:1], "required")
    assert "Do not call any function" in tools_instruction(TOOLS, "none")
    with pytest.raises(LLMError, match="not among the bound tools"):
        forced_tool("measure", NAMES)
    with pytest.raises(LLMError, match="unsupported tool_choice"):
        forced_tool(3, NAMES)
    assert forced_tool({"type": "function", "function": {"name": "parse_scene"}}, NAMES) == "parse_scene"


def test_history_becomes_plain_turns_and_the_tools_join_the_system_turn():
    history = [SystemMessage("You inspect products."), HumanMessage("Check R1."),
               AIMessage(content="", tool_calls=[{"name": "parse_scene", "args": {}, "id": "a"}],
                         invalid_tool_calls=[{"name": "run_logicode", "args": '{"source": ', "id": "b",
                                              "error": "not valid JSON", "type": "invalid_tool_call"}]),
               ToolMessage(content='{"parts": []}', tool_call_id="a"),
               ToolMessage(content='{"error": "not valid JSON"}', tool_call_id="b")]
    plain = as_text_conversation(history)
    assert [type(m).__name__ for m in plain] == ["SystemMessage", "HumanMessage", "AIMessage", "HumanMessage",
                                                 "HumanMessage"]
    assert plain[2].content == ('<tool_call>\n{"name": "parse_scene", "arguments": {}}\n</tool_call>\n'
                                '<tool_call>\n{"source": \n</tool_call>')
    assert plain[3].content == '<tool_response>\n{"parts": []}\n</tool_response>'
    offered = with_tools(history, TOOLS)
    assert offered[0].content.startswith("You inspect products.\n\nYou may call functions")
    assert len(offered) == len(history)
    assert isinstance(with_tools(history[1:], TOOLS)[0], SystemMessage)  # added when there is none
    blocks = with_tools([SystemMessage(content=[{"type": "text", "text": "Rules."}])], TOOLS)[0].content
    assert blocks[0] == {"type": "text", "text": "Rules."} and "<tools>" in blocks[1]["text"]

"""Agentic mode: a tool-calling model drives the inspection; the trace is kept.

The chat model is a scripted fake at the unit edge (it emits tool calls, then a JSON
answer); the tools, the perception and the sandbox are real.
"""

import json

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agent import Agent, AgentConfig
from detectors.data.synth import SynthGenerator

PROGRAM = (
    "import logicode as lc\n"
    "def check(scene, references):\n"
    "    return [lc.finding('r1', True, lc.count(scene), None, 'objects')]\n"
)


class ToolCallingFake(BaseChatModel):
    """Calls parse_scene and run_logicode, then answers; records the tool results it saw."""

    script: list = []
    seen_tool_outputs: list = []

    @property
    def _llm_type(self) -> str:
        return "tool-calling-fake"

    def bind_tools(self, tools, **kwargs):
        self.seen_tool_outputs.append(sorted(t.name for t in tools))
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen_tool_outputs += [m.content for m in messages if isinstance(m, ToolMessage)]
        reply = self.script.pop(0)
        return ChatResult(generations=[ChatGeneration(message=reply)])


def _answer(passed: bool) -> AIMessage:
    return AIMessage(json.dumps({
        "rules": [{"rule_id": "r1", "passed": passed, "observed": 3, "expected": 2, "reason": "three washers"}],
        "verdict": "normal" if passed else "anomalous",
    }))


@pytest.fixture(scope="module")
def refs():
    gen = SynthGenerator("screw_bag", seed=5, scale=0.3)
    return gen, [gen.sample(i).image for i in range(3)]


def test_tool_loop_produces_findings_and_a_trace(refs, tmp_path):
    gen, references = refs
    fake = ToolCallingFake(script=[
        AIMessage("", tool_calls=[{"name": "parse_scene", "args": {}, "id": "c1"}]),
        AIMessage("", tool_calls=[{"name": "run_logicode", "args": {"source": PROGRAM}, "id": "c2"},
                                  {"name": "no_such_tool", "args": {}, "id": "c3"}]),
        _answer(passed=False),
    ])
    agent = Agent(AgentConfig(cache_dir=tmp_path, mode="agentic", pinned_program=None), chat_model=fake, model_id="fake")
    ctx_rules = ["The bag holds exactly two washers."]
    # program generation also goes through the fake: give it a valid function first
    fake.script[:0] = [AIMessage("```python\ndef check_r1(scene, references):\n    return lc.finding('r1', lc.count(scene, 'p1') >= 1, lc.count(scene, 'p1'), 'at least 1')\n```")]
    v = agent.run(gen.sample(40).image, rules=ctx_rules, references=references)
    assert [c.tool for c in v.tool_trace] == ["parse_scene", "run_logicode", "no_such_tool"]
    assert json.loads(v.tool_trace[1].output)["ok"] is True
    assert "no tool named 'no_such_tool'" in v.tool_trace[2].output
    model_findings = [f for f in v.findings if f.source == "model"]
    assert model_findings and model_findings[0].passed is False and str(model_findings[0].observed) == "3"
    assert v.is_anomalous and "Rule r1 FAILED" in v.explanation
    assert any("parts" in str(o) for o in fake.seen_tool_outputs)


def test_tool_loop_without_an_answer_falls_back_to_the_program(refs, tmp_path):
    gen, references = refs
    loop = [AIMessage("", tool_calls=[{"name": "structural_score", "args": {}, "id": f"s{i}"}]) for i in range(8)]
    fake = ToolCallingFake(script=[
        AIMessage("```python\ndef check_r1(scene, references):\n    return lc.finding('r1', lc.count(scene, 'p1') >= 1, lc.count(scene, 'p1'), 'at least 1')\n```"), *loop,
    ])
    agent = Agent(AgentConfig(cache_dir=tmp_path, mode="agentic"), chat_model=fake, model_id="fake2")
    # after 8 steps of tool calls, one last request without tools; prose there is no answer either
    fake.script.append(AIMessage("I would need more measurements."))
    v = agent.run(gen.sample(41).image, rules=["At least one object."], references=references)
    assert "no per-rule findings" in v.logic_note and "8 steps" in v.logic_note
    assert [f.source for f in v.findings if f.rule_id == "r1"] == ["logicode"]
    assert len(v.tool_trace) == 8


def test_a_model_that_keeps_calling_tools_is_asked_once_more_without_them(refs, tmp_path):
    gen, references = refs
    loop = [AIMessage("", tool_calls=[{"name": "parse_scene", "args": {}, "id": f"p{i}"}]) for i in range(8)]
    fake = ToolCallingFake(script=[
        AIMessage("```python\ndef check_r1(scene, references):\n    return lc.finding('r1', lc.count(scene, 'p1') >= 1, lc.count(scene, 'p1'), 'at least 1')\n```"),
        *loop, _answer(passed=False),
    ])
    agent = Agent(AgentConfig(cache_dir=tmp_path, mode="agentic"), chat_model=fake, model_id="fake4")
    v = agent.run(gen.sample(44).image, rules=["The bag holds exactly two washers."], references=references)
    assert len(v.tool_trace) == 8 and not fake.script
    assert [f.passed for f in v.findings if f.source == "model"] == [False] and v.is_anomalous


def test_tool_arguments_that_are_not_json_are_answered_and_the_loop_goes_on(refs, tmp_path):
    gen, references = refs
    broken = {"name": "run_logicode", "args": '{"source": "def check(s', "id": "c9", "error": "Unterminated string",
              "type": "invalid_tool_call"}
    fake = ToolCallingFake(script=[
        AIMessage("```python\ndef check_r1(scene, references):\n    return lc.finding('r1', lc.count(scene, 'p1') >= 1, lc.count(scene, 'p1'), 'at least 1')\n```"),
        AIMessage("", invalid_tool_calls=[broken]),
        _answer(passed=True),
    ])
    agent = Agent(AgentConfig(cache_dir=tmp_path, mode="agentic"), chat_model=fake, model_id="fake5")
    v = agent.run(gen.sample(45).image, rules=["The bag holds exactly two washers."], references=references)
    assert [c.tool for c in v.tool_trace] == ["run_logicode"] and "not valid JSON" in v.tool_trace[0].output
    assert any("not valid JSON" in str(o) for o in fake.seen_tool_outputs)  # the model was told
    assert [f.passed for f in v.findings if f.source == "model"] == [True]


class SlowToolCaller(ToolCallingFake):
    """Answers the program request, then takes too long on its first tool-loop turn."""

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if self.script:
            return super()._generate(messages, stop, run_manager, **kwargs)
        import time

        time.sleep(3)
        return ChatResult(generations=[ChatGeneration(message=_answer(passed=False))])


def test_a_model_call_that_runs_over_its_budget_ends_the_loop(refs, tmp_path):
    gen, references = refs
    fake = SlowToolCaller(script=[
        AIMessage("```python\ndef check_r1(scene, references):\n    return lc.finding('r1', lc.count(scene, 'p1') >= 1, lc.count(scene, 'p1'), 'at least 1')\n```"),
    ])
    agent = Agent(AgentConfig(cache_dir=tmp_path, mode="agentic", generation_timeout_s=1), chat_model=fake,
                  model_id="slow")
    v = agent.run(gen.sample(42).image, rules=["At least one object."], references=references)
    assert "stopped at step 1 of 8" in v.logic_note and "generation_timeout_s" in v.logic_note
    assert [f.source for f in v.findings if f.rule_id == "r1"] == ["logicode"]  # the program stands in
    assert v.models["logicode"] == "slow"

"""Chat sessions: deterministic intents answered from the last verdict and scene; the rest via the chat model."""

import pytest

from agent.chat import ChatSession, verdict_text
from tests.surface_fakes import FakeAgent, draw


@pytest.fixture
def images(tmp_path):
    return {
        "one": draw(tmp_path / "one.png", 1, seed=1),
        "three": draw(tmp_path / "three.png", 3, seed=2),
        "ref1": draw(tmp_path / "ref1.png", 1, seed=3),
        "ref2": draw(tmp_path / "ref2.png", 1, seed=4),
    }


@pytest.fixture
def session():
    return ChatSession(FakeAgent(), rules=["There is exactly one red square.", "The tray is grey."])


def test_inspect_then_follow_ups(session, images):
    reply = session.handle(f"inspect {images['three']}")
    assert reply.intent == "inspect" and reply.verdict is not None
    assert reply.verdict.is_anomalous
    assert reply.overlay is not None and reply.overlay.size == (64, 64)
    assert "ANOMALOUS" in reply.text and "observed 3" in reply.text

    why = session.handle("why did rule 1 fail?")
    assert why.intent == "why"
    assert "Rule r1 (There is exactly one red square.) failed." in why.text
    assert "Expected 1; observed 3." in why.text
    assert "Evidence: red square at (" in why.text

    count = session.handle("How many red squares did you see?")
    assert count.intent == "count"
    assert "red square (p1, red): 3" in count.text
    assert "Rule r1" in count.text and "observed 3, expected 1" in count.text

    program = session.handle("show me the program")
    assert program.intent == "program"
    assert "def check(scene, references)" in program.text

    summary = session.handle("why")
    assert "anomalous" in summary.text and "[FAIL] r1" in summary.text


def test_unknown_rule_and_unknown_part_are_explained(session, images):
    session.handle(f"inspect {images['one']}")
    assert "There is no rule '7'" in session.handle("why did rule 7 fail?").text
    reply = session.handle("how many washers?")
    assert "no part or rule called 'washers'" in reply.text and "red square=1" in reply.text
    assert "passed (it did not fail)" in session.handle("why did r1 fail").text


def test_follow_ups_before_any_image_say_so(session):
    assert "inspect PATH" in session.handle("show me the program").text
    assert "inspect PATH" in session.handle("how many screws?").text


def test_changing_rules_and_references_changes_the_verdict(session, images):
    session.handle("rules: There is exactly one red square.")
    assert len(session.rules.rules) == 1
    added = session.handle("add rule The tray is grey.")
    assert "r2" in added.text and len(session.rules.rules) == 2

    ref = session.handle(f"ref add {images['ref1']} {images['ref2']}")
    assert "Added 2 reference(s)" in ref.text
    first = session.handle(f"inspect {images['one']}")
    assert first.verdict is not None and not first.verdict.is_anomalous
    assert session.agent.prepare_calls == 1
    session.handle(f"inspect {images['three']}")
    assert session.agent.prepare_calls == 1  # references fitted once for both images

    # three squares as the reference: now one square is the anomaly
    session.handle("ref clear")
    session.handle(f"ref add {images['three']}")
    again = session.handle(f"inspect {images['one']}")
    assert again.verdict.is_anomalous and session.agent.prepare_calls == 2
    assert session.handle("ref clear").text == "References cleared." and session.references == []
    assert "0 reference(s)" in session.handle("refs").text


def test_category_switches_to_the_builtin_pack(session):
    from prompts import builtin_categories

    name = builtin_categories()[0]
    reply = session.handle(f"category {name}")
    assert reply.intent == "rules" and session.rules.category == name
    assert session.rules.rules[0].text in reply.text


def test_bad_input_comes_back_as_a_reply(session, tmp_path):
    missing = session.handle(f"inspect {tmp_path / 'nope.png'}")
    assert missing.intent == "error" and "does not exist" in missing.text
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert "not a recognised image format" in session.handle(f"inspect {bad}").text
    assert "No built-in rule pack" in session.handle("category nosuchthing").text
    assert "No reference images match" in session.handle(f"ref add {tmp_path}/*.jpg").text


def test_free_questions_go_to_the_chat_model_with_the_verdict(session, images):
    session.handle(f"inspect {images['three']}")
    reply = session.handle("Is this product safe to ship?")
    assert reply.intent == "llm"
    assert reply.text.startswith("From what I saw: Verdict: ANOMALOUS")
    system = session.agent.chat_model.calls[-1][0].content
    assert "There is exactly one red square." in system and "red square (red) x3" in system


def test_model_failure_keeps_the_session_alive(images):
    class Broken(FakeAgent):
        @property
        def chat_model(self):
            raise RuntimeError("weights not installed")

        @chat_model.setter
        def chat_model(self, value):
            pass

    s = ChatSession(Broken(), rules=["There is exactly one red square."])
    reply = s.handle("hello?")
    assert "can't reach the language model" in reply.text and "weights not installed" in reply.text


def test_verdict_text_lists_every_finding(session, images):
    v = session.inspect(images["three"]).verdict
    text = verdict_text(v)
    assert text.startswith("Verdict: ANOMALOUS (score")
    assert "- [FAIL] r1: There is exactly one red square. — expected 1, observed 3" in text


def test_web_sessions_refuse_server_paths(tmp_path):
    from agent.chat import NO_SERVER_PATHS, ChatSession

    session = ChatSession(agent_factory=lambda: None, category="screw_bag", allow_server_paths=False)
    for command in ("inspect /etc/passwd", "ref add /root/*.png", "rules: /etc/rules.yaml"):
        reply = session.handle(command)
        assert reply.text == NO_SERVER_PATHS
    assert session.references == [] and session.image is None
    assert "exactly two screws" in session.handle("rules: The bag holds exactly two screws.").text
    # the web form's rules box goes to set_rules directly: a path there is refused too, unread
    secret = tmp_path / "secrets.yaml"
    secret.write_text("rules:\n  - The token is hunter2.\n")
    from prompts import RulesError

    with pytest.raises(RulesError) as info:
        session.set_rules(str(secret))
    assert str(info.value) == NO_SERVER_PATHS and "hunter2" not in str(info.value)
    assert "hunter2" not in session.rules.numbered()

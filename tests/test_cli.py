"""The ``logiscan`` CLI through Typer's test runner: every command, including bad input."""

import json
import socket

import pytest
from typer.testing import CliRunner

import agent.cli as cli
from agent.cli import app
from agent.schema import Verdict
from tests.surface_fakes import FakeAgent, draw, make_loco

REAL_MAKE_AGENT = cli.make_agent
runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that Rich tables do not fold


@pytest.fixture(autouse=True)
def fake_agent(monkeypatch):
    created = []

    def make(config=None):
        created.append(FakeAgent())
        return created[-1]

    monkeypatch.setattr(cli, "make_agent", make)
    return created


@pytest.fixture
def three(tmp_path):
    return draw(tmp_path / "three.png", 3, seed=2)


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "chat", "audit", "synth", "demo", "serve"):
        assert command in result.stdout


def test_inspect_prints_verdict_and_findings(three):
    result = runner.invoke(app, ["inspect", str(three), "--rule", "There is exactly one red square."])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ANOMALOUS" in out and "score" in out
    assert "There is exactly one red square." in out and "FAIL" in out
    assert "│ 1" in out and "│ 3" in out  # expected vs observed columns


def test_inspect_json_prints_only_the_verdict(three, tmp_path):
    overlay = tmp_path / "o" / "overlay.png"
    result = runner.invoke(app, ["inspect", str(three), "--rule", "There is exactly one red square.", "--json",
                                 "--overlay", str(overlay)])
    assert result.exit_code == 0, result.output
    verdict = Verdict.model_validate_json(result.stdout)  # nothing but JSON on stdout
    assert verdict.is_anomalous and verdict.findings[0].observed == 3
    assert overlay.is_file()


def test_inspect_with_references_and_rules_file(tmp_path, three):
    rules = tmp_path / "rules.yaml"
    rules.write_text("category: tray\nrules:\n  - There is exactly one red square.\n")
    refs = [draw(tmp_path / f"r{i}.png", 3, seed=i) for i in range(2)]
    result = runner.invoke(app, ["inspect", str(three), "--rules", str(rules), "--ref", str(refs[0]),
                                 "--ref", str(refs[1]), "--json"])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.stdout)
    assert verdict["is_anomalous"] is False and verdict["category"] == "tray"


@pytest.mark.parametrize("args, message", [
    (["--rules", "{tmp}/missing.yaml"], "does not exist"),
    (["--rules", "{tmp}/bad.yaml"], "Malformed rules file"),
    ([], "No rules given"),
    (["--category", "no_such_pack"], "No built-in rule pack for category 'no_such_pack'"),
    (["--rule", "ab"], "String should have at least 3 characters"),
    (["--rule", "One red square.", "--config", "{tmp}/nope.yaml"], "Config file"),
    (["--rule", "One red square.", "--config", "{tmp}/bad.yaml"], "not a valid agent configuration"),
    (["--rule", "One red square.", "-o", "{tmp}/overlay"], "no image extension"),
])
def test_inspect_bad_rules_give_clear_errors(tmp_path, three, args, message):
    (tmp_path / "bad.yaml").write_text("just_a_key: 1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["inspect", str(three), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()) and result.stdout == ""


def test_inspect_unreadable_image(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"GIF89a broken")
    result = runner.invoke(app, ["inspect", str(bad), "--rule", "There is one red square."])
    assert result.exit_code == 2 and "bad.png" in result.stderr
    missing = runner.invoke(app, ["inspect", str(tmp_path / "nope.png"), "--rule", "There is one red square."])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_chat_session(three):
    script = "\n".join([
        f"inspect {three}",
        "why did rule 1 fail?",
        "how many red squares did you see?",
        "show me the program",
        "quit",
    ]) + "\n"
    result = runner.invoke(app, ["chat"], input="rules: There is exactly one red square.\n" + script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Rules replaced (1)" in out
    assert "ANOMALOUS" in out
    assert "Expected 1; observed 3." in out
    assert "red square (p1, red): 3" in out
    assert "def check(scene, references)" in out


def test_chat_with_bad_rules_file(tmp_path):
    result = runner.invoke(app, ["chat", "--rules", str(tmp_path / "none.yaml")], input="quit\n")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_audit_command_writes_outputs_and_resumes(tmp_path):
    loco = make_loco(tmp_path / "data")
    out = tmp_path / "out"
    first = runner.invoke(app, ["audit", str(loco), "--out", str(out), "--limit", "4", "--k", "2"])
    assert first.exit_code == 0, first.output
    assert "AUROC" in first.stdout and "scored 4 now, 0 resumed" in first.stdout
    other_k = runner.invoke(app, ["audit", str(loco), "--out", str(out)])  # --k 4: other references
    assert other_k.exit_code == 2 and "other references" in other_k.stderr
    second = runner.invoke(app, ["audit", str(loco), "--out", str(out), "--k", "2"])
    assert second.exit_code == 0, second.output
    assert "scored 4 now, 4 resumed, 0 errors" in second.stdout
    for name in ("predictions.jsonl", "metrics.json", "report.html"):
        assert (out / name).is_file()


def test_audit_bad_input(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    draw(plain / "x.png", 1)
    result = runner.invoke(app, ["audit", str(plain), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not in MVTec LOCO layout" in result.stderr
    empty = make_loco(tmp_path / "data", n_good=0, n_logical=0, n_structural=0)
    result = runner.invoke(app, ["audit", str(empty), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "has an empty test split: nothing to score" in result.stderr
    full = make_loco(tmp_path / "full")
    bad_rules = runner.invoke(app, ["audit", str(full), "--rules", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o3")])
    assert bad_rules.exit_code == 2 and "Rules file" in bad_rules.stderr and "does not exist" in bad_rules.stderr


def test_audit_ctrl_c_exits_130_with_resume_hint(tmp_path, monkeypatch):
    class Interrupting(FakeAgent):
        def run_prepared(self, ctx, image, **kw):
            if "logical" in str(image):
                raise KeyboardInterrupt
            return super().run_prepared(ctx, image, **kw)

    monkeypatch.setattr(cli, "make_agent", lambda config=None: Interrupting())
    loco = make_loco(tmp_path / "data")
    result = runner.invoke(app, ["audit", str(loco), "--out", str(tmp_path / "o")])
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.stderr


def test_serve_port_in_use(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in result.stderr


def test_demo_calls_the_embedded_samples_runner(monkeypatch):
    import agent.demo

    seen = []
    monkeypatch.setattr(agent.demo, "run_demo", lambda console: seen.append(console) or console.print("demo ran"))
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0 and "demo ran" in result.stdout and len(seen) == 1


def test_synth_writes_a_loco_layout_dataset(tmp_path):
    from detectors.data.synth import CATEGORIES

    name = CATEGORIES[0]
    out = tmp_path / "synth"
    result = runner.invoke(app, ["synth", str(out), "--seed", "1", "--categories", name, "--per-split", "2",
                                 "--scale", "0.1"])
    assert result.exit_code == 0, result.output
    assert (out / name / "train" / "good").is_dir()
    assert any((out / name / "test").rglob("*.png"))
    bad = runner.invoke(app, ["synth", str(out), "--categories", "nope"])
    assert bad.exit_code == 2 and "unknown synthetic categories" in bad.stderr


@pytest.mark.slow
def test_inspect_json_with_the_real_agent(tmp_path, monkeypatch):
    """The real Agent (real perception, sandbox and fusion; a pinned program instead of the LLM)."""
    from tests.surface_fakes import real_agent_config, synth_screw_bag

    monkeypatch.setattr(cli, "make_agent", REAL_MAKE_AGENT)
    cat = synth_screw_bag(tmp_path / "data")
    config = real_agent_config(tmp_path / "cfg")
    image = sorted((cat / "test" / "logical_anomalies").glob("*.png"))[0]
    refs = sorted((cat / "train" / "good").glob("*.png"))
    overlay = tmp_path / "overlay.png"
    args = ["inspect", str(image), "--category", "screw_bag", "--config", str(config), "--json",
            "--overlay", str(overlay)]
    for ref in refs:
        args += ["--ref", str(ref)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    verdict = Verdict.model_validate_json(result.stdout)
    assert verdict.category == "screw_bag" and verdict.image == str(image)
    assert verdict.program is not None and verdict.program.origin == "pinned"
    by_id = {f.rule_id: f for f in verdict.findings}
    assert by_id["r1"].source == "logicode" and isinstance(by_id["r1"].observed, int)
    assert {"structural", "composition"} <= set(by_id)
    assert overlay.is_file()

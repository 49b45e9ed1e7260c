"""End to end with the real CPU default model (Qwen2.5-Coder-1.5B through llama.cpp).

Nothing is faked: the model writes the LogiCode checks, they are validated on the
references and run in the sandbox on real perception of synthetic scenes.
"""

import pytest

from agent import Agent, AgentConfig, Verdict
from detectors.data.synth import SynthGenerator
from sandbox import run_program

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_agent(tmp_path_factory):
    from agent.llm import WeightsError, model_path

    try:
        model_path()
    except WeightsError as exc:  # make test installs it; a bare checkout says how
        pytest.skip(f"default model not installed: {exc}")
    return Agent(AgentConfig(cache_dir=tmp_path_factory.mktemp("e2e-cache"), generation_timeout_s=600))


def test_default_model_writes_checks_and_the_verdict_is_grounded(default_agent):
    gen = SynthGenerator("splicing_connectors", seed=11, scale=0.4)
    refs = [gen.sample(i).image for i in range(4)]
    ctx = default_agent.prepare(category="splicing_connectors", references=refs)
    program = ctx.program
    assert program is not None
    assert program.model_id.startswith("llamacpp:qwen2.5-coder-1.5b")
    assert [f.rule_id for f in program.functions] == [r.id for r in ctx.rules.rules]
    for function in program.functions:
        # Each rule has a validated check, or the attempts that failed are on record.
        assert function.ok or (function.attempts >= 1 and function.problems)
    # Every check that survived validation passes on every reference, by construction.
    for scene in ctx.reference_scenes:
        res = run_program(program.source, "check", {"scene": scene, "references": ctx.reference_scenes})
        assert res.ok and all(f["passed"] for f in res.value)

    good = default_agent.run_prepared(ctx, gen.sample(60).image)
    bad = default_agent.run_prepared(ctx, gen.sample(61, kind="logical", anomaly_type="missing_connector").image)
    assert isinstance(good, Verdict) and isinstance(bad, Verdict)
    assert bad.score > good.score and bad.is_anomalous
    for verdict in (good, bad):
        for f in verdict.failed_findings:
            if f.source == "logicode":
                assert f"Rule {f.rule_id} FAILED" in verdict.explanation
        for rule_id in program.unavailable:
            assert rule_id in verdict.logic_note
    # Preparing the same rules and references again reuses the program (unless the model failed).
    if not program.model_failed:
        again = default_agent.prepare(category="splicing_connectors", references=refs)
        assert again.program.sha256 == program.sha256

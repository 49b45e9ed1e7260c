"""Score fusion and deterministic explanations."""

from agent.config import FusionConfig
from agent.fusion import explain, fuse
from agent.schema import Finding


def _f(rule_id, passed, confidence=1.0, source="logicode", expected=2, observed=3):
    return Finding(rule_id=rule_id, rule_text=f"rule {rule_id}", passed=passed, expected=expected,
                   observed=observed, confidence=confidence, source=source)


def test_confident_failed_rule_crosses_the_threshold_and_evidence_orders():
    cfg = FusionConfig()
    low, _ = fuse([_f("r1", False), _f("r2", True)], structural=0.1, composition=0.2, config=cfg)
    high, comps = fuse([_f("r1", False), _f("r2", True)], structural=0.9, composition=0.2, config=cfg)
    assert 0.5 < low < high <= 1.0
    assert comps == {"structural": 0.9, "composition": 0.2, "logic": 0.5}


def test_passing_rules_leave_the_detector_evidence():
    score, _ = fuse([_f("r1", True)], structural=0.3, composition=0.45, config=FusionConfig())
    assert score == 0.45
    score, _ = fuse([_f("r1", True)], structural=0.8, composition=0.1, config=FusionConfig())
    assert score == 0.8


def test_crashed_checks_raise_but_do_not_decide():
    score, _ = fuse([_f("r1", False, confidence=0.5), _f("r2", True)], structural=0.1, composition=0.1,
                    config=FusionConfig())
    assert 0.1 < score < 0.5


def test_weights_and_missing_sources():
    cfg = FusionConfig(weight_structural=0.5)
    score, comps = fuse([], structural=0.8, composition=None, config=cfg)
    assert score == 0.4 and "composition" not in comps


def test_explanation_names_the_failed_rule_with_values():
    findings = [_f("r1", False), _f("r2", True)]
    text = explain(findings, score=0.9, is_anomalous=True, threshold=0.5,
                   components={"structural": 0.1, "composition": 0.7}, logic_note="",
                   composition_notes=["part p2 count 3 vs 2"])
    assert text.startswith("ANOMALOUS (score 0.90, threshold 0.50).")
    assert 'Rule r1 FAILED — "rule r1": expected 2, observed 3.' in text
    assert "Passed: r2." in text and "part p2 count 3 vs 2" in text

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
    cfg = FusionConfig(weight_composition=1.0)  # two detectors of equal weight
    score, _ = fuse([_f("r1", True)], structural=0.5, composition=0.5, config=cfg)
    assert abs(score - 0.5) < 1e-9  # both detectors at their references' edge: at the threshold
    score, _ = fuse([_f("r1", True)], structural=0.3, composition=0.45, config=cfg)
    assert 0.3 < score < 0.45
    # one detector far beyond its edge decides on its own; one just beyond it does not
    assert fuse([], structural=0.9, composition=0.1, config=cfg)[0] > 0.5
    assert fuse([], structural=0.6, composition=0.1, config=cfg)[0] < 0.5
    # evidence is monotone in each detector
    a, b = (fuse([], structural=s, composition=0.3, config=cfg)[0] for s in (0.4, 0.7))
    assert a < b


def test_the_power_moves_between_agreement_and_the_strongest_detector():
    low = fuse([], structural=0.8, composition=0.2, config=FusionConfig(power=0.1))[0]
    mid = fuse([], structural=0.8, composition=0.2, config=FusionConfig(power=1.0))[0]
    high = fuse([], structural=0.8, composition=0.2, config=FusionConfig(power=64))[0]
    assert low < mid < high and abs(high - 0.79) < 0.02  # near the maximum


def test_crashed_checks_raise_but_do_not_decide():
    score, _ = fuse([_f("r1", False, confidence=0.5), _f("r2", True)], structural=0.1, composition=0.1,
                    config=FusionConfig())
    assert 0.1 < score < 0.5


def test_weights_and_missing_sources():
    score, comps = fuse([], structural=0.8, composition=None, config=FusionConfig())
    assert abs(score - 0.8) < 1e-9 and "composition" not in comps
    # weight 0 leaves a detector out of the score (it is still reported)
    score, comps = fuse([], structural=0.8, composition=0.1, config=FusionConfig(weight_composition=0.0))
    assert abs(score - 0.8) < 1e-9 and comps["composition"] == 0.1
    trusted = fuse([], structural=0.8, composition=0.1, config=FusionConfig(weight_composition=0.1))[0]
    assert trusted > fuse([], structural=0.8, composition=0.1, config=FusionConfig())[0]
    assert fuse([], structural=None, composition=None, config=FusionConfig())[0] == 0.0


def test_the_layout_detector_is_a_third_evidence_source():
    cfg = FusionConfig()
    score, comps = fuse([], structural=0.2, composition=0.2, layout=0.95, config=cfg)
    assert comps["layout"] == 0.95 and score > 0.5  # far beyond its edge: it decides on its own
    assert fuse([], structural=0.2, composition=0.2, layout=0.3, config=cfg)[0] < 0.5
    assert fuse([], structural=0.2, composition=0.2, config=cfg)[1].keys() == {"structural", "composition"}
    text = explain([], score=score, is_anomalous=True, threshold=0.5, components=comps,
                   layout_peak="(40, 40), top left of the image; this image lacks p2 (orange) there")
    assert "arrangement differs" in text and "lacks p2 (orange)" in text
    note = "Logic check unavailable for rule(s) r1 (it failed a normal reference)."
    text = explain([], score=score, is_anomalous=True, threshold=0.5, components=comps, logic_note=note)
    assert note in text and text.index("arrangement differs") < text.index(note)  # the reason first


def test_explanation_names_the_failed_rule_with_values():
    findings = [_f("r1", False), _f("r2", True)]
    text = explain(findings, score=0.9, is_anomalous=True, threshold=0.5,
                   components={"structural": 0.1, "composition": 0.7}, logic_note="",
                   composition_notes=["part p2 count 3 vs 2"])
    assert text.startswith("ANOMALOUS (score 0.90, threshold 0.50).")
    assert 'Rule r1 FAILED — "rule r1": expected 2, observed 3.' in text
    assert "Passed: r2." in text and "part p2 count 3 vs 2" in text


def test_a_saturated_detector_under_a_high_power_does_not_overflow():
    # odds of 1e6 to the power 64 overflow a float; the power mean is taken in log space
    score, _ = fuse([], structural=0.99999, composition=0.1, layout=0.2, config=FusionConfig(power=64))
    assert 0.99 < score <= 1.0
    assert fuse([], structural=1e-9, composition=1e-9, config=FusionConfig(power=0.01))[0] < 1e-3


def test_a_nan_detector_score_is_left_out_not_taken_as_certain():
    score, comps = fuse([], structural=0.2, composition=float("nan"), layout=0.3, config=FusionConfig())
    assert score == fuse([], structural=0.2, composition=None, layout=0.3, config=FusionConfig())[0]
    assert "composition" not in comps
    assert fuse([], structural=float("nan"), composition=None, config=FusionConfig())[0] == 0.0


def test_long_reasons_are_clipped_at_a_word():
    from agent.text import clip

    reason = "Running it on the images failed (runtime_error): line 4: IndexError: list index out of range"
    assert clip(reason, 200) == reason
    short = clip(reason, 80)
    assert len(short) <= 80 and short.endswith("…") and "out of ran…" not in short
    assert reason.startswith(short[:-1])
    assert clip("a\n  b", 10) == "a b"  # one line
    assert clip("x" * 50, 10) == "x" * 9 + "…"  # no word to cut at: cut at the limit


def test_values_made_of_scene_objects_read_as_what_they_are():
    """Small models return the scene's own components or parts as a finding's value; the
    verdict says how many and of which part, not a JSON dump (or an empty ``[]``)."""
    from agent.fusion import finding_sentence
    from agent.text import format_value

    screw = {"id": 4, "part": "p3", "bbox": [10, 20, 60, 30], "area": 512.0, "color_name": "gray"}
    nut = {**screw, "id": 5, "part": "p5"}
    assert format_value([]) == "none"
    assert format_value([screw]) == "1 component of p3"
    assert format_value([screw, {**screw, "id": 6}, nut]) == "3 components (p3 x2, p5 x1)"
    assert format_value([{"id": "p3", "count": 2, "description": "p3: gray, elongated"},
                         {"id": "p5", "count": 0, "description": "p5: gray, round"}]) == "parts p3 (2), p5 (0)"
    assert format_value([0.123456, 2, "red", None]) == "[0.123, 2, red, None]"
    assert format_value({"left": 2.0004}) == "{left: 2}"
    assert format_value("two screws") == "two screws" and format_value(7) == "7"
    assert len(format_value(list(range(500)))) <= 120  # clipped, never a page of numbers
    sentence = finding_sentence(Finding(rule_id="r1", rule_text="Exactly two screws.", passed=False,
                                        expected=2, observed=[screw], source="logicode"))
    assert "expected 2, observed 1 component of p3" in sentence and "bbox" not in sentence

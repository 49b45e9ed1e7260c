"""Core data contracts: validation, loading rules in every accepted form, JSON round-trips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.schema import Finding, ProgramInfo, Region, Verdict
from prompts import NormalityRules, RulesError, builtin_categories, load_rules

LOCO = {"breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"}


def test_builtin_rule_packs_cover_the_five_loco_categories():
    assert set(builtin_categories()) == LOCO
    for category in LOCO:
        rules = load_rules(category=category)
        assert rules.category == category
        assert rules.class_context
        assert len(rules.rules) >= 2
        assert len({r.id for r in rules.rules}) == len(rules.rules)


def test_screw_bag_pack_has_structured_counts():
    rules = NormalityRules.for_category("screw_bag")
    counts = {r.check.subject: r.check.value for r in rules.rules if r.check and r.check.attribute == "count"}
    assert counts == {"screw": 2, "nut": 2, "washer": 2}


def test_rules_from_list_text_and_file(tmp_path):
    from_list = load_rules(["Exactly two screws.", "One long and one short screw."], category="screw_bag")
    assert [r.id for r in from_list.rules] == ["r1", "r2"]
    assert from_list.category == "screw_bag"
    assert "bag" in from_list.class_context  # taken from the built-in pack when not given

    from_text = load_rules("- Exactly 15 pushpins.\n- One pin per compartment.")
    assert [r.text for r in from_text.rules] == ["Exactly 15 pushpins.", "One pin per compartment."]

    sentences = load_rules("There are two nuts. There are two washers.")
    assert len(sentences.rules) == 2

    path = tmp_path / "rules.yaml"
    path.write_text("category: widget\nclass_context: A widget.\nrules:\n  - Has one knob.\n  - {id: k2, text: The knob is red.}\n")
    loaded = load_rules(str(path))
    assert loaded.category == "widget" and [r.id for r in loaded.rules] == ["r1", "k2"]

    jpath = tmp_path / "rules.json"
    jpath.write_text(json.dumps({"category": "w", "rules": ["One knob."]}))
    assert load_rules(jpath).rules[0].text == "One knob."


@pytest.mark.parametrize(
    "content, message",
    [
        ("rules: []\n", "'rules' must be a non-empty list"),
        ("category: x\n", "missing the 'rules' list"),
        ("rules:\n  - 42\n", "rule 1 must be a string or a mapping"),
        ("rules: [\n", "is not valid YAML"),
        ("rules:\n  - {id: 'bad id!', text: 'A rule.'}\n", "String should match pattern"),
        ("rules:\n  - {id: a, text: One.}\n  - {id: a, text: Two.}\n", "rule ids must be unique"),
        ("rules:\n  - {id: R1, text: One.}\n  - {id: r1, text: Two.}\n", "'R1' and 'r1' differ only in case"),
        ("rules:\n  - {id: a.b, text: One.}\n  - {id: a-b, text: Two.}\n", "give them distinct ids"),
        ("just a string", "expected a mapping with a 'rules' list"),
    ],
)
def test_malformed_rules_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "rules.yaml"
    path.write_text(content)
    with pytest.raises(RulesError) as err:
        load_rules(path)
    assert message in str(err.value)
    assert "rules.yaml" in str(err.value)


def test_rules_errors_for_missing_inputs(tmp_path):
    with pytest.raises(RulesError, match="does not exist"):
        load_rules(str(tmp_path / "nope.yaml"))
    with pytest.raises(RulesError, match="No built-in rule pack for category 'bicycle'"):
        load_rules(category="bicycle")
    with pytest.raises(RulesError, match="No rules given"):
        load_rules()
    with pytest.raises(RulesError, match="the rule text is empty"):
        load_rules("   ")
    with pytest.raises(RulesError, match="Cannot use rules of type int"):
        load_rules(5)


def test_rules_digest_is_stable_and_sensitive():
    a = load_rules(["One knob."], class_context="A widget.")
    b = load_rules(["One knob."], class_context="A widget.")
    c = load_rules(["Two knobs."], class_context="A widget.")
    assert a.digest() == b.digest() != c.digest()
    assert NormalityRules.from_data(json.loads(a.model_dump_json())) == a
    assert load_rules(a.to_yaml().replace("\n", "\n")) is not None


def test_rules_digest_does_not_depend_on_pythons_hash_seed(tmp_path):
    # a YAML set's order changes with the hash seed; the digest (a cache key) and the prompt must not
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - text: The cable is red, green, blue or white.\n    check:\n"
                     "      attribute: color\n      subject: cable\n      op: in\n"
                     "      value: !!set {red: null, green: null, blue: null, white: null}\n")
    script = ("import sys; from prompts import load_rules; r = load_rules(sys.argv[1]); "
              "print(r.digest(), r.rules[0].check)")
    root = Path(__file__).resolve().parents[1]
    outs = {subprocess.run([sys.executable, "-c", script, str(rules)], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1, outs
    assert "['blue', 'green', 'red', 'white']" in outs.pop()


def test_rules_that_would_crash_or_swamp_the_caller_are_clear_errors(tmp_path):
    with pytest.raises(RulesError, match="rules.0.text: String should have at least 3 characters"):
        load_rules(["ab"])
    with pytest.raises(RulesError, match="at most 50 items"):
        load_rules([f"Rule number {i}." for i in range(51)])
    with pytest.raises(RulesError, match="class_context: String should have at most 2000"):
        load_rules(["One knob."], class_context="x" * 2001)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("rules:\n  - Zwei Schrauben, gro\xdfe.\n".encode("latin-1"))
    with pytest.raises(RulesError, match="not UTF-8 text"):
        load_rules(latin)
    # a few hundred bytes of YAML anchors that expand to a billion items
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
        f"*a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb.write_text("\n".join(levels) + "\nrules:\n  - text: Many values.\n    check: {attribute: color, "
                    "subject: cable, op: in, value: *a8}\n")
    with pytest.raises(RulesError, match="at most 1000 items"):
        load_rules(bomb)
    huge = tmp_path / "huge.yaml"
    huge.write_text("rules:\n  - One knob.\n" + "#" * 1_000_001)
    with pytest.raises(RulesError, match="at most 1000000 bytes"):
        load_rules(huge)


def test_verdict_round_trips_through_json():
    finding = Finding(
        rule_id="r1", rule_text="Exactly 15 pins.", passed=False, expected=15, observed=14,
        explanation="one compartment is empty", confidence=0.9,
        evidence=[Region(bbox=(10, 20, 30, 40), label="empty cell", mask_rle=[3, 4, 5])],
    )
    verdict = Verdict(
        score=0.83, is_anomalous=True, threshold=0.5, findings=[finding],
        explanation="Rule r1 FAILED: expected 15, observed 14.", category="pushpins",
        component_scores={"logic": 1.0, "structural": 0.2}, anomaly_map_path="maps/x.png",
        program=ProgramInfo.of("def check(scene, references):\n    return []\n", model_id="m"),
        timings={"parse": 0.1}, models={"structural": "PatchCore"},
    )
    text = verdict.model_dump_json()
    again = Verdict.model_validate_json(text)
    assert again == verdict
    assert again.failed_findings[0].observed == 14
    assert len(again.program.sha256) == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"score": 1.5}, "less than or equal to 1"),
        ({"score": -0.1}, "greater than or equal to 0"),
        ({"threshold": 2}, "less than or equal to 1"),
    ],
)
def test_verdict_validation(kwargs, message):
    base = {"score": 0.5, "is_anomalous": True, "threshold": 0.5}
    with pytest.raises(ValueError, match=message):
        Verdict(**{**base, **kwargs})


def test_region_requires_ordered_box():
    with pytest.raises(ValueError, match="x0 <= x1"):
        Region(bbox=(10, 0, 5, 5))

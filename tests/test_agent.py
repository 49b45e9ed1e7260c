"""Agent orchestration with real perception and the real sandbox.

The language model is the only fake: a deterministic chat model at the unit edge that
answers every rule request with a reference-relative count check, reading the function
name it is asked for from the request (as a real model does).
"""

import json
import re

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from agent import Agent, AgentConfig, Verdict
from agent.text import format_value
from detectors.data.synth import SynthGenerator

COUNT_CHECK = """```python
def check_{rid}(scene, references):
    outside = []
    for p in scene["parts"]:
        n = lc.count(scene, p["id"])
        if not lc.within_references(n, references, lambda s: lc.count(s, p["id"]), tolerance=0.0):
            outside.append(p["id"])
    return lc.finding("{rid}", len(outside) == 0, outside, [], "parts whose count is outside the references' range")
```"""


class CountingModel(BaseChatModel):
    """Writes the same generic per-part count check for any rule; records how often it was asked."""

    calls: int = 0
    answer: str = COUNT_CHECK

    @property
    def _llm_type(self) -> str:
        return "counting-fake"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls += 1
        text = messages[-1].content if isinstance(messages[-1].content, str) else str(messages[-1].content)
        if "map the rules" in text:  # the grounding request: every rule is about p1
            mapping = {rid: ["p1"] for rid in re.findall(r"^(\w+): ", text.split("# Rules")[-1], re.M)}
            return ChatResult(generations=[ChatGeneration(message=AIMessage(json.dumps(mapping)))])
        asked = re.findall(r"def check_(\w+)\(scene, references\)", text)
        rid = asked[-1] if asked else re.search(r"rule (\w+)", text).group(1)
        reply = self.answer.replace("{rid}", rid)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(reply))])


@pytest.fixture(scope="module")
def screw_bag():
    gen = SynthGenerator("screw_bag", seed=3, scale=0.3)
    refs = [gen.sample(i).image for i in range(4)]
    return gen, refs


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return Agent(AgentConfig(cache_dir=cache), chat_model=CountingModel(), model_id="counting-fake")


TRAY_RULES = ["Two orange parts lie on the left.", "One brown part lies on the right."]


def test_checks_are_also_validated_on_altered_copies_of_the_references(tmp_path, monkeypatch):
    # the generator gets the parses of 4 slightly altered copies of each reference (see
    # tests/test_logicode.py for what it does with them); a steady count check passes them
    from agent.logicode import LogiCodeGenerator
    from tests.test_layout import tray

    seen = {}
    original = LogiCodeGenerator.generate

    def spy(self, *args, **kwargs):
        seen["variants"] = kwargs.get("variant_scenes")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LogiCodeGenerator, "generate", spy)
    # no structural detector: its fit is most of an agent's preparation, and nothing here needs it
    config = AgentConfig(cache_dir=tmp_path, perception={"structural": False})
    agent = Agent(config, chat_model=CountingModel(), model_id="counting-fake")
    ctx = agent.prepare(rules=TRAY_RULES, references=[tray(s) for s in range(3)])
    variants = seen["variants"]
    assert [i for i, _ in variants] == [0] * 4 + [1] * 4 + [2] * 4
    assert all(scene["image_size"] == [200, 160] and scene["parts"] for _, scene in variants)
    assert ctx.program.checked_rule_ids == ["r1", "r2"]


class RecordingModel(CountingModel):
    """A CountingModel that keeps the text of every request."""

    requests: list = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.requests.append("\n".join(str(m.content) for m in messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_the_request_lists_the_scene_helpers_and_not_the_mask_helpers(tmp_path):
    # the check receives a parsed scene: helpers for pixel masks would only mislead the model
    from tests.test_layout import tray

    model = RecordingModel(requests=[])
    config = AgentConfig(cache_dir=tmp_path, perception={"structural": False})
    Agent(config, chat_model=model, model_id="recording-fake").prepare(
        rules=TRAY_RULES, references=[tray(s) for s in range(3)])
    assert len(model.requests) == 2  # one request per rule, both checks valid at once
    for text in model.requests:
        assert "lc.count(scene" in text and "lc.components(scene" in text
        assert "lc.count_components(" not in text and "lc.centroids(" not in text


def test_an_advisory_check_names_its_rule_in_an_anomalous_verdict_and_decides_nothing(tmp_path, monkeypatch):
    # copies of the references that lose a part stand in for a parse that wanders: the count
    # check passes the references, fails the copies, and is kept as advisory
    import agent.core
    from agent.core import ADVISORY_NOTE
    from tests.test_layout import tray

    monkeypatch.setattr(agent.core, "slight_variants", lambda image: [tray(99, skip=0)])
    config = AgentConfig(cache_dir=tmp_path, perception={"structural": False})  # the layout detector decides
    inspector = Agent(config, chat_model=CountingModel(), model_id="counting-fake")
    ctx = inspector.prepare(rules=TRAY_RULES, references=[tray(s) for s in range(4)])
    assert ctx.program.checked_rule_ids == [] and ctx.program.advisory_rule_ids == ["r1", "r2"]
    assert "keep their unstable check as advisory" in ctx.logic_note

    good = inspector.run_prepared(ctx, tray(50))
    assert not good.is_anomalous and not good.logic_available
    assert not [f for f in good.findings if f.source == "advisory"]

    missing = inspector.run_prepared(ctx, tray(51, skip=0))
    assert missing.is_anomalous  # the detectors decide
    named = [f for f in missing.findings if f.source == "advisory"]
    assert named and all(not f.passed and f.confidence == 0.5 for f in named)
    assert f"Rule {named[0].rule_id} likely violated" in missing.explanation and ADVISORY_NOTE in missing.explanation
    assert "FAILED" not in missing.explanation
    assert "logic" not in missing.component_scores  # the score is the detectors' alone


STATED_COUNT_CHECK = """```python
def check_{rid}(scene, references):
    n = lc.count(scene)
    return lc.finding("{rid}", n >= 1, n, ">= 1", "objects in view")
```"""


def test_zero_shot_verdicts_say_what_their_checks_rest_on(tmp_path):
    # without references there is no detector and nothing to validate a check on: the verdict
    # says so, and a check that needs references is not claimed to be covered by detectors
    from agent.core import ZERO_SHOT_NOTE
    from tests.test_layout import tray

    stated = Agent(AgentConfig(cache_dir=tmp_path / "a"), chat_model=CountingModel(answer=STATED_COUNT_CHECK),
                   model_id="stated-fake")
    v = stated.run(tray(60), rules=["At least one object lies in the tray."])
    assert not v.is_anomalous and v.logic_available
    assert ZERO_SHOT_NOTE in v.logic_note and ZERO_SHOT_NOTE in v.explanation
    assert set(v.component_scores) == {"logic"}

    relative = Agent(AgentConfig(cache_dir=tmp_path / "b"), chat_model=CountingModel(), model_id="counting-fake")
    v = relative.run(tray(60), rules=["At least one object lies in the tray."])
    assert not v.logic_available and "needs at least one reference" in v.logic_note
    assert "no detector stands in for them" in v.logic_note and "cover them" not in v.logic_note
    assert ZERO_SHOT_NOTE not in v.logic_note


def test_run_returns_a_grounded_verdict(agent):
    # A product whose parse is steady, so a count check can pass every normal reference judged
    # against the other references (the synthetic screw bag's counts wander at this scale).
    from tests.test_layout import tray

    ctx = agent.prepare(rules=TRAY_RULES, references=[tray(s) for s in range(4)])
    assert ctx.program is not None and ctx.program.checked_rule_ids == ["r1", "r2"]
    good = agent.run_prepared(ctx, tray(50))
    missing = agent.run_prepared(ctx, tray(51, skip=0))
    assert isinstance(good, Verdict) and 0.0 <= good.score <= 1.0
    assert missing.score > good.score
    assert missing.is_anomalous
    extra = missing
    failed = extra.failed_findings
    assert failed and failed[0].source == "logicode"
    assert failed[0].expected == [] and failed[0].observed  # the parts whose count left the range
    assert f"Rule {failed[0].rule_id} FAILED" in extra.explanation
    assert f"expected none, observed {format_value(failed[0].observed)}" in extra.explanation
    assert not [f for f in good.findings if f.source == "logicode" and not f.passed]
    assert extra.program.sha256 and extra.models["logicode"] == "counting-fake"
    assert set(extra.component_scores) >= {"logic", "structural", "composition"}
    assert Verdict.model_validate_json(extra.model_dump_json()) == extra


def test_programs_and_fits_are_cached(agent, screw_bag, tmp_path):
    gen, refs = screw_bag
    agent.prepare(category="screw_bag", references=refs)
    calls = agent.chat_model.calls
    agent.run(gen.sample(52).image, category="screw_bag", references=refs)
    assert agent.chat_model.calls == calls  # same rules + references: no new generation
    # A new agent on the same disk cache reads the program and the fitted detectors back.
    again = Agent(agent.config, chat_model=CountingModel(), model_id="counting-fake")
    v = again.run(gen.sample(52).image, category="screw_bag", references=refs)
    assert again.chat_model.calls == 0
    assert v.program.origin == "cached"
    # Other rules mean another program.
    again.run(gen.sample(52).image, rules=["There are exactly six objects."], references=refs)
    assert again.chat_model.calls >= 1  # written (and repaired if it does not validate)


def test_a_failed_generation_is_tried_again_later_not_on_every_image(monkeypatch, tmp_path):
    import agent.core as core
    from tests.test_layout import tray

    class FlakyModel(CountingModel):
        down: bool = True

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            if self.down:
                self.calls += 1
                raise RuntimeError("the model server is not up yet")
            return super()._generate(messages, stop, run_manager, **kwargs)

    refs = [tray(s) for s in range(4)]
    for retry_s in (core.PROGRAM_RETRY_S, 0.0):
        monkeypatch.setattr(core, "PROGRAM_RETRY_S", retry_s)
        model = FlakyModel()
        agent = Agent(AgentConfig(cache_dir=tmp_path), chat_model=model, model_id="flaky")  # fits cached on disk
        first = agent.run(tray(50), rules=TRAY_RULES, references=refs)
        assert not first.logic_available and "not up yet" in first.logic_note
        calls = model.calls
        model.down = False
        later = agent.run(tray(51, skip=0), rules=TRAY_RULES, references=refs)
        if retry_s:  # within the retry interval: no new attempt for each image
            assert model.calls == calls and not later.logic_available
        else:  # the interval has passed: generated again, and the checks are back
            assert model.calls > calls and later.logic_available
            assert later.is_anomalous and any(f.source == "logicode" and not f.passed for f in later.findings)


def test_broken_model_output_falls_back_without_crashing(screw_bag, tmp_path):
    gen, refs = screw_bag
    model = CountingModel(answer="Sorry, I cannot write code for that.")
    agent = Agent(AgentConfig(cache_dir=tmp_path, repair_rounds=1), chat_model=model, model_id="prose")
    v = agent.run(gen.sample(53, kind="logical", anomaly_type="extra_washer").image, category="screw_bag", references=refs)
    assert model.calls == 4 * 2  # every rule: one try and one repair
    assert not v.logic_available
    assert "Logic check unavailable" in v.logic_note and "contains no Python code" in v.logic_note
    assert {f.source for f in v.findings} == {"structural", "composition", "layout"}
    assert 0.0 <= v.score <= 1.0


def test_helper_that_does_not_exist_is_repaired_away(screw_bag, tmp_path):
    gen, refs = screw_bag
    model = CountingModel(answer="```python\ndef check_{rid}(scene, references):\n    return lc.magic(scene)\n```")
    agent = Agent(AgentConfig(cache_dir=tmp_path, repair_rounds=0), chat_model=model, model_id="magic")
    v = agent.run(gen.sample(54).image, rules=["Exactly six objects."], references=refs)
    assert "magic" in v.logic_note
    assert v.findings and all(f.source != "logicode" for f in v.findings)


def _pinned_agent(tmp_path, model, source: str):
    """An agent whose rules are checked by ``source``, pinned as the user's own program."""
    program = tmp_path / "pinned.py"
    program.write_text(source)
    return Agent(AgentConfig(cache_dir=tmp_path, pinned_program=program), chat_model=model, model_id="x"), program


def test_pinned_program_is_used(screw_bag, tmp_path):
    gen, refs = screw_bag
    model = CountingModel()
    agent, program = _pinned_agent(tmp_path, model, (
        "import logicode as lc\n\n"
        "def check(scene, references):\n"
        "    n = lc.count(scene)\n"
        "    return [lc.finding('r1', n <= 100, n, '<= 100', 'objects in view')]\n"
    ))
    v = agent.run(gen.sample(55).image, rules=["At most 100 objects."], references=refs)
    assert model.calls == 0
    assert v.program.origin == "pinned" and v.program.path == str(program)
    assert [f.rule_id for f in v.findings if f.source == "logicode"] == ["r1"]


def test_odd_evidence_from_a_program_never_crashes_run(screw_bag, tmp_path):
    gen, refs = screw_bag
    agent, _ = _pinned_agent(tmp_path, CountingModel(), (
        "def check(scene, references):\n"
        "    n = len(scene['components'])\n"
        "    return [{'rule_id': 'r1', 'passed': True, 'observed': n, 'evidence': n + 1},\n"
        "            {'rule_id': 'r2', 'passed': True, 'evidence': [[0, 0, float('inf'), 5], [1, 2, 3, 4], 'x']}]\n"
    ))
    v = agent.run(gen.sample(56).image, rules=["Rule one.", "Rule two."], references=refs)
    found = {f.rule_id: f for f in v.findings if f.source == "logicode"}
    assert found["r1"].evidence == [] and [r.bbox for r in found["r2"].evidence] == [(1, 2, 3, 4)]


def test_bad_inputs_give_clear_errors(agent, tmp_path):
    from detectors import ImageInputError
    from prompts import RulesError

    with pytest.raises(ImageInputError, match="does not exist"):
        agent.run(tmp_path / "missing.png", category="screw_bag")
    with pytest.raises(RulesError, match="No built-in rule pack for category 'teapot'"):
        agent.run(tmp_path / "missing.png", category="teapot")
    with pytest.raises(ValueError, match="needs at least one normal reference image"):
        agent.prepare(category="screw_bag", references=[])


def test_fitted_cache_is_keyed_by_the_detectors_settings(tmp_path):
    from agent.config import PerceptionConfig

    def paths(**perception):
        return Agent(AgentConfig(cache_dir=tmp_path, perception=PerceptionConfig(**perception)),
                     chat_model=CountingModel(), model_id="counting-fake").fitted_paths("refs")

    base = paths()
    assert paths() == base
    # a detector's setting refits that detector only
    changed = {"patchcore": {"sigma": 2.0}, "parser": {"max_parts": 6}, "layout_detector": {"window": 1}}
    owner = {"patchcore": "structural", "parser": "parser", "layout_detector": "layout"}
    for setting, value in changed.items():
        other = paths(**{setting: value})
        assert {k for k in base if other[k] != base[k]} == {owner[setting]}
    assert paths(parser={"deep_features": True})["parser"] != base["parser"]
    assert paths(part_names={"p1": "screw"})["parser"] != base["parser"]


def test_one_model_timeout():
    with pytest.raises(ValueError, match="set generation_timeout_s instead"):
        AgentConfig(llm={"timeout_s": 5})
    agent = Agent(AgentConfig(generation_timeout_s=42), chat_model=CountingModel(), model_id="counting-fake")
    assert agent.llm_config.timeout_s == 42


def test_a_repair_hands_the_rest_of_the_generation_budget_to_the_backend():
    class RecordingModel(CountingModel):
        timeout_s: float | None = None  # as logiscan's backends: a per-call ``timeout_s`` option
        options: list = []

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self.options.append(kwargs)
            return super()._generate(messages, stop, run_manager)

    model = RecordingModel()
    agent = Agent(AgentConfig(generation_timeout_s=42), chat_model=model, model_id="recording")
    ask = [HumanMessage("def check_r1(scene, references)")]
    agent._chat(ask, 0)
    agent._chat(ask, 1, timeout_s=7.5)
    agent._chat(ask, 2, timeout_s=500)  # never beyond the model call's own limit
    assert model.options == [{"timeout_s": 42}, {"timeout_s": 7.5, "temperature": 0.7, "seed": 1},
                             {"timeout_s": 42, "temperature": 0.7, "seed": 2}]


def test_the_generation_budget_covers_the_whole_wait_for_a_program(screw_bag, tmp_path, monkeypatch):
    """The parses of the references' altered copies run before the model is asked: the budget the
    generator gets is what is left of generation_budget_s after them (a fake clock they move by 5 s)."""
    import agent.core as core
    from agent.logicode import LogiCodeGenerator

    _, refs = screw_bag
    agent = Agent(AgentConfig(cache_dir=tmp_path, generation_budget_s=60), chat_model=CountingModel(),
                  model_id="counting-fake")
    parse_copies = core.Agent._variant_scenes
    clock = [0.0]

    def slow_copies(ctx):
        clock[0] += 5.0
        return parse_copies(ctx)

    budgets = []
    generate = LogiCodeGenerator.generate

    def recording(self, *args, **kwargs):
        budgets.append(self.budget_s)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(core.Agent, "_variant_scenes", staticmethod(slow_copies))
    monkeypatch.setattr(LogiCodeGenerator, "generate", recording)
    monkeypatch.setattr(core.time, "perf_counter", lambda: clock[0])
    ctx = agent.prepare(category="screw_bag", references=refs)
    assert budgets == [55.0] and ctx.program is not None


def test_a_prepared_context_ships_to_another_process_as_files_and_data(agent, screw_bag, tmp_path):
    import pickle

    from agent.audit import ship_context

    gen, refs = screw_bag
    paths = []
    for i, ref in enumerate(refs):  # audits know their references as paths
        from PIL import Image

        paths.append(tmp_path / f"ref{i}.png")
        Image.fromarray(ref).save(paths[-1])
    ctx = agent.prepare(category="screw_bag", references=paths)
    shipped = pickle.loads(pickle.dumps(ship_context(ctx, [str(p) for p in paths], tmp_path / "ship")))
    assert shipped.context.parser is None and shipped.context.reference_images == []  # light to pickle
    unpacked = shipped.unpack()
    image = gen.sample(53, kind="logical", anomaly_type="extra_screw").image
    here, there = agent.run_prepared(ctx, image), agent.run_prepared(unpacked, image)
    assert there.score == here.score and there.findings == here.findings
    assert len(unpacked.reference_images) == len(refs)


def test_layout_peak_note_says_which_part_the_references_show_there():
    from agent.evidence import LayoutPeak
    from detectors import LayoutDetector, SceneParser
    from tests.test_layout import tray

    refs = [tray(s) for s in range(4)]
    parser = SceneParser().fit(refs)
    layout = LayoutDetector(image_size=160, window=1).fit(refs)
    missing = tray(11, skip=0)
    result = layout.score(missing)
    scene = parser.parse(missing)
    note = LayoutPeak.locate(result.peak_xy, scene, parser.reference_scenes).sentence(scene)
    assert "top left of the image" in note and "in 4 of 4" in note and "this image lacks" in note
    moved = tray(12, move=(150, 130))
    scene = parser.parse(moved)
    # a moved part is missing from its place and extra at the other: by default the direction
    # further beyond its edge names the place, here where the references show the part
    note = LayoutPeak.locate(layout.score(moved).peak_xy, scene, parser.reference_scenes).sentence(scene)
    assert "this image lacks p2" in note
    query_side = LayoutDetector(image_size=160, window=1, missing=False).fit(refs)
    note = LayoutPeak.locate(query_side.score(moved).peak_xy, scene, parser.reference_scenes).sentence(scene)
    assert "bottom right" in note and "there instead" in note


def test_parse_grounding_keeps_known_ids_and_survives_prose():
    from agent.logicode import parse_grounding

    answer = 'Sure! Here it is:\n```json\n{"r1": ["p2", "p9"], "r2": "p1", "r7": ["p1"]}\n```'
    assert parse_grounding(answer, rule_ids=["r1", "r2"], part_ids=["p1", "p2"]) == {"r1": ["p2"], "r2": ["p1"]}
    assert parse_grounding("no json {here", rule_ids=["r1"], part_ids=["p1"]) == {}
    assert parse_grounding('[1, 2] then {"r1": []}', rule_ids=["r1"], part_ids=["p1"]) == {"r1": []}
    # a rule mapped to (nearly) every part is not grounded at all
    every = parse_grounding('{"r1": ["p1", "p2", "p3", "p4", "p5"], "r2": ["p4"]}', rule_ids=["r1", "r2"],
                            part_ids=["p1", "p2", "p3", "p4", "p5", "p6"])
    assert every == {"r1": [], "r2": ["p4"]}


def test_detector_evidence_names_the_rules_about_the_missing_part(tmp_path):
    """No check validates (the model writes prose), but the layout detector finds the orange
    part missing where every reference shows it, and the model's grounding says which rules
    are about that part: the explanation names them, as evidence, with expected and observed."""
    from tests.test_layout import tray

    model = CountingModel(answer="Sorry, I cannot write code for that.")
    agent = Agent(AgentConfig(cache_dir=tmp_path, repair_rounds=0, link_evidence_to_rules=True), chat_model=model,
                  model_id="prose")
    rules = ["Two orange parts lie on the left.", "One brown part lies on the right."]
    refs = [tray(s) for s in range(4)]
    v = agent.run(tray(11, skip=0), rules=rules, references=refs)
    assert v.is_anomalous and not v.logic_available
    linked = [f for f in v.findings if f.rule_id in ("r1", "r2")]
    assert linked and all(not f.passed and f.source == "layout" and f.confidence < 1 for f in linked)
    assert "likely violated" in v.explanation and "absent there" in v.explanation
    assert "evidence, not a validated check" in v.explanation
    # a normal image implicates no rule
    normal = agent.run(tray(12), rules=rules, references=refs)
    assert not normal.is_anomalous and not [f for f in normal.findings if f.rule_id in ("r1", "r2")]
    # off by default: no grounding call, no rule named from evidence
    plain = Agent(AgentConfig(cache_dir=tmp_path / "plain", repair_rounds=0), chat_model=CountingModel(answer="no"),
                  model_id="prose")
    v = plain.run(tray(11, skip=0), rules=rules, references=refs)
    assert v.is_anomalous and "likely violated" not in v.explanation
    assert plain.chat_model.calls == 2 and plain.last_context.program.rule_parts is None


def test_a_program_cached_before_grounding_is_grounded_once(screw_bag, tmp_path):
    gen, refs = screw_bag
    config = AgentConfig(cache_dir=tmp_path, link_evidence_to_rules=True)
    agent = Agent(config, chat_model=CountingModel(), model_id="counting-fake")
    ctx = agent.prepare(category="screw_bag", references=refs)
    assert ctx.program.rule_parts == {"r1": ["p1"], "r2": ["p1"], "r3": ["p1"], "r4": ["p1"]}
    path = tmp_path / "programs" / f"{ctx.program.key}.json"
    stored = json.loads(path.read_text())
    stored.pop("rule_parts")  # as an older version wrote it
    path.write_text(json.dumps(stored))
    again = Agent(config, chat_model=CountingModel(), model_id="counting-fake")
    ctx2 = again.prepare(category="screw_bag", references=refs)
    assert again.chat_model.calls == 1 and ctx2.program.rule_parts == ctx.program.rule_parts
    assert json.loads(path.read_text())["rule_parts"] == ctx.program.rule_parts


def test_reference_digest_sees_every_pixel():
    import numpy as np

    from agent.core import image_digest

    a = np.zeros((40, 60, 3), np.uint8)
    b = a.copy()
    b[1, 3, 0] = 1  # an odd row and column: a subsampled hash would miss it
    assert image_digest(a) != image_digest(b) and image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(a[..., 0])  # the shape is part of it

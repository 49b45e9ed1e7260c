"""Multi-modal inspection prompts: templates, the three modes, the grid composite, answer parsing."""

from __future__ import annotations

import numpy as np
import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from agent.llm import LLMConfig, make_chat_model, weights
from agent.llm.messages import data_url_to_image
from detectors.schema import Component, Part, Scene, Stats
from prompts import NormalityRules
from prompts.multimodal import (
    ANSWER_REMINDER, TEMPLATE_VERSION, PromptError, build_inspection_messages, compose_grid, describe_scene, load_template,
    parse_inspection_answer, parse_inspection_verdict,
)

RULES = NormalityRules.from_strings(
    ["There are exactly two screws.", "The nut lies right of the screws."],
    category="screw_bag", class_context="A bag with two screws and one nut.",
)
RED = np.full((40, 60, 3), (220, 20, 20), dtype=np.uint8)
BLUE = np.full((50, 30, 3), (20, 20, 220), dtype=np.uint8)


def _scene(screws: int) -> Scene:
    components = [
        Component(id=i, part="p1", area=120.0, area_frac=0.02, centroid=(10.0 + 20 * i, 30.0),
                  centroid_rel=(0.1 + 0.2 * i, 0.5), bbox=(0, 0, 10, 10), orientation=0.0, major_axis=30.0,
                  minor_axis=6.0, color_rgb=(150, 150, 150), color_name="gray", horizontal="left", vertical="middle")
        for i in range(screws)
    ]
    part = Part(id="p1", name="screw", description="grey elongated", color_name="gray", count=screws,
                total_area=120.0 * screws, ref_count=Stats(mean=2, std=0, min=2, max=2))
    return Scene(image_size=(200, 100), product_bbox=(0, 0, 200, 100), parts=[part], components=components)


def test_template_is_versioned_and_has_both_sections():
    template = load_template()
    assert template.version == TEMPLATE_VERSION == "inspect_v1"
    assert "logical" in template.system.lower() and "$rules" in template.user and "$evidence" in template.user
    with pytest.raises(PromptError, match=r"no prompt template 'inspect_v999'"):
        load_template("inspect_v999")
    with pytest.raises(PromptError, match="invalid template version"):
        load_template("../rules")


def test_images_mode_sends_every_image_as_its_own_block():
    messages = build_inspection_messages(RULES, RED, [BLUE, BLUE], mode="images")
    system, user = messages
    assert isinstance(system, SystemMessage) and isinstance(user, HumanMessage)
    text = user.content[0]["text"]
    for needle in ("screw_bag", "A bag with two screws", "r1: There are exactly two screws.", "r2:", '"rule_id"',
                   "2 reference image(s)"):
        assert needle in text
    labels = [b["text"] for b in user.content[1:] if b["type"] == "text"]
    images = [data_url_to_image(b["image_url"]["url"]) for b in user.content if b["type"] == "image_url"]
    assert labels == ["reference 1:", "reference 2:", "query:", ANSWER_REMINDER]
    assert [im.size for im in images] == [(30, 50), (30, 50), (60, 40)]


def test_grid_mode_sends_one_labelled_composite():
    user = build_inspection_messages(RULES, RED, [BLUE, BLUE, BLUE], mode="grid")[1]
    image_blocks = [b for b in user.content if b["type"] == "image_url"]
    assert len(image_blocks) == 1
    grid = data_url_to_image(image_blocks[0]["image_url"]["url"])
    assert grid.size == compose_grid([BLUE] * 3, RED).size
    assert "'reference 3'" in user.content[0]["text"] and "'query'" in user.content[0]["text"]


def test_compose_grid_layout_labels_and_query_frame():
    cell, label, gap = 64, 20, 4
    grid = np.asarray(compose_grid([BLUE, BLUE, BLUE], RED, cell=cell, label_height=label, gap=gap))
    # Four tiles -> 2x2.
    assert grid.shape == (2 * (cell + label) + 3 * gap, 2 * cell + 3 * gap, 3)
    tiles = [(gap + c * (cell + gap), gap + r * (cell + label + gap)) for r in range(2) for c in range(2)]
    for index, (x0, y0) in enumerate(tiles):
        bar = grid[y0 + 2: y0 + label - 2, x0 + 2: x0 + cell - 2].reshape(-1, 3)
        # Label bars hold white text on a dark (reference) or red (query) background.
        assert (bar > 150).all(axis=1).any(), f"no label text on tile {index}"  # anti-aliased white
        centre = grid[y0 + label + cell // 2, x0 + cell // 2]
        assert tuple(centre) == ((220, 20, 20) if index == 3 else (20, 20, 220))
    qx, qy = tiles[3]
    assert tuple(grid[qy + label + cell - 2, qx + 1]) == (200, 30, 30)  # the query's red frame
    assert tuple(grid[tiles[0][1] + label + cell - 2, tiles[0][0] + 1]) == (255, 255, 255)
    with pytest.raises(PromptError, match="at least 32"):
        compose_grid([], RED, cell=8)


def test_text_mode_uses_the_scene_parse_instead_of_pixels():
    messages = build_inspection_messages(RULES, None, scene_text=_scene(3), reference_scene_text=[_scene(2)], mode="text")
    content = messages[1].content
    assert isinstance(content, str)
    assert "You cannot see the images" in content
    assert "part p1 (screw): count 3" in content and "part p1 (screw): count 2" in content
    assert "references: 2.0 on average" in content and "middle-left" in content
    with pytest.raises(PromptError, match="mode 'text' needs scene_text"):
        build_inspection_messages(RULES, RED, mode="text")
    with pytest.raises(PromptError, match="mode 'images' needs query_image"):
        build_inspection_messages(RULES, None, mode="images")
    with pytest.raises(PromptError, match="unknown prompt mode 'video'"):
        build_inspection_messages(RULES, RED, mode="video")
    with pytest.raises(PromptError, match="rules must be NormalityRules"):
        build_inspection_messages(["two screws"], RED)


def test_describe_scene_handles_empty_and_long_scenes():
    empty = Scene(image_size=(10, 10), product_bbox=(0, 0, 10, 10), parts=[], components=[])
    assert "no parts found" in describe_scene(empty)
    assert "... and 5 more components" in describe_scene(_scene(7), max_components=2)


def test_parse_answer_tolerates_prose_fences_and_loose_booleans():
    reply = """Sure! Here is my inspection.
```json
{"rules": [{"rule_id": "r1", "passed": false, "observed": "3 screws", "expected": "2 screws",
            "reason": "one screw too many"},
           {"rule_id": "r2", "passed": "yes", "observed": "nut right", "expected": "nut right", "reason": "ok"}],
 "verdict": "anomalous", "summary": "extra screw"}
```
Let me know if you need more."""
    answers = parse_inspection_answer(reply)
    assert [a["rule_id"] for a in answers] == ["r1", "r2"]
    assert answers[0] == {"rule_id": "r1", "passed": False, "observed": "3 screws", "expected": "2 screws",
                          "reason": "one screw too many"}
    assert answers[1]["passed"] is True
    assert parse_inspection_verdict(reply) == "anomalous"


def test_parse_answer_other_shapes_and_prose():
    listed = 'Result: [{"rule_id": "r1", "passed": true}, {"rule_id": "r2", "passed": "fail"}] end'
    assert [a["passed"] for a in parse_inspection_answer(listed)] == [True, False]
    assert parse_inspection_verdict(listed) == "anomalous"  # derived from the rules
    split = 'first {"rule_id": "r1", "passed": true} then {"rule_id": "r2", "passed": true}'
    assert parse_inspection_verdict(split) == "normal"
    unsure = '{"rules": [{"rule_id": "r1", "passed": "maybe"}]}'
    assert parse_inspection_answer(unsure)[0]["passed"] is None and parse_inspection_verdict(unsure) is None
    for prose in ("The product looks fine to me.", "", None, "{not json}", '{"answer": 1}'):
        assert parse_inspection_answer(prose) == []
        assert parse_inspection_verdict(prose) is None


@pytest.mark.slow
def test_text_prompt_through_a_real_text_model_never_crashes():
    try:
        weights.model_path("smollm2-135m")
    except weights.WeightsError as exc:
        pytest.skip(str(exc))
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=16, n_ctx=2048))
    messages = build_inspection_messages(RULES, None, scene_text=_scene(3), reference_scene_text=_scene(2), mode="text")
    reply = chat.invoke(messages).content
    assert isinstance(reply, str) and reply
    answers = parse_inspection_answer(reply)  # a tiny model may answer prose: that must be [] not a crash
    assert isinstance(answers, list) and all(set(a) == {"rule_id", "passed", "observed", "expected", "reason"} for a in answers)


def test_parse_answer_accepts_python_style_and_truncated_replies():
    pythonish = "Answer: {'rules': [{'rule_id': 'r1', 'passed': False, 'reason': 'it\\'s 3 screws'},], 'verdict': 'anomalous'}"
    answers = parse_inspection_answer(pythonish)
    assert answers == [{"rule_id": "r1", "passed": False, "observed": "", "expected": "", "reason": "it's 3 screws"}]
    # Cut off by the token limit: the complete rule entries still count.
    truncated = '{"rules": [{"rule_id": "r1", "passed": true, "reason": "two"}, {"rule_id": "r2", "passed": fa'
    assert [(a["rule_id"], a["passed"]) for a in parse_inspection_answer(truncated)] == [("r1", True)]
    assert parse_inspection_verdict(truncated, rule_ids=["r1", "r2"]) is None  # r2 unanswered
    assert parse_inspection_verdict(truncated, rule_ids=["r1"]) == "normal"

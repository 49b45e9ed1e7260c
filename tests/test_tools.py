"""The detectors as LangChain tools: typed inputs, JSON outputs, readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from PIL import Image

from detectors.backbones import FeatureMaps
from detectors.base import Detector
from detectors.patchcore import PatchCore
from detectors.schema import AnomalyResult, Component, Part, Scene, Stats
from detectors.tools import (
    AnomalyScoreOutput,
    CompositionOutput,
    ImageArgs,
    NoArgs,
    anomaly_regions,
    bound_tools,
    detector_score_tool,
    detector_tools,
)
from tests.test_patchcore import DEFECT_BOX, SIZE, textured, with_defect


class FakeParser:
    """The SceneParser interface at the unit edge: counts bright blobs as one part."""

    def __init__(self, backbone_name=None, image_size=None):
        self.backbone_name = backbone_name
        self.image_size = image_size
        self.parse_calls = 0
        self.features_seen = []

    def parse(self, image, features=None) -> Scene:
        self.parse_calls += 1
        self.features_seen.append(features)
        arr = np.asarray(Image.open(image).convert("RGB"))
        green = (arr[..., 1] > 150) & (arr[..., 0] < 80)
        count = int(green.any())
        comps = []
        if count:
            ys, xs = np.nonzero(green)
            comps.append(Component(
                id=0, part="p1", area=float(green.sum()), area_frac=float(green.mean()),
                centroid=(float(xs.mean()), float(ys.mean())), centroid_rel=(0.5, 0.5),
                bbox=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                orientation=0.0, major_axis=10.0, minor_axis=5.0, color_rgb=(30, 200, 40),
                color_name="green", horizontal="right", vertical="middle",
            ))
        return Scene(
            image_size=(arr.shape[1], arr.shape[0]), product_bbox=(0, 0, arr.shape[1], arr.shape[0]),
            parts=[Part(id="p1", description="green blob, usually absent", color_name="green", count=count,
                        total_area=float(green.sum()), ref_count=Stats.of([0, 0]), ref_area=Stats.of([0, 0]))],
            components=comps,
        )

    def composition_score(self, scene: Scene) -> float:
        return 0.9 if scene.counts()["p1"] else 0.1

    def composition_report(self, scene: Scene, top=5):
        return [{"part": "p1", "quantity": "count", "observed": float(scene.counts()["p1"]),
                 "ref_mean": 0.0, "ref_std": 0.0, "z": 10.0 * scene.counts()["p1"]}]


class ConstantDetector(Detector):
    """An uncalibrated detector, standing in for a CLIP detector."""

    name = "constant"

    def fit(self, references):
        return self

    def score(self, image) -> AnomalyResult:
        return AnomalyResult(detector=self.name, score=2.5, raw_score=2.5, calibrated=False)


@pytest.fixture(scope="module")
def patchcore() -> PatchCore:
    return PatchCore(image_size=SIZE).fit([textured(s) for s in range(3)])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tool_images")
    out = {}
    for name, arr in (("good", textured(90)), ("defect", with_defect(91))):
        out[name] = folder / f"{name}.png"
        Image.fromarray(arr).save(out[name])
    return out


def by_name(tools: list[BaseTool]) -> dict[str, BaseTool]:
    return {t.name: t for t in tools}


def test_one_tool_per_capability_with_typed_schemas(patchcore):
    tools = by_name(detector_tools(structural=patchcore, parser=FakeParser(), clip_detectors=[ConstantDetector()]))
    assert list(tools) == ["structural_score", "parse_scene", "composition_score", "constant_score"]
    for tool in tools.values():
        assert tool.args_schema is ImageArgs
        spec = convert_to_openai_tool(tool)["function"]
        assert spec["parameters"]["required"] == ["image_path"]
        assert tool.description and "output_schema" in tool.metadata
    assert tools["structural_score"].metadata["output_model"] == "AnomalyScoreOutput"


def test_structural_score_tool_finds_the_defect(patchcore, images):
    tool = by_name(detector_tools(structural=patchcore))["structural_score"]
    good = AnomalyScoreOutput.model_validate(tool.invoke({"image_path": str(images["good"])}))
    bad = AnomalyScoreOutput.model_validate(tool.invoke({"image_path": str(images["defect"])}))
    assert good.is_anomalous is False and bad.is_anomalous is True
    assert bad.image_size == (160, 120)
    assert bad.regions, "an anomalous image must report where"
    x0, y0, x1, y1 = bad.regions[0].bbox
    dx0, dy0, dx1, dy1 = DEFECT_BOX
    assert x0 <= dx1 and dx0 <= x1 and y0 <= dy1 and dy0 <= y1  # overlaps the defect
    # plain JSON, as a LangChain ToolMessage carries it
    json.dumps(tool.invoke({"image_path": str(images["defect"])}))


def test_scene_tools_return_json_and_reuse_the_parse(images):
    parser = FakeParser()
    tools = by_name(detector_tools(parser=parser))
    scene = Scene.model_validate(tools["parse_scene"].invoke({"image_path": str(images["defect"])}))
    assert scene.counts() == {"p1": 1} and scene.components[0].color_name == "green"
    comp = CompositionOutput.model_validate(tools["composition_score"].invoke({"image_path": str(images["defect"])}))
    assert comp.score == 0.9 and comp.is_anomalous and comp.deviations[0].quantity == "count"
    assert parser.parse_calls == 1  # composition reused the cached scene
    good = tools["composition_score"].invoke({"image_path": str(images["good"])})
    assert good["is_anomalous"] is False and parser.parse_calls == 2


def test_backbone_runs_once_per_image_when_features_can_be_shared(patchcore, images):
    parser = FakeParser(backbone_name=patchcore.backbone_name, image_size=patchcore.image_size)
    tools = by_name(detector_tools(structural=patchcore, parser=parser))
    path = str(images["defect"])
    shared = tools["structural_score"].invoke({"image_path": path})
    tools["parse_scene"].invoke({"image_path": path})
    assert isinstance(parser.features_seen[-1], FeatureMaps)
    assert shared["score"] == patchcore.score(path).score
    # different settings: nothing is shared, the parser computes its own
    other = FakeParser(backbone_name=patchcore.backbone_name, image_size=patchcore.image_size * 2)
    by_name(detector_tools(structural=patchcore, parser=other))["parse_scene"].invoke({"image_path": path})
    assert other.features_seen == [None]


def test_generic_detector_tool_for_uncalibrated_detectors(images):
    tool = detector_score_tool(ConstantDetector())
    out = tool.invoke({"image_path": str(images["good"])})
    assert out["detector"] == "constant" and out["calibrated"] is False
    assert out["is_anomalous"] is None and out["regions"] == []
    named = by_name(detector_tools(clip_detectors={"winclip": ConstantDetector()}))
    assert list(named) == ["winclip_score"]


def test_errors_reach_the_agent_as_readable_messages(patchcore, images, tmp_path):
    tool = by_name(detector_tools(structural=patchcore))["structural_score"]
    assert "the file does not exist" in tool.invoke({"image_path": str(tmp_path / "missing.png")})
    assert "directory" in tool.invoke({"image_path": str(tmp_path)})
    assert "File name too long" in tool.invoke({"image_path": "a" * 300 + ".png"})
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert "not a recognised image format" in tool.invoke({"image_path": str(broken)})
    unfitted = detector_score_tool(PatchCore(image_size=SIZE), name="structural_score")
    assert "not fitted" in unfitted.invoke({"image_path": str(images["good"])})


def test_bad_configuration_is_refused(patchcore):
    with pytest.raises(ValueError, match="at least one of"):
        detector_tools()
    with pytest.raises(TypeError, match="parse\\(image\\)"):
        detector_tools(parser=object())
    with pytest.raises(ValueError, match="two tools would be named"):
        detector_tools(clip_detectors=[ConstantDetector(), ConstantDetector()])
    with pytest.raises(TypeError, match="Detector"):
        detector_score_tool(FakeParser())


def test_anomaly_regions_are_strongest_first():
    amap = np.zeros((100, 200), np.float32)
    amap[10:20, 10:30] = 0.7
    amap[50:70, 150:190] = 0.95
    regions = anomaly_regions(amap)
    assert [r.peak for r in regions] == pytest.approx([0.95, 0.7])
    assert regions[0].bbox == (150, 50, 190, 70)
    assert regions[1].area_frac == pytest.approx(200 / 20000)
    assert anomaly_regions(np.zeros((10, 10))) == []


def test_bound_tools_serve_one_image_s_results_without_arguments(patchcore, images):
    parser = FakeParser()
    scene = parser.parse(images["defect"])
    structural = patchcore.score(images["defect"])
    tools = by_name(bound_tools(scene=scene, structural=structural, composition=0.8,
                                deviations=parser.composition_report(scene)))
    assert sorted(tools) == ["composition_score", "parse_scene", "structural_score"]
    assert all(t.args_schema is NoArgs and "call it without arguments" in t.description for t in tools.values())
    assert Scene.model_validate(tools["parse_scene"].invoke({})).counts() == {"p1": 1}
    assert AnomalyScoreOutput.model_validate(tools["structural_score"].invoke({})).score == structural.score
    comp = CompositionOutput.model_validate(tools["composition_score"].invoke({}))
    assert comp.score == 0.8 and comp.is_anomalous and comp.deviations[0].quantity == "count"
    assert parser.parse_calls == 1  # nothing is recomputed
    assert [t.name for t in bound_tools(scene=scene)] == ["parse_scene"]
    layout = AnomalyResult(detector="layout", score=0.9, raw_score=1.2, calibrated=True, peak_xy=(30, 40))
    served = AnomalyScoreOutput.model_validate(bound_tools(layout=layout)[0].invoke({}))
    assert served.score == 0.9 and served.is_anomalous and served.peak_xy == (30, 40)
    with pytest.raises(ValueError, match="at least one"):
        bound_tools()


def test_layout_tool_scores_the_arrangement(images):
    from detectors import LayoutDetector

    layout = LayoutDetector(image_size=SIZE, window=1).fit([textured(s) for s in range(3)])
    tool = by_name(detector_tools(layout=layout))["layout_score"]
    assert tool.args_schema is ImageArgs and "same region" in tool.description
    good = AnomalyScoreOutput.model_validate(tool.invoke({"image_path": str(images["good"])}))
    bad = AnomalyScoreOutput.model_validate(tool.invoke({"image_path": str(images["defect"])}))
    assert bad.score > good.score and bad.is_anomalous

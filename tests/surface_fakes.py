"""A small real-perception stand-in for the model-heavy Agent, and a tiny LOCO-layout dataset.

The fake agent genuinely looks at pixels: it counts red squares (connected
components) and measures blue "scratches", learns the normal count from the
references, and checks one counting rule. That keeps the surfaces' tests fast
while every number they assert still comes from the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from agent.schema import Finding, ProgramInfo, Region, Verdict
from detectors.images import load_image
from detectors.schema import Component, Part, Scene, Stats

PROGRAM = "def check(scene, references):\n    return scene.count('red square') == references.median_count\n"


class FakeChatModel:
    """Answers with the first line of the system prompt's verdict, to show the context reached it."""

    def __init__(self):
        self.calls: list[list] = []

    def invoke(self, messages):
        from langchain_core.messages import AIMessage

        self.calls.append(list(messages))
        system = messages[0].content
        verdict_line = next((ln for ln in system.splitlines() if ln.startswith("Verdict:")), "no verdict")
        return AIMessage(content=f"From what I saw: {verdict_line}")


class FakeAgent:
    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.prepare_calls = 0
        self.last_scene = None
        self.last_anomaly_map = None
        self.chat_model = FakeChatModel()

    # -- perception -------------------------------------------------------------
    @staticmethod
    def _masks(image):
        arr = np.asarray(load_image(image)).astype(int)
        red = (arr[..., 0] > 150) & (arr[..., 1] < 90) & (arr[..., 2] < 90)
        blue = (arr[..., 2] > 150) & (arr[..., 0] < 90) & (arr[..., 1] < 90)
        return arr, red, blue

    def _scene(self, arr, red, ref_count=None):
        labels, n = ndimage.label(red)
        h, w = red.shape
        comps = []
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            ys, xs = sl
            area = float((labels[sl] == i).sum())
            cy, cx = (ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2
            comps.append(Component(
                id=i, part="p1", area=area, area_frac=area / (h * w), centroid=(cx, cy),
                centroid_rel=(cx / w, cy / h), bbox=(xs.start, ys.start, xs.stop, ys.stop), orientation=0.0,
                major_axis=float(xs.stop - xs.start), minor_axis=float(ys.stop - ys.start),
                color_rgb=(220, 30, 30), color_name="red", horizontal="center", vertical="middle",
            ))
        part = Part(id="p1", name="red square", description="small red squares", color_name="red", count=n,
                    total_area=float(red.sum()), ref_count=ref_count)
        return Scene(image_size=(w, h), product_bbox=(0, 0, w, h), parts=[part], components=comps)

    # -- the Agent API the surfaces use --------------------------------------------
    def prepare(self, rules=None, references=None, category=None, class_context=None):
        from prompts import load_rules

        if not references:
            raise ValueError("prepare() needs at least one normal reference image")
        self.prepare_calls += 1
        counts = [ndimage.label(self._masks(r)[1])[1] for r in references]
        return {"rules": load_rules(rules, category=category), "expected": int(np.median(counts)),
                "ref_count": Stats.of(counts)}

    def run(self, image, rules=None, references=None, category=None, class_context=None):
        if references:
            ctx = self.prepare(rules, references, category)
        else:
            from prompts import load_rules

            ctx = {"rules": load_rules(rules, category=category), "expected": 1, "ref_count": None}
        return self.run_prepared(ctx, image, name=image if isinstance(image, (str, Path)) else None)

    def run_prepared(self, ctx, image, *, name=None):
        if self.fail_on and self.fail_on in str(image):
            raise RuntimeError(f"perception crashed on {image}")
        arr, red, blue = self._masks(image)
        scene = self._scene(arr, red, ctx["ref_count"])
        count = scene.parts[0].count
        structural = min(1.0, float(blue.mean()) * 40)
        rule = ctx["rules"].rules[0]
        passed = count == ctx["expected"]
        evidence = [Region(bbox=c.bbox, label="red square") for c in scene.components] if not passed else []
        findings = [Finding(rule_id=rule.id, rule_text=rule.text, passed=passed, expected=ctx["expected"],
                            observed=count, explanation=f"counted {count} red squares, expected {ctx['expected']}",
                            evidence=evidence)]
        logic = 0.0 if passed else 1.0
        score = min(1.0, 0.1 + 0.8 * logic + 0.5 * structural) * (0.9 + 0.1 * (count % 3) / 2)
        verdict = Verdict(
            score=score, is_anomalous=score >= 0.5, threshold=0.5, findings=findings,
            explanation="All rules hold." if passed else f"Rule {rule.id} fails: {count} red squares.",
            category=ctx["rules"].category, image=str(name) if name is not None else None,
            component_scores={"logic": logic, "structural": structural},
            program=ProgramInfo.of(PROGRAM, origin="generated", model_id="fake"),
            timings={"parse": 0.001}, models={"parser": "fake"},
        )
        self.last_scene = scene
        self.last_anomaly_map = blue.astype(np.float32)
        return verdict


def make_fake_agent():
    """Module-level so worker processes can unpickle it."""
    return FakeAgent()


class ParentOnlyPrepareAgent(FakeAgent):
    """Refuses to prepare in a worker process: audits must prepare in the parent only."""

    def prepare(self, *args, **kwargs):
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            raise RuntimeError("prepare() ran in a worker process")
        return super().prepare(*args, **kwargs)


def make_parent_only_prepare_agent():
    return ParentOnlyPrepareAgent()


# ------------------------------------------------------------------------------ a tiny dataset

def draw(path: Path, squares: int, scratch: bool = False, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 200, np.uint8)
    arr += rng.integers(0, 10, arr.shape, dtype=np.uint8)
    for i in range(squares):
        x = 6 + i * 20 + int(rng.integers(0, 4))
        y = 20 + int(rng.integers(0, 10))
        arr[y:y + 10, x:x + 10] = (220, 30, 30)
    if scratch:
        arr[50:53, 5:55] = (30, 30, 220)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


RULES = {
    "category": "toy_box",
    "class_context": "A grey tray holding red squares.",
    "rules": ["There is exactly one red square."],
}


def make_loco(root: Path, category: str = "toy_box", n_train: int = 4, n_good: int = 3, n_logical: int = 3,
              n_structural: int = 2) -> Path:
    """A category folder in MVTec LOCO layout: train/good, validation/good, test/*, ground_truth/*."""
    cat = root / category
    for i in range(n_train):
        draw(cat / "train" / "good" / f"{i:03d}.png", 1, seed=i)
    draw(cat / "validation" / "good" / "000.png", 1, seed=99)
    for i in range(n_good):
        draw(cat / "test" / "good" / f"{i:03d}.png", 1, seed=10 + i)
    for i in range(n_logical):
        path = draw(cat / "test" / "logical_anomalies" / f"{i:03d}.png", 2 + (i % 2), seed=20 + i)
        mask = cat / "ground_truth" / "logical_anomalies" / f"{i:03d}" / "000.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    for i in range(n_structural):
        draw(cat / "test" / "structural_anomalies" / f"{i:03d}.png", 1, scratch=True, seed=30 + i)
        mask = cat / "ground_truth" / "structural_anomalies" / f"{i:03d}" / "000.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask)
    (cat / "rules.json").write_text(json.dumps({**RULES, "category": category}))
    return cat


# ------------------------------------------------------------------------------ the real agent, quickly

#: A user-pinned LogiCode program (the agent's documented way to skip generation). Tests of the
#: real agent use it so that they exercise real perception, sandbox and fusion without spending
#: minutes of CPU on the language model.
PINNED_PROGRAM = '''import math
import logicode as lc


def check(scene, references):
    def n_components(s):
        return lc.count(s)

    observed = n_components(scene)
    expected = lc.typical(references, n_components)
    ok = lc.within_references(observed, references, n_components, tolerance=0.1, stds=2.0)
    evidence = [] if ok else lc.components(scene)
    return [lc.finding("r1", ok, observed, expected, "part components counted against the references", evidence)]
'''


def real_agent_config(folder: Path) -> Path:
    """An AgentConfig file for the real agent with the pinned program and a private cache."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "pinned.py"
    program.write_text(PINNED_PROGRAM)
    config = folder / "agent.yaml"
    config.write_text(f"pinned_program: {program}\ncache_dir: {folder / 'cache'}\n")
    return config


def synth_screw_bag(folder: Path, per_split: int = 2) -> Path:
    """A small synthetic screw_bag category (real generator, quarter scale)."""
    from detectors.data.synth import generate_dataset

    generate_dataset(folder, seed=0, categories=["screw_bag"], per_split=per_split, scale=0.25)
    return folder / "screw_bag"

"""Benchmark of the few-shot detectors: structural (PatchCore) and composition (SceneParser).

No arguments. It renders its own synthetic set with a fixed seed (``SynthGenerator``), fits
4-shot on each of the five categories, and prints per-category figures and the final line::

    detectors: structural_auroc=X composition_auroc=Y count_accuracy=Z seconds_per_image=S peak_rss_mb=M

- structural_auroc: PatchCore's calibrated score, good vs structural defects (mean over categories);
- composition_auroc: SceneParser's composition score, good vs logical anomalies (mean over categories);
- count_accuracy: over good images and ground-truth discrete parts, the fraction where the parse's
  count equals the generator's; ground-truth part names are mapped one to one to part ids by
  pixel overlap (IoU) with ``part_map`` on the references, so a parse part covering several
  ground-truth parts (a whole bottle as one region) is right for one of them at most. Each category's line is followed by the count accuracy per
  ground-truth part. A part the generator counts but does not paint in ``part_map`` (the pushpin
  box's compartments) is never mapped, so it is never right;
- seconds_per_image: parse + structural score of one image at full LOCO resolution (good images
  resized to the category's real size, timed apart: every scored image, good or anomalous, is
  scored at the same rendered size), backbone features computed once and offered
  to the parser, which uses them only when they match its own input size and layer (PatchCore's
  448-pixel features do not match its 320, so it computes its own: fit and parse stay consistent);
- peak_rss_mb: the process's peak resident memory.

Before it, a line for the layout detector (each region against the same region of the
references) and for the agent's rules-free fused score (``agent.fusion.detector_evidence``
of the structural, composition and layout scores with the default ``FusionConfig`` weights)::

    detectors (layout, fused): layout_logical_auroc=X fused_logical_auroc=Y fused_structural_auroc=Z

seconds_per_image covers all three detectors (parse, structural and layout score).

Then the same figures on the real ``/work/shared/loco/juice_bottle`` slice when present: 4
references, the other 16 train images as good, and the 11 logical anomalies (there are no
structural anomalies in that slice, so its structural AUROC is of PatchCore on the logical ones).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.data.synth import CATEGORIES, SynthGenerator, full_size  # noqa: E402
from agent.config import FusionConfig  # noqa: E402
from agent.fusion import detector_evidence  # noqa: E402
from detectors.images import load_image  # noqa: E402
from detectors.layout import LayoutDetector  # noqa: E402
from detectors.parsing import SceneParser  # noqa: E402
from detectors.patchcore import PatchCore  # noqa: E402

FUSION = FusionConfig()

SEED = 20240611
SHOTS = 4
N_GOOD, N_LOGICAL, N_STRUCTURAL = 10, 10, 6
N_TIMED = 2
SCALE = 0.5
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Scores(tuple):
    """(structural, composition, layout, scene) of one image, with the fused rules-free score."""

    @property
    def fused(self) -> float:
        structural, composition, layout, _ = self
        return detector_evidence([(FUSION.weight_structural, structural), (FUSION.weight_composition, composition),
                                  (FUSION.weight_layout, layout)], power=FUSION.power)


class Pipeline:
    """PatchCore, SceneParser and LayoutDetector fitted on the same references; PatchCore and
    the parser share backbone features."""

    def __init__(self, refs):
        self.patchcore = PatchCore(seed=0)
        req = self.patchcore.feature_request()
        self.backbone = self.patchcore.backbone
        self.size, self.layers = req["size"], req["layers"]
        feats = [self.features(r) for r in refs]
        self.patchcore.fit(refs, features=feats)
        self.parser = SceneParser().fit(refs)
        self.layout = LayoutDetector().fit(refs)

    def features(self, image):
        return self.backbone.extract(image, size=self.size, layers=self.layers)

    def run(self, image):
        img = load_image(image)
        fm = self.features(img)
        structural = self.patchcore.score(features=fm)
        scene = self.parser.parse(img, features=fm)
        layout = self.layout.score(img)
        return Scores((structural.score, self.parser.composition_score(scene), layout.score, scene))


def _auroc(neg, pos) -> float:
    if not neg or not pos:
        return float("nan")
    return float(roc_auc_score([0] * len(neg) + [1] * len(pos), list(neg) + list(pos)))


def _map_parts(parser: SceneParser, samples) -> dict[str, str]:
    """Ground-truth part name -> parser part id, one to one, maximising the IoU over the references."""
    inter: dict[tuple[str, str], int] = {}
    gt_area: dict[str, int] = {}
    my_area: dict[str, int] = {}
    ids = parser.part_ids()
    for s, scene in zip(samples, parser.reference_scenes):
        seg = scene.segmentation
        gt = np.asarray(Image.fromarray(s.part_map).resize((seg.shape[1], seg.shape[0]), Image.Resampling.NEAREST))
        for gi, name in enumerate(s.part_names, start=1):
            g = gt == gi
            gt_area[name] = gt_area.get(name, 0) + int(g.sum())
            for pi, pid in enumerate(ids, start=1):
                m = seg == pi
                if gi == 1:
                    my_area[pid] = my_area.get(pid, 0) + int(m.sum())
                inter[(name, pid)] = inter.get((name, pid), 0) + int((g & m).sum())
    # one to one (Hungarian on IoU): a parse part that covers several ground-truth parts (a whole
    # bottle as one region) counts for one of them, not for all
    names = list(gt_area)
    iou = np.array([[inter[(n, p)] / max(gt_area[n] + my_area[p] - inter[(n, p)], 1) for p in ids] for n in names])
    mapping = {}
    if iou.size:
        rows, cols = linear_sum_assignment(-iou)
        mapping = {names[r]: ids[c] for r, c in zip(rows, cols) if iou[r, c] > 0}
    return mapping


def _column(scores: list[Scores], i: int) -> list[float]:
    return [float(x[i]) for x in scores]


def _fused(scores: list[Scores]) -> list[float]:
    return [x.fused for x in scores]


def bench_synthetic():
    aucs: dict[str, list[float]] = {k: [] for k in ("structural", "composition", "layout", "fused_l", "fused_s")}
    count_hits, count_total, times = 0, 0, []
    for cat in CATEGORIES:
        gen = SynthGenerator(cat, seed=SEED, scale=SCALE)
        refs = [gen.sample(i, "good") for i in range(SHOTS)]
        pipe = Pipeline([r.image for r in refs])
        mapping = _map_parts(pipe.parser, refs)
        full = full_size(cat)
        good: list[Scores] = []
        hits = total = 0
        per_part: dict[str, int] = {}  # ground-truth part -> good images whose count was right
        for i in range(SHOTS, SHOTS + N_GOOD):
            s = gen.sample(i, "good")
            if i < SHOTS + N_TIMED:  # speed at full LOCO resolution; the scores below use the rendered size
                big = Image.fromarray(s.image).resize(full, Image.Resampling.BILINEAR)
                t0 = time.perf_counter()
                pipe.run(big)
                times.append(time.perf_counter() - t0)
            good.append(pipe.run(s.image))
            counts = good[-1][3].counts()
            for name, n in s.part_counts.items():
                right = int(name in mapping and counts.get(mapping[name]) == n)
                total += 1
                hits += right
                per_part[name] = per_part.get(name, 0) + right
        logical = [pipe.run(gen.sample(i, "logical").image) for i in range(N_LOGICAL)]
        structural = [pipe.run(gen.sample(i, "structural").image) for i in range(N_STRUCTURAL)]
        row = {
            "structural": _auroc(_column(good, 0), _column(structural, 0)),
            "composition": _auroc(_column(good, 1), _column(logical, 1)),
            "layout": _auroc(_column(good, 2), _column(logical, 2)),
            "fused_l": _auroc(_fused(good), _fused(logical)),
            "fused_s": _auroc(_fused(good), _fused(structural)),
        }
        for k, v in row.items():
            aucs[k].append(v)
        count_hits += hits
        count_total += total
        print(f"  {cat}: structural_auroc={row['structural']:.3f} composition_auroc={row['composition']:.3f} "
              f"count_accuracy={hits / max(total, 1):.3f} layout_logical_auroc={row['layout']:.3f} "
              f"fused_logical_auroc={row['fused_l']:.3f} fused_structural_auroc={row['fused_s']:.3f} "
              f"parts={len(pipe.parser.part_ids())} mapping={mapping}", flush=True)
        # which ground-truth parts the count accuracy misses ('unmapped': no parse part overlaps it)
        print("    counts right per part: " + ", ".join(
            f"{name} {k}/{N_GOOD}" + ("" if name in mapping else " (unmapped)") for name, k in per_part.items()),
            flush=True)
    means = {k: float(np.mean(v)) for k, v in aucs.items()}
    return means, count_hits / max(count_total, 1), float(np.mean(times))


def bench_juice():
    root = SHARED / "loco" / "juice_bottle"
    if not root.is_dir():
        print(f"juice_bottle (real): skipped, {root} is absent")
        return
    train = sorted((root / "train" / "good").glob("*.png"))
    bad = sorted((root / "test" / "logical_anomalies").glob("*.png"))
    pipe = Pipeline(train[:SHOTS])
    times, good, anomalous = [], [], []
    for path in train[SHOTS:]:
        t0 = time.perf_counter()
        good.append(pipe.run(path))
        times.append(time.perf_counter() - t0)
    anomalous = [pipe.run(path) for path in bad]
    print(f"juice_bottle (real, {SHOTS} refs, {len(good)} good, {len(anomalous)} logical): "
          f"structural_auroc(logical)={_auroc(_column(good, 0), _column(anomalous, 0)):.3f} "
          f"composition_auroc={_auroc(_column(good, 1), _column(anomalous, 1)):.3f} "
          f"layout_logical_auroc={_auroc(_column(good, 2), _column(anomalous, 2)):.3f} "
          f"fused_logical_auroc={_auroc(_fused(good), _fused(anomalous)):.3f} "
          f"seconds_per_image={np.mean(times):.3f} peak_rss_mb={peak_rss_mb():.0f}", flush=True)


def main() -> None:
    t0 = time.time()
    bench_juice()
    means, acc, spi = bench_synthetic()
    print(f"(total {time.time() - t0:.0f} s)")
    print(f"detectors (layout, fused): layout_logical_auroc={means['layout']:.3f} "
          f"fused_logical_auroc={means['fused_l']:.3f} fused_structural_auroc={means['fused_s']:.3f}")
    print(f"detectors: structural_auroc={means['structural']:.3f} composition_auroc={means['composition']:.3f} "
          f"count_accuracy={acc:.3f} seconds_per_image={spi:.3f} peak_rss_mb={peak_rss_mb():.0f}")


if __name__ == "__main__":
    main()

"""The agent's rules-free fused score under other weights, on several seeds.

Each image's calibrated structural, composition and layout scores are computed once (the same
``Pipeline`` as ``bench_detectors.py``: 4 references, 10 good / 10 logical / 6 structural images per
category, and the real juice_bottle slice when ``../shared`` is present); then every composition
weight in ``--weights`` is scored from them, with the default power. Prints one line per weight:

    weight_composition=W logical_auroc=X structural_auroc=Y real_juice_logical_auroc=Z good_over_threshold=F

The means are over categories and seeds. About 4 minutes per seed on 2 cores. ``--scores PATH``
keeps the per-image scores as JSON (and reuses them when the file exists).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detectors import N_GOOD, N_LOGICAL, N_STRUCTURAL, SCALE, SHARED, SHOTS, Pipeline, _auroc  # noqa: E402
from agent.config import FusionConfig  # noqa: E402
from agent.fusion import detector_evidence  # noqa: E402
from detectors.data.synth import CATEGORIES, SynthGenerator  # noqa: E402

#: kind -> (index of its first sample, how many): the same samples as bench_detectors.py
KINDS = {"good": (SHOTS, N_GOOD), "logical": (0, N_LOGICAL), "structural": (0, N_STRUCTURAL)}


def _scores(pipe: Pipeline, images) -> list[list[float]]:
    return [[float(v) for v in pipe.run(image)[:3]] for image in images]


def collect(seeds: list[int]) -> dict:
    out: dict = {}
    root = SHARED / "loco" / "juice_bottle"
    if root.is_dir():
        train = sorted((root / "train" / "good").glob("*.png"))
        logical = sorted((root / "test" / "logical_anomalies").glob("*.png"))
        pipe = Pipeline(train[:SHOTS])
        out["real_juice"] = {"good": _scores(pipe, train[SHOTS:]), "logical": _scores(pipe, logical)}
    for seed in seeds:
        for category in CATEGORIES:
            gen = SynthGenerator(category, seed=seed, scale=SCALE)
            pipe = Pipeline([gen.sample(i, "good").image for i in range(SHOTS)])
            out[f"{seed}/{category}"] = {
                kind: _scores(pipe, (gen.sample(first + i, kind).image for i in range(n)))
                for kind, (first, n) in KINDS.items()}
            print(f"  scored seed {seed} {category}", flush=True)
    return out


def report(scores: dict, weights: list[float]) -> None:
    cfg = FusionConfig()

    def fused(s: list[float], w: float) -> float:
        return detector_evidence([(cfg.weight_structural, s[0]), (w, s[1]), (cfg.weight_layout, s[2])],
                                 power=cfg.power)

    synthetic = {k: v for k, v in scores.items() if k != "real_juice"}
    for w in weights:
        logical, structural, over = [], [], []
        for v in synthetic.values():
            good = [fused(s, w) for s in v["good"]]
            logical.append(_auroc(good, [fused(s, w) for s in v["logical"]]))
            structural.append(_auroc(good, [fused(s, w) for s in v["structural"]]))
            over.extend(g >= 0.5 for g in good)
        real = scores.get("real_juice")
        real_auc = (_auroc([fused(s, w) for s in real["good"]], [fused(s, w) for s in real["logical"]])
                    if real else float("nan"))
        print(f"weight_composition={w:g} logical_auroc={np.mean(logical):.3f} structural_auroc={np.mean(structural):.3f} "
              f"real_juice_logical_auroc={real_auc:.3f} good_over_threshold={np.mean(over):.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="20240611,7,3,11")
    ap.add_argument("--weights", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--scores", type=Path, default=None)
    args = ap.parse_args()
    if args.scores is not None and args.scores.is_file():
        scores = json.loads(args.scores.read_text())
    else:
        scores = collect([int(s) for s in args.seeds.split(",")])
        if args.scores is not None:
            args.scores.write_text(json.dumps(scores))
    report(scores, [float(w) for w in args.weights.split(",")])


if __name__ == "__main__":
    main()

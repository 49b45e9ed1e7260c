"""Benchmark of the scene parse alone, over several synthetic seeds: counts and composition.

``bench_detectors.py`` measures every detector on one seed. One seed moves a category's count
accuracy by 0.1 to 0.3 from one seed to the next (the four references differ), so a change to the
parser is judged here, on four seeds, before it is judged there. No arguments are needed::

    python benchmarks/bench_parse.py [--seeds 20240611,7,3,11] [--categories pushpins,...]

For each seed and category it renders 4 references, 10 good and 10 logical images (the sizes of
``bench_detectors.py``), fits ``SceneParser()`` and prints, per category, the count accuracy and
the composition AUROC; then, per ground-truth part over all seeds, how often the parse's count
was right, too high or too low, or the part was not mapped to any parse part (ground-truth parts
are mapped one to one to part ids by pixel overlap on the references, as in
``bench_detectors.py``). The final line::

    parse: seeds=N count_accuracy=X composition_auroc=Y over=A under=B unmapped=C gt_count_auroc=G seconds=S

``over``, ``under`` and ``unmapped`` are fractions of all (good image, ground-truth part) pairs:
where the misses are, more fragments or more merges.

``gt_count_auroc`` is what a perfect count would be worth: the same ``CompositionScorer`` fitted on
the generator's true counts of the references and scored on the true counts of the good and logical
images. It separates the parse's errors from what counting can see at all: a screw too long, a
cable of the wrong colour or a misplaced label changes no count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detectors import N_GOOD, N_LOGICAL, SCALE, SHOTS, _auroc, _map_parts  # noqa: E402
from detectors.data.synth import CATEGORIES, SynthGenerator  # noqa: E402
from detectors.parsing import SceneParser  # noqa: E402
from detectors.parsing.composition import CompositionScorer  # noqa: E402
from detectors.schema import Part, Scene  # noqa: E402

SEEDS = (20240611, 7, 3, 11)


def counts_scene(counts: dict[str, int]) -> Scene:
    """A scene that holds nothing but the ground-truth counts (no geometry, no colour)."""
    parts = [Part(id=name, description=name, color_name="unknown", count=int(n), total_area=0.0)
             for name, n in counts.items()]
    return Scene(image_size=(1, 1), product_bbox=(0, 0, 1, 1), parts=parts, components=[])


def gt_count_auroc(refs, good, logical) -> float:
    """Composition AUROC of the true counts: the ceiling of any parse's counts."""
    scorer = CompositionScorer().fit([counts_scene(s.part_counts) for s in refs])
    return _auroc([scorer.score(counts_scene(s.part_counts)) for s in good],
                  [scorer.score(counts_scene(s.part_counts)) for s in logical])


def bench(seeds, categories) -> dict:
    tally: dict[str, dict[str, int]] = {}  # ground-truth part -> right / over / under / unmapped
    aucs: list[float] = []
    ceilings: list[float] = []
    for seed in seeds:
        for cat in categories:
            gen = SynthGenerator(cat, seed=seed, scale=SCALE)
            refs = [gen.sample(i, "good") for i in range(SHOTS)]
            parser = SceneParser().fit([r.image for r in refs])
            mapping = _map_parts(parser, refs)
            good_scores, hits, total, goods = [], 0, 0, []
            for i in range(SHOTS, SHOTS + N_GOOD):
                sample = gen.sample(i, "good")
                goods.append(sample)
                scene = parser.parse(sample.image)
                good_scores.append(parser.composition_score(scene))
                counts = scene.counts()
                for name, n in sample.part_counts.items():
                    row = tally.setdefault(f"{cat}/{name}", dict.fromkeys(("right", "over", "under", "unmapped"), 0))
                    if name not in mapping:
                        outcome = "unmapped"
                    else:
                        got = counts.get(mapping[name], 0)
                        outcome = "right" if got == n else "over" if got > n else "under"
                    row[outcome] += 1
                    hits += outcome == "right"
                    total += 1
            bad = [gen.sample(i, "logical") for i in range(N_LOGICAL)]
            logical = [parser.composition_score(parser.parse(s.image)) for s in bad]
            auc = _auroc(good_scores, logical)
            aucs.append(auc)
            ceilings.append(gt_count_auroc(refs, goods, bad))
            print(f"  seed {seed} {cat}: count_accuracy={hits / max(total, 1):.3f} composition_auroc={auc:.3f} "
                  f"gt_count_auroc={ceilings[-1]:.3f} parts={len(parser.part_ids())}", flush=True)
    return {"tally": tally, "aucs": aucs, "ceilings": ceilings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    categories = [c for c in args.categories.split(",") if c]
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise SystemExit(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
    t0 = time.time()
    result = bench(seeds, categories)
    tally = result["tally"]
    print("per part over all seeds (right / over / under / unmapped):")
    for name, row in tally.items():
        print(f"  {name}: {row['right']} / {row['over']} / {row['under']} / {row['unmapped']}")
    total = sum(sum(r.values()) for r in tally.values()) or 1
    share = {k: sum(r[k] for r in tally.values()) / total for k in ("right", "over", "under", "unmapped")}
    print(f"parse: seeds={len(seeds)} count_accuracy={share['right']:.3f} "
          f"composition_auroc={float(np.nanmean(result['aucs'])):.3f} over={share['over']:.3f} "
          f"under={share['under']:.3f} unmapped={share['unmapped']:.3f} "
          f"gt_count_auroc={float(np.nanmean(result['ceilings'])):.3f} seconds={time.time() - t0:.0f}")


if __name__ == "__main__":
    main()

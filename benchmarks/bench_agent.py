"""Agent benchmark: quality on the synthetic set and on real MVTec LOCO images, speed, memory.

Runs the CPU default model (llama.cpp Qwen2.5-Coder-1.5B) end to end. Programs are
generated into a fresh cache directory, so generation time is measured, not recalled.
Prints one line per figure and a final summary line.

    python benchmarks/bench_agent.py [--per-kind N] [--categories a,b] [--skip-real] [--cache-dir DIR]
                                     [--link-evidence] [--generation-budget SECONDS|none] [--dump FILE]

Per category it also prints ``detectors_only_logical_auroc``: the same images scored by the
detectors' fused evidence alone (``agent.fusion.detector_evidence`` over the verdict's structural,
composition and layout scores), so that what the LogiCode checks add, or cost, is visible.
``--dump FILE`` writes one JSON line per synthetic image (kind, anomaly type, score, component
scores, the rules the explanation names).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import Agent, AgentConfig  # noqa: E402
from agent.fusion import detector_evidence  # noqa: E402
from agent.demo import shared_dir  # noqa: E402
from detectors.data.synth import CATEGORIES, SynthGenerator  # noqa: E402

SEED = 20261122


def auroc(labels, scores) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def explains_violation(verdict) -> bool:
    """Does the explanation name a failed rule and give observed vs expected?"""
    failed = [f for f in verdict.findings if not f.passed and f.source in ("logicode", "model")]
    text = verdict.explanation
    return any(f"Rule {f.rule_id} FAILED" in text for f in failed) and bool(
        re.search(r"expected .+, observed .+", text)
    )


def named_rules(verdict) -> list:
    """The rules the explanation names as failed (validated checks) or likely violated (detector
    evidence linked to the rule's parts), with expected and observed values."""
    text = verdict.explanation
    return [f for f in verdict.findings
            if not f.passed and f.rule_id not in ("structural", "composition", "layout")
            and (f"Rule {f.rule_id} FAILED" in text or f"Rule {f.rule_id} likely violated" in text)
            and f.expected is not None and f.observed is not None]


def _words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.split(r"[\s_]+", text.lower()) if len(w) > 2}


def names_the_anomaly(rules, named, anomaly_type: str) -> bool:
    """Approximate ground truth: a named rule's structured subject shares a noun with the
    generator's anomaly type (rule "exactly two nuts", subject "nut" - anomaly "missing_nut").
    Anomaly types that name no part (compartments_swapped) never match."""
    subjects = {r.id: r.check.subject for r in rules.rules if r.check is not None}
    return any(_words(subjects.get(f.rule_id, "")) & _words(anomaly_type) for f in named)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kind_auroc(rows, kind: str, column: int) -> float:
    """AUROC of the good images against those of ``kind``, on the score in ``column`` of the rows."""
    good = [row[column] for row in rows if row[0] == "good"]
    bad = [row[column] for row in rows if row[0] == kind]
    return auroc([0] * len(good) + [1] * len(bad), good + bad)


def detectors_only(agent: Agent, verdict) -> float:
    """The verdict's detector evidence without its rule findings: what the checks are added to."""
    cfg = agent.config.fusion
    c = verdict.component_scores
    return detector_evidence([(cfg.weight_structural, c.get("structural", float("nan"))),
                              (cfg.weight_composition, c.get("composition", float("nan"))),
                              (cfg.weight_layout, c.get("layout", float("nan")))], power=cfg.power)


def synthetic(agent: Agent, categories, per_kind: int, k: int, scale: float, dump=None) -> dict:
    per_cat = {}
    gen_times, explained, detected_logical, named, named_right = [], 0, 0, 0, 0
    for category in categories:
        gen = SynthGenerator(category, seed=SEED, scale=scale)
        refs = [gen.sample(i, kind="good").image for i in range(k)]
        t0 = time.perf_counter()
        ctx = agent.prepare(category=category, references=refs)
        gen_times.append(ctx.timings.get("program", time.perf_counter() - t0))
        rows = []
        for kind in ("good", "logical", "structural"):
            for i in range(per_kind):
                sample = gen.sample(1000 + i, kind=kind)
                verdict = agent.run_prepared(ctx, sample.image)
                rows.append((kind, verdict.score, detectors_only(agent, verdict)))
                if dump is not None:
                    dump.write(json.dumps({
                        "category": category, "kind": kind, "index": 1000 + i, "anomaly_type": sample.anomaly_type,
                        "score": verdict.score, "is_anomalous": verdict.is_anomalous,
                        "components": verdict.component_scores,
                        "failed_rules": [f.rule_id for f in verdict.findings if not f.passed],
                        "named_rules": [f.rule_id for f in named_rules(verdict)]}) + "\n")
                    dump.flush()
                if kind == "logical" and verdict.is_anomalous:
                    detected_logical += 1
                    explained += explains_violation(verdict)
                    rules_named = named_rules(verdict)
                    named += bool(rules_named)
                    named_right += names_the_anomaly(ctx.rules, rules_named, sample.anomaly_type or "")
        per_cat[category] = {
            "logical_auroc": kind_auroc(rows, "logical", column=1),
            "structural_auroc": kind_auroc(rows, "structural", column=1),
            "detectors_only_logical_auroc": kind_auroc(rows, "logical", column=2),
            "detectors_only_structural_auroc": kind_auroc(rows, "structural", column=2),
            "rules_checked_by_code": f"{len(ctx.program.checked_rule_ids) if ctx.program else 0}/{len(ctx.rules.rules)}",
            "program_seconds": round(gen_times[-1], 1),
        }
        print(f"synthetic {category}: {json.dumps(per_cat[category])}", flush=True)
    return {
        "per_category": per_cat,
        "logical_auroc": float(np.nanmean([c["logical_auroc"] for c in per_cat.values()])),
        "structural_auroc": float(np.nanmean([c["structural_auroc"] for c in per_cat.values()])),
        "detectors_only_logical_auroc": float(np.nanmean([c["detectors_only_logical_auroc"] for c in per_cat.values()])),
        "detectors_only_structural_auroc": float(np.nanmean(
            [c["detectors_only_structural_auroc"] for c in per_cat.values()])),
        "explained_fraction": explained / detected_logical if detected_logical else float("nan"),
        "rule_named_fraction": named / detected_logical if detected_logical else float("nan"),
        "rule_named_matches_anomaly": named_right / detected_logical if detected_logical else float("nan"),
        "generation_seconds_max": max(gen_times),
    }


def real_cases(agent: Agent, shared: Path) -> dict:
    out = {}
    for case in sorted((shared / "loco" / "cases").iterdir()):
        meta = json.loads((case / "rules.json").read_text())
        kwargs = dict(rules=meta["rules"], category=meta["category"], class_context=meta["class_context"])
        few = {name: agent.run(case / name, references=[case / "normal.png"], **kwargs) for name in ("normal.png", "abnormal.png")}
        zero = {name: agent.run(case / name, **kwargs) for name in ("normal.png", "abnormal.png")}
        out[case.name] = {
            "normal_passed": not few["normal.png"].is_anomalous,
            "abnormal_flagged": few["abnormal.png"].is_anomalous,
            "abnormal_explanation": few["abnormal.png"].explanation,
            "abnormal_rules_named": [f.rule_id for f in named_rules(few["abnormal.png"])],
            "abnormal_shows": meta["abnormal_shows"],
            "zero_shot_normal_passed": not zero["normal.png"].is_anomalous,
            "zero_shot_abnormal_flagged": zero["abnormal.png"].is_anomalous,
        }
        print(f"real case {case.name}: " + json.dumps({k: v for k, v in out[case.name].items() if "explanation" not in k}), flush=True)
        print(f"  explanation: {few['abnormal.png'].explanation!r}", flush=True)
    return out


def juice_bottle(agent: Agent, shared: Path) -> float:
    root = shared / "loco" / "juice_bottle"
    train = sorted((root / "train" / "good").glob("*.png"))
    logical = sorted((root / "test" / "logical_anomalies").glob("*.png"))
    meta = json.loads((root / "rules.json").read_text())
    ctx = agent.prepare(rules=meta["rules"], category="juice_bottle", class_context=meta["class_context"],
                        references=train[:4])
    good = [agent.run_prepared(ctx, p).score for p in train[4:]]
    bad = [agent.run_prepared(ctx, p).score for p in logical]
    return auroc([0] * len(good) + [1] * len(bad), good + bad)


def speed(agent: Agent, n: int = 10) -> float:
    gen = SynthGenerator("screw_bag", seed=SEED, scale=1.0)
    ctx = agent.prepare(category="screw_bag", references=[gen.sample(i).image for i in range(4)])
    images = [gen.sample(500 + i, kind="good").image for i in range(n)]
    agent.run_prepared(ctx, images[0])  # warm
    times = []
    for img in images:
        t0 = time.perf_counter()
        agent.run_prepared(ctx, img)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-kind", type=int, default=8)
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--link-evidence", action="store_true",
                    help="AgentConfig.link_evidence_to_rules: name rules from detector evidence (off by default)")
    ap.add_argument("--generation-budget", default=None,
                    help="AgentConfig.generation_budget_s in seconds, or 'none' for no limit (default: the config's)")
    ap.add_argument("--dump", type=Path, default=None, help="write one JSON line per synthetic image here")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="reuse the programs and fits of an earlier run (then generation is recalled, not measured)")
    args = ap.parse_args()

    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="logiscan-bench-"))
    print(f"cache: {cache}", flush=True)
    overrides = {}
    if args.generation_budget is not None:
        overrides["generation_budget_s"] = (None if args.generation_budget.lower() == "none"
                                            else float(args.generation_budget))
    agent = Agent(AgentConfig(cache_dir=cache, link_evidence_to_rules=args.link_evidence, **overrides))
    dump = args.dump.open("w") if args.dump else None
    try:
        syn = synthetic(agent, args.categories.split(","), args.per_kind, args.k, args.scale, dump)
    finally:
        if dump is not None:
            dump.close()
    print(f"synthetic: logical_auroc={syn['logical_auroc']:.3f} structural_auroc={syn['structural_auroc']:.3f} "
          f"explained={syn['explained_fraction']:.2f} generation_s_max={syn['generation_seconds_max']:.1f} "
          f"detectors_only_logical_auroc={syn['detectors_only_logical_auroc']:.3f} "
          f"detectors_only_structural_auroc={syn['detectors_only_structural_auroc']:.3f}", flush=True)
    print(f"synthetic explanations: detected logical anomalies whose explanation names a rule (validated or "
          f"likely, with expected/observed) rule_named_fraction={syn['rule_named_fraction']:.2f}; "
          f"the named rule's subject matches the anomaly type rule_named_matches_anomaly="
          f"{syn['rule_named_matches_anomaly']:.2f}", flush=True)

    shared = None if args.skip_real else shared_dir()
    real_line = "real: skipped"
    if shared is not None:
        cases = real_cases(agent, shared)
        flagged = sum(c["abnormal_flagged"] for c in cases.values())
        passed = sum(c["normal_passed"] for c in cases.values())
        zs_flagged = sum(c["zero_shot_abnormal_flagged"] for c in cases.values())
        zs_passed = sum(c["zero_shot_normal_passed"] for c in cases.values())
        jb = juice_bottle(agent, shared)
        real_line = (f"real: abnormal_flagged={flagged}/{len(cases)} normal_passed={passed}/{len(cases)} "
                     f"zero_shot_flagged={zs_flagged}/{len(cases)} zero_shot_passed={zs_passed}/{len(cases)} "
                     f"juice_bottle_logical_auroc={jb:.3f}")
    print(real_line, flush=True)
    median_s = speed(agent)
    print(f"agent: synthetic_logical_auroc={syn['logical_auroc']:.3f} synthetic_structural_auroc={syn['structural_auroc']:.3f} "
          f"explained_fraction={syn['explained_fraction']:.2f} generation_s_per_ruleset_max={syn['generation_seconds_max']:.1f} "
          f"run_median_s_full_res={median_s:.2f} peak_rss_mb={peak_rss_mb():.0f}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

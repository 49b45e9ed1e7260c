"""Audit throughput: a 100-image synthetic MVTec LOCO audit with the default (CPU) agent.

Generates the data with ``generate_dataset``, warms the caches (fitted detectors and
LogiCode programs on disk) with one short audit, then times a fresh full audit.
Prints ``audit: images_per_s=X peak_rss_mb=Y`` (peak RSS over this process and its
worker processes). Target: at least 1 image/s on 2 cores.

    python benchmarks/bench_audit.py [--images 100] [--workers 0] [--config agent.yaml] [--categories screw_bag,pushpins]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_rss_mb() -> tuple[float, float]:
    """(this process, largest child) peak RSS in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--workers", type=int, default=0, help="0 = the audit's own choice (one per core for big batches)")
    ap.add_argument("--categories", default="screw_bag,splicing_connectors")
    ap.add_argument("--scale", type=float, default=0.25, help="synthetic image size relative to LOCO")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="write data and outputs here instead of a temp dir")
    ap.add_argument("--config", type=Path, default=None, help="AgentConfig YAML/JSON (default: CPU defaults)")
    args = ap.parse_args(argv)

    from functools import partial

    from agent.audit import run_audit
    from agent.cli import make_agent
    from detectors.data.synth import generate_dataset

    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    # three test splits per category (good, logical, structural) share the image budget
    per_split = max(1, math.ceil(args.images / (3 * len(categories))))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_audit_"))
    data = work / "data"
    t0 = time.perf_counter()
    generate_dataset(data, seed=args.seed, categories=categories, per_split=per_split, scale=args.scale)
    print(f"generated {len(categories)} categories x {3 * per_split} test images in {time.perf_counter() - t0:.1f}s "
          f"at scale {args.scale}", file=sys.stderr)

    # warm-up: fills the on-disk caches (fitted references, LogiCode programs) like any second run
    t0 = time.perf_counter()
    factory = partial(make_agent, args.config)
    for category in categories:
        run_audit(data, out=work / "warmup" / category, category=category, k=args.k, limit=1, workers=1,
                  report=False, progress=False, agent_factory=factory)
    print(f"warm-up audit {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    t0 = time.perf_counter()
    result = run_audit(data, out=work / "audit", k=args.k, limit=args.images, workers=args.workers,
                       progress=False, agent_factory=factory)
    wall = time.perf_counter() - t0
    n = result.scored_now
    own, child = peak_rss_mb()
    peak = max(own, child)  # children: the largest worker process, if any ran
    rate = n / wall if wall > 0 else 0.0
    summary = {
        "images": n, "errors": result.errors, "workers": args.workers, "wall_s": round(wall, 2),
        "images_per_s": round(rate, 3), "peak_rss_mb": round(peak, 1), "scale": args.scale,
        "auroc_mean": result.metrics.mean.get("auroc_mean"), "timing": result.metrics.timing,
    }
    print(json.dumps(summary, indent=2, default=str), file=sys.stderr)
    print(f"audit: images_per_s={rate:.2f} peak_rss_mb={peak:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

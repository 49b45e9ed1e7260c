"""Speed of the synthetic generator at half LOCO resolution.

Prints ``synth: seconds_per_image=X`` (wall clock, averaged over every category and
good/logical/structural samples), plus CPU seconds per image and a per-category line.
The budget is 0.3 s per image on 2 cores.

    .venv/bin/python benchmarks/bench_synth.py [--per-kind N] [--scale S]
"""

from __future__ import annotations

import argparse
import time

from detectors.data.synth import CATEGORIES, SynthGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=3, help="samples of each kind per category")
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args()

    total_wall = total_cpu = 0.0
    count = 0
    for category in CATEGORIES:
        gen = SynthGenerator(category, seed=0, scale=args.scale)
        gen.sample(999)  # warm-up: noise bank, imports
        wall0, cpu0 = time.perf_counter(), time.process_time()
        n = 0
        for kind in ("good", "logical", "structural"):
            for i in range(args.per_kind):
                gen.sample(i, kind)
                n += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        print(f"  {category:20s} {gen.size[0]}x{gen.size[1]}  wall={wall / n:.3f}s  cpu={cpu / n:.3f}s per image")
        total_wall += wall
        total_cpu += cpu
        count += n
    print(f"synth: seconds_per_image={total_wall / count:.3f} cpu_seconds_per_image={total_cpu / count:.3f} "
          f"(scale={args.scale}, images={count})")


if __name__ == "__main__":
    main()

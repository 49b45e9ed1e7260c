"""LogiCode generation speed: wall time to write and validate the programs of one rule set.

Uses the CPU default model (llama.cpp Qwen2.5-Coder-1.5B) on a synthetic rule pack (screw_bag
unless ``--category`` names another) with 4 normal references, as ``agent.prepare`` does on a
first run. The fitted
detectors are cached in a benchmark-only directory (fitting is not what is measured);
the program cache there is emptied first, so every run really generates. Saved prompt states
(``agent.llm.prompt_states``) are used as in any run; ``--cold-prompts`` turns them off, to
measure a process that reads every prompt in full.

Prints one line per model call, one per rule (seconds, attempts, validated or why not),
the total, and a final JSON summary line.

``--no-lookup`` decodes one token per pass instead of guessing from the prompt (``agent.llm.lookup``).

    python benchmarks/bench_generation.py [--category NAME] [--cold-prompts] [--no-lookup]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import Agent, AgentConfig  # noqa: E402
from detectors.data.synth import SynthGenerator  # noqa: E402

CATEGORY = "screw_bag"
K = 4
SEED = 20261122  # the same synthetic references as benchmarks/bench_agent.py
SCALE = 0.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--category", default=CATEGORY)
    ap.add_argument("--cold-prompts", action="store_true", help="do not use saved prompt states")
    ap.add_argument("--no-lookup", action="store_true", help="decode one token per pass (no prompt lookup)")
    args = ap.parse_args()
    cache = Path(tempfile.gettempdir()) / "logiscan-bench-generation"
    shutil.rmtree(cache / "programs", ignore_errors=True)
    llm = {}
    if args.cold_prompts:
        llm["prompt_states"] = False
    if args.no_lookup:
        llm["prompt_lookup"] = 0
    agent = Agent(AgentConfig(cache_dir=cache, llm=llm or None))

    gen = SynthGenerator(args.category, seed=SEED, scale=SCALE)
    refs = [gen.sample(i, kind="good").image for i in range(K)]

    # Load the model before timing: loading is paid once per process, not per rule set.
    t0 = time.perf_counter()
    _ = agent.chat_model.llama if hasattr(agent.chat_model, "llama") else agent.chat_model
    load_s = time.perf_counter() - t0

    calls: list[tuple[int, float, int]] = []
    chat = agent._chat

    def timed_chat(messages, attempt=0, timeout_s=None):
        start = time.perf_counter()
        text = chat(messages, attempt, timeout_s)
        calls.append((attempt, time.perf_counter() - start, len(text)))
        print(f"  call: attempt {attempt + 1}, {calls[-1][1]:.1f} s, {len(text)} chars answered", flush=True)
        return text

    agent._chat = timed_chat  # observe every model call the generator makes

    ctx = agent.prepare(category=args.category, references=refs)
    program = ctx.program
    if program is None:
        print(f"no program: {ctx.logic_note}")
        return 1
    print(f"model load: {load_s:.1f} s; fit perception: {ctx.timings.get('fit_perception', 0):.1f} s")
    reasons = program.unavailable
    for f in program.functions:
        status = "validated" if f.ok else f"NOT validated ({reasons[f.rule_id][:120]})"
        print(f"rule {f.rule_id}: {f.seconds:.1f} s, {f.attempts} attempt(s), {status}")
    total = program.generation_seconds
    ok = sum(f.ok for f in program.functions)
    print(f"total generation: {total:.1f} s for {len(program.functions)} rules, {ok} validated, "
          f"{len(calls)} model calls")
    summary = {
        "category": args.category,
        "prompt_states": not args.cold_prompts,
        "prompt_lookup": not args.no_lookup,
        "model": program.model_id,
        "threads_available": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "generation_seconds": round(total, 1),
        "rules": {f.rule_id: {"seconds": round(f.seconds, 1), "attempts": f.attempts, "validated": f.ok}
                  for f in program.functions},
        "validated": f"{ok}/{len(program.functions)}",
        "model_calls": len(calls),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

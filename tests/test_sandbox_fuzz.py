"""Property-based: random and mutated programs never crash the host, and every result is
well-formed with a valid kind."""

from __future__ import annotations

import json
import os
import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import RunResult, check_source, run_program

KINDS = {"rejected", "timeout", "memory", "runtime_error", "output_too_large", "crashed"}

SEEDS = [
    textwrap.dedent(s).lstrip("\n")
    for s in (
        """
        import logicode as lc

        def check(scene, references):
            n = lc.count(scene, "p1")
            return [lc.finding("r1", n == 2, n, 2, "two screws")]
        """,
        """
        import numpy as np
        from scipy import ndimage

        def check(scene, references):
            mask = np.zeros((20, 20), dtype=bool)
            mask[2:5, 2:5] = True
            labels, n = ndimage.label(mask)
            return {"n": n, "areas": [c["area"] for c in scene["components"]]}
        """,
        """
        from collections import Counter

        def check(scene, references):
            colours = Counter(c["color_name"] for c in scene["components"])
            out = []
            for name, k in sorted(colours.items()):
                out.append({"rule_id": name, "passed": k < 3, "observed": k})
            return out
        """,
    )
]

SNIPPETS = [
    "import os", "x = ().__class__.__base__", "while True: pass", "return [0] * 10 ** 9", "return check",
    "print('x' * 100000)", "raise ValueError('bad')", "return 1 / 0", "import numpy as np", "return np.ones(3)",
    "return {1: 2}", "return {(1, 2): 3}", "getattr(x, 'y')", "def f(): return f()", "return f()", "yield 1",
    "lambda: 0", "return '{0}'.format(1)", "return 10 ** 10 ** 6", "global g", "return None", "x = [x for x in range(3)]",
    "return float('nan')", "class A: pass", "return A()", "import logicode as lc", "return lc.count(scene, 'nope')",
    "return set([1])", "try:\n    pass\nexcept Exception:\n    pass", "return scene",
]

SCENE = {
    "image_size": [100, 100], "product_bbox": [0, 0, 100, 100], "grid": None,
    "parts": [{"id": "p1", "name": "screw", "description": "screw", "color_name": "gray", "count": 2, "total_area": 20.0}],
    "components": [
        {"id": i, "part": "p1", "area": 10.0, "area_frac": 0.001, "centroid": [10.0 + 50 * i, 10.0],
         "centroid_rel": [0.1 + 0.5 * i, 0.1], "bbox": [5 + 50 * i, 5, 15 + 50 * i, 15], "orientation": 0.0,
         "major_axis": 4.0, "minor_axis": 3.0, "color_rgb": [128, 128, 128], "color_name": "gray",
         "horizontal": "left", "vertical": "top", "grid_cell": None}
        for i in range(2)
    ],
}


@st.composite
def mutated_programs(draw) -> str:
    lines = draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "char", "indent"]))
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "delete" and lines:
            del lines[i]
        elif op == "insert":
            snippet = draw(st.sampled_from(SNIPPETS))
            indent = draw(st.sampled_from(["", "    ", "        "]))
            lines[i:i] = [indent + s for s in snippet.splitlines()]
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "char" and lines and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            c = draw(st.characters(codec="utf-8"))
            lines[i] = lines[i][:j] + c + lines[i][j + 1:]
        elif op == "indent" and lines:
            lines[i] = "    " + lines[i]
    return "\n".join(lines) + "\n"


programs = st.one_of(
    mutated_programs(),
    st.text(max_size=200),
    st.lists(st.sampled_from(SNIPPETS + ["def check(scene, references):"]), max_size=6).map(
        lambda ls: "def check(scene, references):\n" + "\n".join("    " + s.replace("\n", "\n    ") for s in ls) + "\n"
    ),
)


def assert_well_formed(result: RunResult) -> None:
    assert isinstance(result, RunResult)
    assert result.ok == (result.error_kind is None)
    if result.ok:
        json.dumps(result.value)  # plain JSON data
        assert result.error is None
    else:
        assert result.error_kind in KINDS
        assert isinstance(result.error, str) and result.error
        if result.error_kind == "rejected":
            assert result.error.startswith("line ")
    assert isinstance(result.stdout, str) and len(result.stdout) <= 64 * 1024 + 200
    assert result.seconds >= 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(source=programs)
def test_random_and_mutated_programs_give_valid_results(source):
    problems = check_source(source)
    assert all(p.line >= 1 and p.message for p in problems)
    result = run_program(source, args={"scene": SCENE, "references": [SCENE]}, timeout_s=0.5, memory_mb=256)
    assert_well_formed(result)
    if problems:
        assert result.error_kind == "rejected"


def test_host_is_healthy_after_fuzzing():
    pid = os.getpid()
    result = run_program("def check():\n    return 'alive'\n")
    assert result.ok and result.value == "alive"
    assert os.getpid() == pid

"""The sandbox's contract: legitimate programs work, errors are clear, calls are isolated,
concurrent and recover from dead workers; plus the static check and the logicode helpers."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import numpy as np
import pytest

import sandbox
from sandbox import API_REFERENCE, API_VERSION, SCENE_API_REFERENCE, RunResult, SandboxError, check_source, run_program
from sandbox import logicode as lc

VALID_KINDS = {None, "rejected", "timeout", "memory", "runtime_error", "output_too_large", "crashed"}


def program(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def make_scene(screws: int = 2, cable_color: str = "red", grid: bool = True) -> dict:
    """A realistic scene dict, built through the real schema so the contract is exercised."""
    from detectors.schema import Component, Part, Scene, Stats

    comps = []
    for i in range(screws):
        x = 20 + 60 * i
        comps.append(Component(
            id=len(comps), part="p1", area=100.0 + i, area_frac=0.01, centroid=(x + 5.0, 25.0),
            centroid_rel=(min(0.05 + 0.3 * i, 0.95), 0.1), bbox=(x, 20, x + 10, 30), orientation=0.0,
            major_axis=12.0 + i, minor_axis=8.0, color_rgb=(128, 128, 128), color_name="gray",
            horizontal="left" if i == 0 else "right", vertical="top", grid_cell=(0, min(i, 1)),
        ))
    rgb = {"red": (200, 20, 20), "blue": (20, 40, 200)}[cable_color]
    comps.append(Component(
        id=len(comps), part="p2", area=900.0, area_frac=0.09, centroid=(100.0, 150.0), centroid_rel=(0.5, 0.8),
        bbox=(40, 140, 160, 160), orientation=0.0, major_axis=120.0, minor_axis=10.0, color_rgb=rgb,
        color_name=cable_color, horizontal="center", vertical="bottom", grid_cell=(1, 0),
    ))
    parts = [
        Part(id="p1", name="screw", description="small gray screw", color_name="gray", count=screws,
             total_area=float(sum(c.area for c in comps if c.part == "p1")),
             ref_count=Stats(mean=2, std=0, min=2, max=2), ref_area=Stats(mean=200, std=3, min=197, max=203)),
        Part(id="p2", name="cable", description="long red cable", color_name=cable_color, count=1, total_area=900.0),
    ]
    scene = Scene(image_size=(200, 200), product_bbox=(0, 0, 200, 200), grid=(2, 2) if grid else None,
                  parts=parts, components=comps)
    return scene.model_dump(mode="json")


# -- legitimate programs ------------------------------------------------------------------
def test_trivial_program_returns_its_value_and_timing():
    result = run_program("def check():\n    return {'answer': 42, 'items': [1, 2.5, 'x', None, True]}\n")
    assert isinstance(result, RunResult)
    assert result.ok and result.error_kind is None and result.error is None
    assert result.value == {"answer": 42, "items": [1, 2.5, "x", None, True]}
    assert 0 < result.seconds < 30


def test_trivial_program_runs_with_256_mb():
    result = run_program("def check():\n    return sum(range(1000))\n", memory_mb=256)
    assert result.ok, result.error
    assert result.value == 499500


def test_numpy_counting_and_scipy_label_on_a_mask():
    mask = np.zeros((60, 80), dtype=bool)
    mask[5:10, 5:10] = mask[20:30, 40:45] = mask[50:55, 70:78] = True
    source = program("""
        import numpy as np
        from scipy import ndimage
        import scipy.ndimage

        def check(mask, min_area):
            labels, n = ndimage.label(mask)
            sizes = np.bincount(labels.ravel())[1:]
            big = [int(s) for s in sizes if s >= min_area]
            same, _ = scipy.ndimage.label(mask)
            return {"n": n, "big": big, "pixels": mask.sum(), "mean": float(np.mean(mask)), "same": bool((same == labels).all())}
    """)
    result = run_program(source, args={"mask": mask, "min_area": 30})
    assert result.ok, result.error
    assert result.value == {"n": 3, "big": [50, 40], "pixels": 115, "mean": pytest.approx(115 / 4800), "same": True}


def test_numpy_arrays_of_each_allowed_dtype_cross_intact():
    arrays = {
        "a": np.arange(6, dtype=np.uint8).reshape(2, 3),
        "b": np.linspace(0, 1, 5, dtype=np.float32),
        "c": np.array([[True, False], [False, True]]),
        "d": np.arange(-3, 3, dtype=np.int64)[::2],  # non-contiguous view
    }
    source = "def check(a, b, c, d):\n    return [a.tolist(), b.dtype.name, c.sum(), d.tolist(), a.shape]\n"
    result = run_program(source, args=arrays)
    assert result.ok, result.error
    assert result.value == [[[0, 1, 2], [3, 4, 5]], "float32", 2, [-3, -1, 1], [2, 3]]


def test_collections_comprehensions_and_findings_list():
    scene = make_scene(screws=3)
    source = program("""
        from collections import Counter, defaultdict
        import itertools, functools, math, statistics, re, typing
        import logicode as lc
        from logicode import count, finding

        def check(scene, references):
            colours = Counter(c["color_name"] for c in scene["components"])
            by_part = defaultdict(list)
            for c in scene["components"]:
                by_part[c["part"]].append(c["area"])
            pairs = list(itertools.combinations(sorted(by_part), 2))
            total = functools.reduce(lambda a, b: a + b, [sum(v) for v in by_part.values()])
            findings = [
                finding("r1", count(scene, "screw") == 2, count(scene, "p1"), 2, "two screws",
                        evidence=lc.components(scene, "p1")),
                finding("r2", colours["red"] == 1, dict(colours), {"red": 1}, "one red cable"),
                lc.finding("r3", math.isclose(total, statistics.fsum(c["area"] for c in scene["components"])) if hasattr_ok() else True,
                           round(total), pairs, re.sub(r"\\s+", " ", "total   area")),
            ]
            return findings

        def hasattr_ok() -> typing.Any:
            return True
    """)
    source = source.replace("statistics.fsum", "math.fsum")
    result = run_program(source, args={"scene": scene, "references": [make_scene()]})
    assert result.ok, result.error
    r1, r2, r3 = result.value
    assert r1 == {"rule_id": "r1", "passed": False, "observed": 3, "expected": 2, "explanation": "two screws",
                  "evidence": [[20, 20, 30, 30], [80, 20, 90, 30], [140, 20, 150, 30]]}
    assert r2["passed"] is True and r2["observed"] == {"gray": 3, "red": 1}
    assert r3["passed"] is True and r3["observed"] == 1203 and r3["expected"] == [["p1", "p2"]]
    assert r3["explanation"] == "total area"


def test_agent_style_program_with_references():
    """The shape the agent assembles: per-rule functions and a check() that isolates them."""
    source = program("""
        import math
        import logicode as lc

        def check_r1(scene, references):
            observed = lc.count(scene, "p1")
            expected = lc.typical(references, lambda s: lc.count(s, "p1"))
            ok = lc.within_references(observed, references, lambda s: lc.count(s, "p1"), tolerance=0)
            return lc.finding("r1", ok, observed, expected, "number of screws")

        def check_r2(scene, references):
            observed = max(lc.lengths(scene, "cable"), default=0)
            return lc.finding("r2", observed > 0, round(observed), None, "cable present")

        def check_r3(scene, references):
            return lc.finding("r3", lc.part(scene, "gear")["count"] == 1, 0, 1, "no such part")

        RULE_CHECKS = [("r1", check_r1), ("r2", check_r2), ("r3", check_r3)]

        def check(scene, references):
            findings = []
            for rule_id, rule_check in RULE_CHECKS:
                try:
                    findings.append(rule_check(scene, references))
                except Exception as error:
                    findings.append(lc.finding(rule_id, False, None, None, 'the check could not be evaluated: ' + str(error)))
            return findings
    """)
    refs = [make_scene(screws=2) for _ in range(3)]
    good = run_program(source, args={"scene": make_scene(screws=2), "references": refs})
    bad = run_program(source, args={"scene": make_scene(screws=3), "references": refs})
    assert good.ok and bad.ok, (good.error, bad.error)
    assert [f["passed"] for f in good.value] == [True, True, False]
    assert [f["passed"] for f in bad.value] == [False, True, False]
    assert bad.value[0]["observed"] == 3 and bad.value[0]["expected"] == 2
    assert "no part 'gear'" in good.value[2]["explanation"] and "p1 (screw)" in good.value[2]["explanation"]


def test_print_is_captured_and_bounded():
    result = run_program("def check():\n    print('hello', 3, sep='-')\n    print('x' * 200000)\n    return 1\n")
    assert result.ok
    assert result.stdout.startswith("hello-3\n")
    assert len(result.stdout) <= 64 * 1024 + 200
    assert "more characters of output dropped" in result.stdout


def test_numpy_scalars_and_tuples_are_returned_as_plain_data():
    result = run_program("import numpy as np\ndef check():\n    return (np.int64(3), np.float32(0.5), np.bool_(True), np.arange(3))\n")
    assert result.ok, result.error
    assert result.value == [3, 0.5, True, [0, 1, 2]]
    assert type(result.value[0]) is int and type(result.value[2]) is bool


# -- clear errors ---------------------------------------------------------------------------
def test_runtime_error_reports_line_and_reason():
    result = run_program("def helper(d):\n    return d['missing']\n\ndef check():\n    return helper({})\n")
    assert not result.ok and result.error_kind == "runtime_error"
    assert result.error.startswith("line 2: KeyError")
    assert "'missing'" in result.error


def test_lone_surrogates_in_a_result_or_error_become_printable():
    value = run_program("def check():\n    return {'observed': 'a' + chr(0xdcff)}\n")
    assert value.ok and value.value == {"observed": "a?"}
    error = run_program("def check():\n    raise ValueError('bad ' + chr(0xd800))\n")
    assert not error.ok and "bad ?" in error.error
    for result in (value, error):
        result.model_dump_json().encode("utf-8")  # a verdict holding it can be saved and printed


def test_rejection_reports_line_and_reason():
    result = run_program("import math\n\ndef check():\n    return eval('1')\n")
    assert not result.ok and result.error_kind == "rejected"
    assert result.error == "line 4: builtin 'eval' is not allowed in LogiCode"


def test_missing_entrypoint_is_rejected():
    result = run_program("def other():\n    return 1\n", entrypoint="check")
    assert result.error_kind == "rejected"
    assert "defines no top-level function 'check'" in result.error


def test_wrong_arguments_are_a_runtime_error():
    result = run_program("import math\n\ndef check(scene):\n    return 1\n", args={"image": 3})
    assert result.error_kind == "runtime_error"
    assert result.error.startswith("line 3: TypeError")
    assert "unexpected keyword argument 'image'" in result.error


def test_custom_object_result_names_the_type_and_line():
    result = run_program("class Box:\n    pass\n\ndef check():\n    return {'box': Box()}\n")
    assert result.error_kind == "runtime_error"
    assert result.error.startswith("line 4: check() returned data that cannot leave the sandbox")
    assert "the return value['box'] is of type Box" in result.error


def test_syntax_error_is_rejected_with_line():
    result = run_program("def check():\n    return (1,\n\n")
    assert result.error_kind == "rejected"
    assert result.error.startswith("line 2: syntax error")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: run_program(b"def check(): return 1"), "source must be a str"),
        (lambda: run_program("def check(): return 1", args=[1]), "args must be a dict"),
        (lambda: run_program("def check(): return 1", entrypoint="__init__"), "entrypoint must be a public identifier"),
        (lambda: run_program("def check(x): return 1", args={"x": object()}), "args['x'] has type object"),
        (lambda: run_program("def check(x): return 1", args={"x": np.array(["a"])}), "only bool, int, uint and float arrays"),
        (lambda: run_program("def check(x): return 1", args={"x": {1: 2}}), "keys must be strings"),
        (lambda: run_program("def check(): return 1", timeout_s=0), "timeout_s must be a number"),
        (lambda: run_program("def check(): return 1", memory_mb=1.5), "memory_mb must be an int"),
        (lambda: check_source(None), "source must be a str"),
    ],
)
def test_misuse_raises_sandbox_error(call, message):
    with pytest.raises(SandboxError, match=message.replace("[", r"\[").replace("(", r"\(")):
        call()
    assert issubclass(SandboxError, TypeError)


# -- isolation between calls, recovery and concurrency ----------------------------------------
def test_module_mutation_does_not_leak_into_the_next_call():
    first = run_program(program("""
        import math
        import numpy as np
        import logicode as lc
        def check():
            np.seterr(all="raise")
            np.set_printoptions(precision=1)
            errors = []
            for target in ("math", "lc"):
                try:
                    if target == "math":
                        math.pi = 3
                    else:
                        lc.count = None
                except AttributeError as e:
                    errors.append(str(e))
            return errors
    """))
    assert first.ok, first.error
    assert first.value == ["allowed modules are read-only in LogiCode"] * 2
    second = run_program(program("""
        import math
        import numpy as np
        import logicode as lc
        def check():
            return [math.pi, np.geterr()["divide"], np.get_printoptions()["precision"], lc.count({"parts": [], "components": []})]
    """))
    assert second.ok, second.error
    assert second.value == [pytest.approx(3.141592653589793), "warn", 8, 0]


def test_killed_worker_is_replaced_and_next_call_succeeds():
    assert run_program("def check():\n    return 1\n").ok
    pool = sandbox.runner._get_pool()
    for worker in list(pool.workers):
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
    result = run_program("def check():\n    return 'back'\n")
    assert result.ok and result.value == "back"
    assert all(w.alive() for w in pool.workers)


def test_a_worker_that_cannot_start_is_an_error_result_and_the_pool_recovers(monkeypatch):
    assert run_program("def check():\n    return 1\n").ok
    pool = sandbox.runner._get_pool()
    real_popen = sandbox.runner.subprocess.Popen

    def no_descriptors(*args, **kwargs):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(sandbox.runner.subprocess, "Popen", no_descriptors)
    for worker in list(pool.workers):  # every worker dies; none can be replaced
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
    for _ in range(len(pool.workers) + 2):  # never raises, never hangs
        t0 = time.perf_counter()
        result = run_program("def check():\n    return 1\n")
        assert not result.ok and result.error_kind == "crashed" and "Too many open files" in result.error
        assert time.perf_counter() - t0 < 15
    monkeypatch.setattr(sandbox.runner.subprocess, "Popen", real_popen)  # resources come back
    assert run_program("def check():\n    return 'back'\n").value == "back"
    assert run_program("def check():\n    return 'again'\n").value == "again"


def test_working_folders_of_hosts_that_died_are_swept(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"logicode-{dead.stdout.strip()}-abc"
    alive = tmp_path / f"logicode-{os.getppid()}-def"
    foreign = tmp_path / "logicode-notapid"
    for folder in (gone, alive, foreign):
        folder.mkdir()
    sandbox.runner._sweep_stale_workdirs()
    assert not gone.exists() and alive.exists() and foreign.exists()


def test_stuck_worker_is_killed_by_the_host(monkeypatch):
    """Workers that stop answering (here: their whole process group is SIGSTOPped) are
    killed by the host at timeout + grace and replaced; then calls succeed again."""
    monkeypatch.setattr(sandbox.runner, "HOST_GRACE_S", 0.3)
    assert run_program("def check():\n    return 1\n").ok
    pool = sandbox.runner._get_pool()
    stopped = list(pool.workers)
    for worker in stopped:
        worker.ensure_ready()
        os.killpg(worker.proc.pid, signal.SIGSTOP)
    for _ in stopped:
        t0 = time.perf_counter()
        # a 4 MB argument: more than the pipe holds, so the host must not block on writing it
        result = run_program("def check(mask):\n    return 1\n", args={"mask": np.zeros((1000, 1000), np.int32)}, timeout_s=0.5)
        assert result.error_kind == "timeout" and "worker was killed" in result.error
        assert time.perf_counter() - t0 < 15
    assert not any(w.alive() for w in stopped)
    assert run_program("def check():\n    return 2\n").value == 2


def test_many_threads_get_their_own_answers():
    source = "import numpy as np\ndef check(k, arr):\n    return {'k': k, 'sum': int(arr.sum()) * k}\n"
    results: dict[int, RunResult] = {}

    def client(k: int) -> None:
        results[k] = run_program(source, args={"k": k, "arr": np.full(10, k)})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(24))
    for k, res in results.items():
        assert res.ok, res.error
        assert res.value == {"k": k, "sum": 10 * k * k}


def test_isolation_layers_are_reported():
    layers = sandbox.isolation_layers()
    for key in ("static_check", "process", "rlimits", "wall_clock", "results", "network", "seccomp", "user", "filesystem"):
        assert key in layers
        assert layers[key].startswith(("active", "inactive"))


# -- the static check ---------------------------------------------------------------------------
def test_check_source_accepts_a_normal_program():
    assert check_source("import numpy as np\nfrom scipy import ndimage\nimport logicode as lc\n\ndef check(scene):\n    return lc.count(scene)\n", "check") == []


@pytest.mark.parametrize(
    "source, line, fragment",
    [
        ("x = 1\nimport os\n", 2, "import of 'os' is not allowed"),
        ("from numpy import load\n", 1, "numpy's file"),
        ("import numpy as np\n\n\ny = np.lib.format\n", 4, "'lib'"),
        ("def check():\n    return ().__class__\n", 2, "underscore"),
        ("g = (i for i in [1])\nf = g.gi_frame\n", 2, "frame or code"),
        ("def check(c):\n    return c.co_code\n", 2, "frame or code"),
        ("s = '{0}'.format(1)\n", 1, "f-string"),
        ("from numpy import *\n", 1, "import *"),
        ("from scipy import io\n", 1, "only 'ndimage'"),
        ("import statistics\nx = statistics.sys\n", 2, "outside the allowlist"),
        ("async def check():\n    pass\n", 1, "async"),
        ("x = getattr(1, 'real')\n", 1, "'getattr' is not allowed"),
        ("x = type(1)\n", 1, "'type' is not allowed"),
        ("raise SystemExit\n", 1, "'SystemExit' is not available"),
        ("from . import x\n", 1, "relative imports"),
        ("match 1:\n    case int(real=_x):\n        pass\n", 2, "underscore"),
        ("import logicode as lc\nn = lc.counts({})\n", 2, "logicode has no helper 'counts'"),
        ("from logicode import np\n", 1, "not a logicode helper"),
    ],
)
def test_check_source_reports_line_and_reason(source, line, fragment):
    problems = check_source(source)
    assert problems, source
    assert problems[0].line == line
    assert any(fragment in p.message for p in problems if p.line == line), problems
    assert str(problems[0]).startswith(f"line {line}: ")


def test_builtin_names_may_be_reused_as_variables():
    source = "def check(scene):\n    out = []\n    for c in scene:\n        id = c['id']\n        type = c['part']\n        out.append([id, type])\n    return out\n"
    assert check_source(source, "check") == []
    result = run_program(source, args={"scene": [{"id": 1, "part": "p1"}]})
    assert result.ok and result.value == [[1, "p1"]]
    assert "'id' is not allowed" in str(check_source("def check():\n    return id(1)\n")[0])


def test_check_source_survives_pathological_sources():
    assert "nested too deeply" in str(check_source("x = " + "(" * 5000 + ")" * 5000)[0]) or \
        "syntax error" in str(check_source("x = " + "(" * 5000 + ")" * 5000)[0])
    assert "longer than" in check_source("x = 1\n" * 30000)[0].message
    assert check_source("x = '\0'\n")[0].line == 1


# -- the logicode helpers (in-process: they are plain functions) --------------------------------
def test_api_reference_is_short_and_names_every_helper():
    lines = API_REFERENCE.strip().splitlines()
    assert API_VERSION == "4"
    assert len(lines) <= 40
    # lc.calibrated is written by the agent around a model's check, never by the model
    helpers = [n for n in lc.__all__ if not n.isupper() and n != "calibrated"]
    assert "count" in helpers and "count_components" in helpers
    for name in helpers:
        assert f"lc.{name}(" in API_REFERENCE, name


def test_the_scene_reference_leaves_out_the_mask_helpers():
    # a check receives a parsed scene, never a mask: the prompt's reference lists what applies
    mask_helpers = ("count_components", "component_areas", "centroids")
    for name in mask_helpers:
        assert f"lc.{name}(" not in SCENE_API_REFERENCE, name
        assert f"lc.{name}(" in API_REFERENCE, name
    for name in ("part", "components", "count", "lengths", "positions", "finding", "color_name"):
        assert f"lc.{name}(" in SCENE_API_REFERENCE, name
    # the sandbox still lets a program call the mask helpers (a user's own program on masks)
    assert check_source("import logicode as lc\nn = lc.count_components([[1]])\n") == []


def test_part_lookup_by_id_name_and_errors():
    scene = make_scene()
    assert lc.part(scene, "p1")["name"] == "screw"
    assert lc.part(scene, "SCREW")["id"] == "p1"
    assert lc.part(scene, "P2")["id"] == "p2"
    assert lc.part(scene, {"id": "p2"})["id"] == "p2"
    with pytest.raises(ValueError, match=r"no part 'bolt'; the parts are: p1 \(screw\), p2 \(cable\)"):
        lc.part(scene, "bolt")
    assert [p["id"] for p in lc.parts_like(scene, color="GRAY")] == ["p1"]
    assert [p["id"] for p in lc.parts_like(scene, name="long")] == ["p2"]


def test_component_queries_and_where():
    scene = make_scene(screws=3)
    assert lc.count(scene) == 4
    assert lc.count(scene, "p1") == 3
    assert lc.count(scene, "p1", where="left") == 1
    assert lc.count(scene, "p1", where="top right") == 2
    assert lc.count(scene, where="bottom") == 1
    assert lc.count(scene, where="bottom center") == 1
    assert lc.count(scene, where="center") == 0
    assert lc.areas(scene, "p1") == [100.0, 101.0, 102.0]
    assert lc.total_area(scene, "p1") == 303.0
    assert lc.lengths(scene, "cable") == [120.0]
    assert lc.colors(scene, "p2") == ["red"]
    assert lc.boxes(scene, "p2") == [[40, 140, 160, 160]]
    assert lc.positions(scene, "p2") == [[0.5, 0.8]]
    with pytest.raises(ValueError, match="unknown position word 'up'"):
        lc.count(scene, where="up")


def test_grid_counts():
    scene = make_scene(screws=3)
    assert lc.grid_counts(scene, "p1") == {"(0,0)": 1, "(0,1)": 2, "(1,0)": 0, "(1,1)": 0}
    assert lc.grid_counts(make_scene(grid=False), "p1") == {}


def test_reference_statistics():
    refs = [make_scene(screws=n) for n in (2, 2, 3)]
    fn = lambda s: lc.count(s, "p1")  # noqa: E731
    assert lc.ref_values(refs, fn) == [2, 2, 3]
    assert lc.typical(refs, fn) == 2
    assert lc.typical(refs, lambda s: lc.colors(s, "p2")[0]) == "red"
    assert lc.within_references(3, refs, fn, tolerance=0, stds=0)
    assert not lc.within_references(4, refs, fn, tolerance=0, stds=0)
    assert lc.within_references(4, refs, fn, tolerance=0.34, stds=0)
    assert lc.within_references("red", refs, lambda s: lc.colors(s, "p2")[0])
    assert not lc.within_references("blue", refs, lambda s: lc.colors(s, "p2")[0])
    with pytest.raises(ValueError, match="at least one reference"):
        lc.typical([], fn)


def test_a_description_passed_as_evidence_joins_the_explanation():
    # a small model's habit: lc.finding(id, ok, observed, expected, "short", "longer description")
    f = lc.finding("r3", True, 5, 5, "almonds", "number of almonds and banana chips")
    assert f["explanation"] == "almonds (number of almonds and banana chips)" and f["evidence"] == []
    assert lc.finding("r3", True, 5, 5, evidence="almonds")["explanation"] == "almonds"


def test_calibrated_judges_the_measured_value_against_the_references():
    refs = [make_scene(screws=n) for n in (2, 2, 2)]

    def count_says_three(scene, references):  # a wrong verdict around a faithful count
        n = lc.count(scene, "p1")
        return lc.finding("r1", n == 3, n, 3, "screws", evidence=lc.components(scene, "p1"))

    normal = lc.calibrated("r1", count_says_three, make_scene(screws=2), refs)
    assert (normal["passed"], normal["observed"], normal["expected"]) == (True, 2, 2)
    extra = lc.calibrated("r1", count_says_three, make_scene(screws=3), refs)
    assert (extra["passed"], extra["observed"], extra["expected"]) == (False, 3, 2)
    assert extra["explanation"] == "screws (as measured on the normal references: 2, 2, 2)"
    assert len(extra["evidence"]) == 3

    def sizes(scene, references):  # lists of numbers: element by element, same length
        return lc.finding("r2", False, sorted(lc.areas(scene, "p1")), None)

    assert lc.calibrated("r2", sizes, make_scene(screws=2), refs)["passed"]
    assert not lc.calibrated("r2", sizes, make_scene(screws=3), refs)["passed"]

    def colour(scene, references):  # words: one of the references' words
        return lc.finding("r3", False, lc.colors(scene, "p2")[0], "blue")

    assert lc.calibrated("r3", colour, make_scene(cable_color="red"), refs)["expected"] == "red"
    assert not lc.calibrated("r3", colour, make_scene(cable_color="blue"), refs)["passed"]
    varied = [make_scene(screws=n) for n in (1, 2, 2, 1)]
    assert lc.calibrated("r1", count_says_three, make_scene(screws=4), varied)["expected"] == "1 to 2"
    with pytest.raises(ValueError, match="at least one reference"):
        lc.calibrated("r1", count_says_three, make_scene(), [])


@pytest.mark.parametrize(
    "rgb, name",
    [((220, 30, 30), "red"), ((250, 140, 20), "orange"), ((240, 230, 40), "yellow"), ((30, 180, 60), "green"),
     ((30, 60, 220), "blue"), ((130, 40, 200), "purple"), ((250, 150, 200), "pink"), ((120, 70, 30), "brown"),
     ((245, 245, 245), "white"), ((128, 128, 128), "gray"), ((10, 10, 10), "black"), ((60, 60, 60), "dark gray"),
     ((30, 200, 210), "cyan"), ((230, 215, 180), "beige")],
)
def test_color_name_palette(rgb, name):
    from detectors.parsing.colors import color_name as parser_color_name

    assert lc.color_name(rgb) == name and name in lc.PALETTE
    assert parser_color_name(rgb) == name  # programs and scenes share one vocabulary


def test_color_name_says_what_to_pass_instead_of_a_colour_word():
    # the message goes back to the model in its repair request
    with pytest.raises(TypeError, match="not the text 'yellow'.*'color_name' already is the colour word"):
        lc.color_name("yellow")
    with pytest.raises(TypeError, match="three numbers"):
        lc.color_name((12, 40))
    with pytest.raises(TypeError, match="three numbers"):
        lc.color_name(["r", "g", "b"])
    assert lc.color_name(np.array([240, 230, 40])) == "yellow"


def test_relative_position():
    assert lc.relative_position([0, 0, 10, 10], [20, 0, 30, 10]) == "left of"
    assert lc.relative_position([20, 0, 30, 10], [0, 0, 10, 10]) == "right of"
    assert lc.relative_position([0, 0, 10, 10], [0, 30, 10, 40]) == "above"
    assert lc.relative_position([0, 30, 10, 40], [0, 0, 10, 10]) == "below"
    assert lc.relative_position([0, 0, 10, 10], [5, 5, 15, 15]) == "overlapping"


def test_mask_helpers():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[1:3, 1:3] = 1
    mask[10:15, 10:12] = 1
    mask[18, 18] = 1
    assert lc.count_components(mask) == 3
    assert lc.count_components(mask, min_area=2) == 2
    assert lc.component_areas(mask, min_area=2) == [4, 10]
    assert lc.centroids(mask, min_area=2) == [[1.5, 1.5], [10.5, 12.0]]
    with pytest.raises(ValueError, match="must be 2-D"):
        lc.count_components(np.zeros(5))
    with pytest.raises(TypeError, match=r"lc.count\(scene, part\)"):  # a scene is not a mask
        lc.count_components(make_scene(), "p1")


def test_finding_is_plain_json():
    f = lc.finding(np.str_("r1"), np.bool_(True), np.int64(3), (1, 2), "ok",
                   evidence=[{"bbox": (1, 2, 3, 4)}, np.array([5, 6, 7, 8])])
    assert f == {"rule_id": "r1", "passed": True, "observed": 3, "expected": [1, 2], "explanation": "ok",
                 "evidence": [[1, 2, 3, 4], [5, 6, 7, 8]]}
    assert type(f["observed"]) is int and type(f["passed"]) is bool
    assert lc.finding("r", 0, None, None, evidence=(1, 2, 3, 4))["evidence"] == [[1, 2, 3, 4]]
    from agent.schema import Finding

    Finding(rule_text="x", **{k: v for k, v in f.items() if k != "evidence"})

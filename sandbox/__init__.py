"""Runs untrusted LogiCode programs in isolated worker processes.

    from sandbox import run_program
    result = run_program(source, "check", {"scene": scene, "references": refs})
    if result.ok: findings = result.value
    else: print(result.error_kind, result.error)

Layers (see ``python -m sandbox`` for which are active here): a static AST allowlist in
the host; a warm worker that forks a fresh process per program with restricted builtins,
read-only allowlisted modules, resource limits, an empty network namespace, a seccomp
filter, a chroot into an empty directory and an unprivileged user; a wall-clock kill;
JSON-only, size-bounded results.
Programs import the helper module ``logicode`` (:mod:`sandbox.logicode`).
"""

from sandbox.logicode import API_REFERENCE, API_VERSION, SCENE_API_REFERENCE
from sandbox.errors import SandboxError
from sandbox.runner import RunResult, isolation_layers, run_program, shutdown
from sandbox.static_check import Problem, check_source

__all__ = [
    "run_program", "RunResult", "check_source", "Problem", "SandboxError",
    "API_VERSION", "API_REFERENCE", "SCENE_API_REFERENCE", "isolation_layers", "shutdown",
]

"""The static check: the second layer, run in the host before a program reaches a worker.

It is deliberately strict and syntactic. It cannot make in-process Python safe on its own
(the worker process and its OS limits are the wall); its job is to refuse the known escape
routes early, with a line number and a reason a code model can act on.
"""

from __future__ import annotations

import ast
import builtins
from typing import Optional

from pydantic import BaseModel

from sandbox.errors import SandboxError
from sandbox._policy import (
    ALLOWED_MODULES,
    DANGEROUS_BUILTINS,
    SAFE_BUILTIN_NAMES,
    attribute_problem,
)

MAX_SOURCE_CHARS = 100_000
MAX_PROBLEMS = 20
_REAL_BUILTINS = frozenset(dir(builtins))


class Problem(BaseModel):
    """One reason the static check refuses a program."""

    line: int
    col: int = 0
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def _allowed_list() -> str:
    return ", ".join(sorted(m for m in ALLOWED_MODULES if m != "scipy"))


def _bound_names(tree: ast.AST) -> set[str]:
    """Every name the program binds anywhere (variables, arguments, functions, classes,
    imports, exception and match targets)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).partition(".")[0])
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return bound


def _logicode_aliases(tree: ast.AST) -> set[str]:
    """Names bound only by ``import logicode [as X]``: their attributes must be helpers."""
    aliases: set[str] = set()
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                (aliases if a.name == "logicode" else other).add(a.asname or a.name.partition(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            other.add(node.id)
        elif isinstance(node, (ast.arg, ast.FunctionDef, ast.ClassDef)):
            other.add(node.arg if isinstance(node, ast.arg) else node.name)
    return aliases - other


class _Checker(ast.NodeVisitor):
    def __init__(self, bound: set[str], logicode_aliases: set[str] = frozenset()) -> None:
        self.problems: list[Problem] = []
        self.logicode_aliases = logicode_aliases
        # A program may use a builtin's name for its own variable (``id = c["id"]``); that
        # is harmless because the real builtin is absent at run time. Reading such a name
        # that the program never binds is reported, so the author learns it early.
        self.bound = bound

    def report(self, node: ast.AST, message: str) -> None:
        self.problems.append(Problem(line=getattr(node, "lineno", 1), col=getattr(node, "col_offset", 0), message=message))

    # -- names ------------------------------------------------------------------------
    def check_binding(self, node: ast.AST, name: Optional[str], what: str) -> None:
        if name and name.startswith("_") and name != "_":  # "_" alone is the usual throwaway
            self.report(node, f"{what} {name!r} starts with an underscore")

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if name.startswith("_") and name != "_":
            self.report(node, f"name {name!r} starts with an underscore")
        elif not isinstance(node.ctx, ast.Load) or name in self.bound:
            return
        elif name in DANGEROUS_BUILTINS:
            self.report(node, f"builtin {name!r} is not allowed in LogiCode")
        elif name in _REAL_BUILTINS and name not in SAFE_BUILTIN_NAMES:
            self.report(node, f"builtin {name!r} is not available in LogiCode")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        why = attribute_problem(node.attr)
        if why:
            self.report(node, why)
        elif (isinstance(node.value, ast.Name) and node.value.id in self.logicode_aliases
              and node.attr not in _logicode_helpers()):
            self.report(node, f"logicode has no helper {node.attr!r} (helpers: {', '.join(_logicode_helpers())})")
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.check_binding(node, node.arg, "argument")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        self.check_binding(node, node.arg, "keyword")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.check_binding(node, node.name, "function")
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.check_binding(node, node.name, "class")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self.check_binding(node, name, "name")

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        self.check_binding(node, node.name, "name")
        self.generic_visit(node)

    # match statements bind names and read attributes by keyword (``case C(attr=x)``).
    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        self.check_binding(node, node.name, "name")
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        self.check_binding(node, node.name, "name")

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        self.check_binding(node, node.rest, "name")
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            why = attribute_problem(attr)
            if why:
                self.report(node, why)
        self.generic_visit(node)

    # -- async code has frames of its own (cr_frame, ag_frame) and no use here ------------
    def _no_async(self, node: ast.AST) -> None:
        self.report(node, "async code is not allowed in LogiCode")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_Await = visit_AsyncFor = visit_AsyncWith = _no_async  # type: ignore[assignment]

    # -- imports ------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                self.report(node, f"import of {alias.name!r} is not allowed (allowed: {_allowed_list()})")
            self.check_binding(node, alias.asname, "name")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.report(node, "relative imports are not allowed")
            return
        if module not in ALLOWED_MODULES:
            self.report(node, f"import from {module!r} is not allowed (allowed: {_allowed_list()})")
            return
        for alias in node.names:
            if alias.name == "*":
                self.report(node, f"'from {module} import *' is not allowed; import the names you use")
                continue
            if module == "scipy" and alias.name != "ndimage":
                self.report(node, f"only 'ndimage' may be imported from scipy, not {alias.name!r}")
                continue
            full = f"{module}.{alias.name}"
            is_module = full in ALLOWED_MODULES
            why = None if is_module else attribute_problem(alias.name)
            if why is None and module == "logicode" and alias.name not in _logicode_helpers():
                why = "it is not a logicode helper"
            if why:
                self.report(node, f"cannot import {alias.name!r} from {module}: {why}")
            self.check_binding(node, alias.asname, "name")


def _logicode_helpers() -> tuple[str, ...]:
    from sandbox import logicode

    return tuple(n for n in logicode.__all__ if not n.isupper())  # the constants are no helpers


def _parse(source: str) -> tuple[Optional[ast.Module], list[Problem]]:
    if len(source) > MAX_SOURCE_CHARS:
        return None, [Problem(line=1, message=f"the program is longer than {MAX_SOURCE_CHARS} characters")]
    try:
        return ast.parse(source, filename="<logicode>", mode="exec"), []
    except SyntaxError as exc:
        return None, [Problem(line=exc.lineno or 1, col=max((exc.offset or 1) - 1, 0), message=f"syntax error: {exc.msg}")]
    except (ValueError, TypeError) as exc:  # e.g. a null byte in the source
        return None, [Problem(line=1, message=f"the program cannot be parsed: {exc}")]
    except (RecursionError, MemoryError):
        return None, [Problem(line=1, message="the program is nested too deeply to parse")]


def _defines(tree: ast.Module, name: str) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == name:
            return True
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return True
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in stmt.names):
            return True
    return False


def check_source(source: str, entrypoint: Optional[str] = None) -> list[Problem]:
    """The static check alone: the problems found in ``source``, in line order (empty when
    the program is acceptable). With ``entrypoint``, also requires a top-level definition
    of that name. Raises SandboxError (a TypeError) only when ``source`` is not a string."""
    if not isinstance(source, str):
        raise SandboxError(f"source must be a str, not {type(source).__name__}")
    tree, problems = _parse(source)
    if tree is None:
        return problems
    try:
        checker = _Checker(_bound_names(tree), _logicode_aliases(tree))
        checker.visit(tree)
    except RecursionError:
        return [Problem(line=1, message="the program is nested too deeply to check")]
    problems = checker.problems
    if entrypoint is not None and not _defines(tree, entrypoint):
        problems.append(Problem(line=1, message=f"the program defines no top-level function {entrypoint!r}"))
    unique: dict[tuple[int, str], Problem] = {}
    for p in sorted(problems, key=lambda p: (p.line, p.col)):
        unique.setdefault((p.line, p.message), p)
    return list(unique.values())[:MAX_PROBLEMS]

"""What LogiCode programs may use: the one policy shared by the static check (host) and the
worker's runtime guards. Standard library only: the worker loads this file by path."""

from __future__ import annotations

# Modules a program may import. ``scipy`` itself only exposes ``ndimage`` at run time.
ALLOWED_MODULES = frozenset({
    "math", "statistics", "itertools", "functools", "collections", "re", "typing",
    "numpy", "numpy.linalg", "numpy.random", "numpy.fft",
    "scipy", "scipy.ndimage",
    "logicode",
})
# Submodules reachable as attributes of an allowed module (``np.linalg``, ``lc.np``, ...).
ALLOWED_SUBMODULES = ALLOWED_MODULES

# The builtins a program gets. Everything else (eval, exec, open, getattr, type, object,
# vars, dir, globals, memoryview, input, exit, ...) is absent at run time and rejected
# statically, so that a program learns about it before it runs.
SAFE_BUILTIN_NAMES = frozenset({
    "abs", "all", "any", "ascii", "bin", "bool", "bytes", "callable", "chr", "complex",
    "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset", "hash", "hex",
    "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next",
    "oct", "ord", "pow", "print", "range", "repr", "reversed", "round", "set", "slice",
    "sorted", "str", "sum", "tuple", "zip", "property", "staticmethod", "classmethod",
    "True", "False", "None", "NotImplemented", "Ellipsis",
    "Exception", "ArithmeticError", "AssertionError", "AttributeError", "IndexError",
    "KeyError", "LookupError", "NameError", "NotImplementedError", "OverflowError",
    "RuntimeError", "StopIteration", "TypeError", "ValueError", "ZeroDivisionError",
})

# Builtins that are named in the issue as escape hatches; the static check names them
# explicitly (any other missing builtin is reported as "not available").
DANGEROUS_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "__import__", "globals", "locals", "vars", "dir",
    "getattr", "setattr", "delattr", "hasattr", "breakpoint", "input", "help", "exit", "quit",
    "memoryview", "type", "object", "super", "id",
})

# Frame, code and generator internals (those without a leading underscore).
FRAME_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "gi_running", "cr_frame", "cr_code", "cr_await",
    "ag_frame", "ag_code", "ag_await", "f_back", "f_globals", "f_locals", "f_builtins",
    "f_code", "f_trace", "f_lasti", "tb_frame", "tb_next", "tb_lasti", "mro",
})

# numpy's file and foreign-code surface, and what reaches it (``arr.dump``, ``arr.ctypes``).
NUMPY_FILE_ATTRIBUTES = frozenset({
    "load", "loads", "save", "savez", "savez_compressed", "fromfile", "tofile", "loadtxt",
    "savetxt", "genfromtxt", "fromregex", "memmap", "open_memmap", "DataSource", "ctypeslib",
    "ctypes", "lib", "f2py", "testing", "dump", "dumps", "core", "distutils", "recfromtxt",
    "recfromcsv", "show_config", "show_runtime", "info", "source", "who", "byte_bounds",
})

# Names of modules that standard modules hold as attributes (``statistics.sys``,
# ``re.enum``, ...): a chain through them leaves the allowlist.
MODULE_ATTRIBUTES = frozenset({
    "os", "sys", "builtins", "subprocess", "importlib", "socket", "shutil", "pathlib", "io",
    "pickle", "marshal", "posix", "nt", "signal", "threading", "multiprocessing", "inspect",
    "gc", "code", "codeop", "mmap", "tempfile", "glob", "types", "copyreg", "enum", "warnings",
    "weakref", "abc", "operator", "numbers", "contextlib", "linecache", "tokenize",
    "traceback", "reprlib", "platform", "sysconfig", "site", "runpy", "pkgutil", "asyncio",
    "concurrent", "select", "selectors", "ssl", "http", "urllib", "requests", "PIL",
})

# Ways to evaluate strings as code or to get/set attributes named by a string.
EVALUATING_ATTRIBUTES = frozenset({
    "format", "format_map",  # "{0.__class__}".format(x) walks attributes; use f-strings
    "get_type_hints", "ForwardRef", "evaluate_forward_ref",  # typing evaluates strings
    "singledispatch", "singledispatchmethod",  # register() evaluates string annotations
    "update_wrapper", "wraps",  # copy attributes named by strings (e.g. "__globals__")
})

FORBIDDEN_ATTRIBUTES = FRAME_ATTRIBUTES | NUMPY_FILE_ATTRIBUTES | MODULE_ATTRIBUTES | EVALUATING_ATTRIBUTES


def attribute_problem(name: str) -> str | None:
    """Why ``obj.<name>`` is not allowed, or None."""
    if name.startswith("_"):
        return f"attribute {name!r} starts with an underscore"
    if name.startswith("co_") or name in FRAME_ATTRIBUTES:
        return f"attribute {name!r} reaches frame or code internals"
    if name in NUMPY_FILE_ATTRIBUTES:
        return f"attribute {name!r} is part of numpy's file or foreign-code interface"
    if name in MODULE_ATTRIBUTES:
        return f"attribute {name!r} would reach a module outside the allowlist"
    if name in ("format", "format_map"):
        return f"str.{name} can walk attributes through the format string; use an f-string"
    if name in ("update_wrapper", "wraps"):
        return f"{name!r} reads and writes attributes named by strings"
    if name in EVALUATING_ATTRIBUTES:
        return f"attribute {name!r} evaluates strings as code"
    return None

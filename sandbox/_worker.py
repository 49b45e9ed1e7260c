"""The worker process: a warm "zygote" that forks one fresh process per program.

Started by the host as ``python -I -B sandbox/_worker.py WORKDIR`` with an empty, scrubbed
environment, stdin/stdout as the request/reply pipes and stderr to a host-side file. It
imports the allowlisted modules once (that is what makes calls fast), moves itself into an
empty network namespace where the machine allows, and then keeps one program process
forked ahead of time (a "spare", so fork() is off the critical path). The spare

1. points stdout/stderr at /dev/null, closes every other inherited descriptor except the
   request pipe and its own result pipe, and changes into the empty, read-only directory;
2. reads its one request from the host's pipe, then closes it (stdin is closed for the
   program) and tells the worker the time limit;
3. sets resource limits: address space (what is mapped now + ``memory_mb``), CPU time,
   no new processes, no file writes, few descriptors, no core dumps;
4. when running as root: chroots into the empty directory (every module a program may use
   is already imported, so it needs no file) and drops to the ``nobody`` user (so
   RLIMIT_NPROC binds);
5. installs the seccomp filter (``_seccomp.py``) where supported;
6. runs the program with restricted builtins and an import hook that serves only
   allowlisted modules, each behind a read-only view, and writes one JSON result to the
   worker, never to the host.

The worker enforces the wall-clock timeout with SIGKILL (which works inside C code and
catastrophic regexes), bounds the result's size, relays it to the host and forks the next
spare. It never runs program code itself, so a program cannot change the state the next
program sees: each gets a fresh copy-on-write fork of the clean worker.
"""

from __future__ import annotations

import builtins
import ctypes
import fcntl
import gc
import importlib.util
import json
import os
import resource
import select
import signal
import sys
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
NOBODY = 65534
PROGRAM_FILENAME = "<logicode>"
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def _load(name: str, filename: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, filename))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


protocol = _load("sandbox_protocol", "_protocol.py")
policy = _load("sandbox_policy", "_policy.py")
seccomp = _load("sandbox_seccomp", "_seccomp.py")
logicode = _load("logicode", "logicode.py")

# Every allowlisted module is imported here, before any fork, so that programs never need
# the file system to import and every child starts from the same state.
import collections  # noqa: E402,F401
import functools  # noqa: E402,F401
import itertools  # noqa: E402,F401
import math  # noqa: E402,F401
import re  # noqa: E402
import statistics  # noqa: E402
import typing  # noqa: E402,F401

import numpy  # noqa: E402
import numpy.fft  # noqa: E402
import numpy.linalg  # noqa: E402
import numpy.random  # noqa: E402
import scipy.ndimage  # noqa: E402

_REAL_MODULES = {name: sys.modules[name] for name in policy.ALLOWED_MODULES}


def _warm_up() -> None:
    """Runs common operations once so that numpy's and scipy's lazy imports and caches are
    filled in the zygote, not in every program process."""
    mask = numpy.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = mask[5:7, 4:8] = True
    for reduce in (numpy.sum, numpy.mean, numpy.std, numpy.max, numpy.min, numpy.median, numpy.argmax):
        reduce(mask.astype(float))
    mask.sum(), mask.mean(), mask.any(), mask.nonzero(), numpy.unique(mask), numpy.percentile(mask.astype(float), 50)
    labels, n = scipy.ndimage.label(mask)
    scipy.ndimage.center_of_mass(mask, labels, [1, 2]), scipy.ndimage.find_objects(labels)
    scipy.ndimage.sum_labels(mask, labels, [1, 2]), scipy.ndimage.binary_dilation(mask)
    logicode.count_components(mask), logicode.centroids(mask), logicode.color_name((200, 30, 30))
    statistics.mean([1, 2]), statistics.median([1, 2]), statistics.stdev([1.0, 2.0]), statistics.mode([1, 1])
    re.compile(r"\d+").findall("a1b22")


_warm_up()


# -- the runtime Python layer ------------------------------------------------------------
class ModuleView:
    """A read-only view of an allowed module: no underscore or forbidden attributes, no
    modules outside the allowlist, and no assignment (``math.pi = 3`` raises)."""

    __slots__ = ("_module", "_only")

    def __init__(self, module: types.ModuleType, only: frozenset | None = None):
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_only", only)

    def __getattr__(self, name: str):
        module = object.__getattribute__(self, "_module")
        only = object.__getattribute__(self, "_only")
        why = policy.attribute_problem(name)
        if why is None and only is not None and name not in only:
            if module.__name__ == "logicode":
                raise AttributeError(f"logicode has no helper {name!r} (see the helper reference)")
            why = f"only {sorted(only)} may be used from {module.__name__}"
        if why:
            raise AttributeError(f"{module.__name__}.{name} is not allowed in LogiCode: {why}")
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            if value.__name__ not in policy.ALLOWED_SUBMODULES:
                raise AttributeError(f"module {value.__name__} is not allowed in LogiCode")
            return VIEWS[value.__name__]
        return value

    def __setattr__(self, name, value):
        raise AttributeError("allowed modules are read-only in LogiCode")

    def __delattr__(self, name):
        raise AttributeError("allowed modules are read-only in LogiCode")

    def __repr__(self) -> str:
        return f"<module {object.__getattribute__(self, '_module').__name__!r} (read-only)>"


# scipy exposes only ndimage; logicode only its documented API (not the modules it uses).
_ONLY = {"scipy": frozenset({"ndimage"}), "logicode": frozenset(logicode.__all__)}
VIEWS = {name: ModuleView(mod, _ONLY.get(name)) for name, mod in _REAL_MODULES.items()}


_LIBRARY_PACKAGES = ("numpy", "scipy")


def safe_import(name, globals=None, locals=None, fromlist=None, level=0):
    """The program's ``__import__``. Import statements (already limited by the static check)
    get read-only views of allowlisted modules. C code in numpy/scipy that imports while a
    program frame is on top (``PyImport_Import``, which always passes an empty *list* as
    fromlist and ignores the return value) is served by the real import, for those two
    packages only; a program has no way to make that call itself."""
    if level:
        raise ImportError("relative imports are not allowed in LogiCode")
    if name in policy.ALLOWED_MODULES:
        if fromlist:
            return VIEWS[name]
        return VIEWS[name.partition(".")[0]]
    if type(fromlist) is list and not fromlist and name.partition(".")[0] in _LIBRARY_PACKAGES:
        builtins.__import__(name)
        return None
    raise ImportError(f"import of {name!r} is not allowed in LogiCode")


class BoundedText:
    """Where print() writes: keeps the first ``limit`` characters, counts the rest."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.size, self.dropped = limit, [], 0, 0

    def write(self, text: str) -> int:
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text[:room])
            self.size += min(len(text), room)
        self.dropped += max(len(text) - max(room, 0), 0)
        return len(text)

    def value(self) -> str:
        out = "".join(self.parts)
        if self.dropped:
            out += f"\n[... {self.dropped} more characters of output dropped]"
        return out


def make_builtins(out: BoundedText) -> dict:
    safe = {name: getattr(builtins, name) for name in policy.SAFE_BUILTIN_NAMES}

    def print(*values, sep=" ", end="\n", file=None, flush=False):  # noqa: A001 - the program's print
        if file is not None:
            raise TypeError("print(file=...) is not allowed in LogiCode")
        out.write(("" if sep is None else str(sep)).join(str(v) for v in values) + ("\n" if end is None else str(end)))

    safe["print"] = print
    safe["__import__"] = safe_import
    safe["__build_class__"] = builtins.__build_class__  # lets programs define classes
    return safe


# -- the program process -------------------------------------------------------------------
def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _program_line(tb) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe_error(exc: BaseException, fallback_line: int | None = None) -> str:
    """``line N: Type: message``; N is the deepest program line in the traceback, else
    ``fallback_line`` (the entry point's definition, e.g. for a wrong call signature)."""
    line = _program_line(exc.__traceback__) or fallback_line
    where = f"line {line}: " if line else ""
    try:
        text = str(exc)
    except Exception:
        text = "(unprintable message)"
    return f"{where}{type(exc).__name__}: {text}"[:2000]


def _isolate_descriptors(keep_fds: set[int]) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # the pipe back to the host is the worker's alone
    os.dup2(devnull, 2)
    keep = {1, 2} | keep_fds
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def _apply_limits(memory_mb: int, timeout_s: float) -> None:
    address_space = _vm_size_bytes() + memory_mb * 1024 * 1024
    cpu = max(1, int(timeout_s + 1.999))
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _confine(workdir: str) -> None:
    """As root: chroot into the empty directory (the program then sees no file at all; every
    module it may use is already imported) and drop to the unprivileged ``nobody`` user."""
    if os.geteuid() == 0:
        os.chroot(workdir)
        os.chdir("/")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


EXIT_NO_REQUEST = 3


def program_process(result_fd: int, workdir: str, installer: "seccomp.Installer | None") -> None:
    """The body of a forked program process; never returns. It is forked ahead of time
    (so that fork() is off the critical path), prepares what does not depend on the
    request, then reads its one request straight from the host's pipe (stdin; the worker
    itself does not read it while a spare waits), closes it, tells the worker its limits
    and only then runs the program. It never holds the pipe back to the host: its result
    goes to the worker, which checks its size and time before relaying it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    reserve = bytearray(256 << 10)  # freed on MemoryError so that the report can be built
    request: dict = {}
    try:
        _isolate_descriptors({0, result_fd})
        os.chdir(workdir)
        try:
            request, blobs = protocol.read_frame(0)
        except EOFError:  # the host closed the pipe: the worker is shutting down
            os._exit(EXIT_NO_REQUEST)
        os.close(0)  # stdin: closed for the program
        protocol.write_all(result_fd, protocol.encode_frame(
            {"timeout_s": request["timeout_s"], "max_reply_bytes": request["max_reply_bytes"]}))
        out = BoundedText(int(request["max_stdout"]))
        max_result = int(request["max_result_bytes"])
        args = protocol.decode_args(request["args"], blobs)
        del blobs
        source = request["source"]
        entrypoint = request["entrypoint"]
        trusted_probe = bool(request.get("os_layers_probe"))
        _apply_limits(int(request["memory_mb"]), float(request["timeout_s"]))
        _confine(workdir)
        if installer is not None:
            installer.install()
        if trusted_probe:
            # Test hook from the host only: full Python, so tests can show that the OS
            # layers alone contain a program. Never reachable from a program.
            env = {"__builtins__": builtins, "__name__": "logicode_probe", "print": make_builtins(out)["print"]}
        else:
            env = {"__builtins__": make_builtins(out), "__name__": "logicode_program"}
        entry_line = None
        try:
            code = compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True)
            exec(code, env)
            fn = env.get(entrypoint)
            if not callable(fn):
                raise NameError(f"the program defines no function {entrypoint!r}")
            entry_line = getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
            value = fn(**args)
            plain = protocol.to_json_data(value, max_result)
            reply = {"ok": True, "kind": None, "error": None, "value": plain}
        except MemoryError:
            del reserve
            reply = {"ok": False, "kind": "memory", "value": None,
                     "error": f"the program needed more than its memory budget of {request['memory_mb']} MB"}
        except protocol.ValueTooLarge as exc:
            reply = {"ok": False, "kind": "output_too_large", "value": None, "error": str(exc)}
        except protocol.ValueNotData as exc:
            where = f"line {entry_line}: " if entry_line else ""
            reply = {"ok": False, "kind": "runtime_error", "value": None,
                     "error": f"{where}{entrypoint}() returned data that cannot leave the sandbox: {exc}"}
        except SyntaxError as exc:
            reply = {"ok": False, "kind": "runtime_error", "value": None,
                     "error": f"line {exc.lineno}: SyntaxError: {exc.msg}"}
        except RecursionError as exc:
            reply = {"ok": False, "kind": "runtime_error", "value": None,
                     "error": _describe_error(exc, entry_line) + " (recursion too deep)"}
        except BaseException as exc:  # SystemExit, KeyboardInterrupt and GeneratorExit included
            reply = {"ok": False, "kind": "runtime_error", "value": None, "error": _describe_error(exc, entry_line)}
        reply["stdout"] = out.value()
        data = json.dumps(reply, separators=(",", ":"), allow_nan=True).encode()
        if len(data) > max_result + 6 * int(request["max_stdout"]) + 4096:
            data = json.dumps({"ok": False, "kind": "output_too_large", "value": None, "stdout": "",
                               "error": f"the result is larger than {max_result} bytes as JSON"}).encode()
        protocol.write_all(result_fd, data)
    except MemoryError:
        try:
            del reserve
        except NameError:
            pass
        try:
            protocol.write_all(result_fd, json.dumps({
                "ok": False, "kind": "memory", "value": None, "stdout": "",
                "error": f"the program needed more than its memory budget of {request.get('memory_mb')} MB"}).encode())
        except BaseException:
            pass
    except BaseException:
        try:
            msg = traceback.format_exc(limit=3)[-1500:]
            protocol.write_all(result_fd, json.dumps({"ok": False, "kind": "crashed", "value": None,
                                                      "stdout": "", "error": "sandbox set-up failed: " + msg}).encode())
        except BaseException:
            pass
    finally:
        # Closing first lets the worker answer while this process is still being torn down.
        try:
            os.close(result_fd)
        finally:
            os._exit(0)


# -- the zygote ----------------------------------------------------------------------------
def _isolate_network() -> str:
    """Moves this process (and so every program process) into an empty network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = [CLONE_NEWNET] if os.geteuid() == 0 else [CLONE_NEWUSER | CLONE_NEWNET]
    for f in flags:
        if libc.unshare(ctypes.c_int(f)) == 0:
            with open("/proc/net/dev") as dev:
                names = [line.split(":")[0].strip() for line in dev.readlines()[2:]]
            return f"active: empty network namespace (interfaces: {', '.join(names) or 'none'})"
        err = ctypes.get_errno()
    return f"inactive: unshare(CLONE_NEWNET) failed ({os.strerror(err)})"


def _probe_seccomp() -> str:
    """Installs the filter in a throwaway child and checks that socket() is refused."""
    if not seccomp.supported():
        return "inactive: seccomp filter is built for Linux x86-64 only"
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            seccomp.Installer().install()
            try:
                import socket

                socket.socket().close()
                code = 2
            except PermissionError:
                code = 0
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "active: seccomp-BPF filter (no exec, fork, sockets, file writes, ptrace)",
            2: "inactive: filter installed but socket() still worked"}.get(code, "inactive: the kernel refused the filter")


def _supervise(pid: int, fd: int, timeout_s: float, max_bytes: int) -> tuple[dict, bytes, bool]:
    """Waits for the program's result; returns (outcome, result bytes, reaped)."""
    deadline = time.monotonic() + timeout_s
    data = bytearray()
    outcome = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome = {"kind": "timeout", "error": f"the program ran longer than {timeout_s:g} s and was stopped"}
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        data += chunk
        if len(data) > max_bytes:
            outcome = {"kind": "output_too_large", "error": f"the result is larger than {max_bytes} bytes"}
            break
    if outcome is not None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return outcome, b"", True
    if data:  # a complete result: the process closed its pipe; reap it after replying
        return {"kind": "result"}, bytes(data), False
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return {"kind": "timeout", "error": f"the program used more CPU time than allowed ({timeout_s:g} s) and was stopped"}, b"", True
        return {"kind": "crashed", "error": f"the program process died with signal {signal.Signals(sig).name}"}, b"", True
    return {"kind": "crashed", "error": f"the program process exited (status {os.waitstatus_to_exitcode(status)}) without a result"}, b"", True


class Spare:
    """A program process forked ahead of its request."""

    def __init__(self, workdir: str, installer: "seccomp.Installer | None"):
        self.result_r, result_w = os.pipe()
        try:  # big results in one write (best effort, see runner._widen_pipe)
            fcntl.fcntl(self.result_r, fcntl.F_SETPIPE_SZ, 1 << 20)
        except (OSError, AttributeError):
            pass
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.result_r)
            program_process(result_w, workdir, installer)
        os.close(result_w)

    def reap(self) -> int:
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return 0


def serve(workdir: str) -> None:
    layers = {"network": _isolate_network(), "seccomp": _probe_seccomp(),
              "user": "active: programs run as nobody (uid 65534)" if os.geteuid() == 0
              else f"inactive: not root, programs run as uid {os.geteuid()}",
              "filesystem": "active: chroot into an empty directory (no file can be read or written)"
              if os.geteuid() == 0 else "inactive: not root, no chroot (files readable by the user stay readable)"}
    # The filter is assembled once here; each program process only installs it.
    installer = seccomp.Installer() if layers["seccomp"].startswith("active") else None
    gc.freeze()  # program processes then never touch the zygote's objects during collections
    protocol.write_all(1, protocol.encode_frame({"ready": True, "pid": os.getpid(), "layers": layers}))
    while True:
        spare = Spare(workdir, installer)
        try:
            try:
                limits, _ = protocol.read_frame(spare.result_r, max_bytes=1 << 16)
            except EOFError:
                status = spare.reap()
                if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_NO_REQUEST:
                    return  # the host closed our stdin
                continue  # the spare died before taking a request (should not happen)
            outcome, data, reaped = _supervise(spare.pid, spare.result_r, float(limits["timeout_s"]),
                                               int(limits["max_reply_bytes"]))
        finally:
            os.close(spare.result_r)
        protocol.write_all(1, protocol.encode_frame(outcome, [data] if data else []))
        # Off the critical path: reap the finished process; the loop forks the next one.
        if not reaped:
            spare.reap()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host's Ctrl-C is the host's to handle
    serve(sys.argv[1])

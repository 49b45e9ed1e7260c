"""The host side: ``run_program`` and the warm pool of worker processes.

Each pool slot is one worker ("zygote", see ``_worker.py``) that has numpy and scipy
imported and forks a fresh, limited process per program. A slot serves one call at a time;
threads wait for a free slot. A worker that dies, stops answering or breaks the protocol is
killed (with its process group) and replaced before the slot is handed out again.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import math
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from sandbox import _protocol as protocol
from sandbox.errors import SandboxError
from sandbox.static_check import check_source

ErrorKind = Literal["rejected", "timeout", "memory", "runtime_error", "output_too_large", "crashed"]

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
MAX_RESULT_BYTES = 2 * 1024 * 1024
MAX_STDOUT_CHARS = 64 * 1024
# The worker's own timeout fires first; the host waits this much longer before it kills
# the whole worker (a worker that does not answer is treated as broken).
HOST_GRACE_S = 5.0
WORKER_START_TIMEOUT_S = 120.0
# Variables the worker gets: none of the host's. One BLAS thread keeps fork() safe and
# RLIMIT_NPROC meaningful.
WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


class RunResult(BaseModel):
    """The outcome of one program run."""

    ok: bool
    value: Any = Field(default=None, description="what the entry point returned, as plain JSON data")
    error_kind: Optional[ErrorKind] = None
    error: Optional[str] = Field(default=None, description="human-readable; with the line for rejected/runtime_error")
    stdout: str = Field(default="", description=f"captured print output, at most {MAX_STDOUT_CHARS} characters")
    seconds: float = Field(default=0.0, description="wall time of the call")


class _WorkerBroken(Exception):
    pass


PIPE_BYTES = 1 << 20


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe carries a 1000x1000 mask in one write instead of sixteen round trips
    between processes (which cost milliseconds each on a busy machine). Best effort."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, AttributeError):
        pass


#: workers' empty working folders are named after the host process: logicode-<pid>-<random>
WORKDIR_PREFIX = "logicode-"


def _sweep_stale_workdirs() -> None:
    """Remove the empty working folders of host processes that are gone. A host that exits
    normally removes its own; one that ends without running its exit handlers (killed, or a
    multiprocessing child, which leaves with os._exit) cannot."""
    root = tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(WORKDIR_PREFIX):
            continue
        pid = name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its host is alive (or the pid is reused): leave it
        except ProcessLookupError:
            pass
        except OSError:
            continue  # alive under another user
        try:
            os.rmdir(os.path.join(root, name))  # only ever an empty folder
        except OSError:
            pass


class _Worker:
    def __init__(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
        try:
            os.chmod(self.workdir, 0o555)  # empty and read-only; programs run inside it
            # The worker's stderr (its start-up errors; program processes write to /dev/null)
            # goes to an anonymous file so that a failure to start can be explained.
            self.stderr = tempfile.TemporaryFile()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", WORKER_SCRIPT, self.workdir],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                env=dict(WORKER_ENV), cwd=self.workdir, close_fds=True, start_new_session=True,
            )
        except BaseException:  # no process (no free descriptors, fork refused): leave nothing behind
            self.stderr.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        self.layers: Optional[dict] = None
        for pipe in (self.proc.stdin, self.proc.stdout):
            _widen_pipe(pipe.fileno())

    def _read_frame(self, deadline: float) -> tuple[dict, list]:
        fd = self.proc.stdout.fileno()

        def read_exact(n: int) -> bytes:
            chunks = []
            while n > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([fd], [], [], remaining)
                if not ready:
                    continue
                chunk = os.read(fd, min(n, 1 << 20))
                if not chunk:
                    raise _WorkerBroken("the worker closed its pipe")
                chunks.append(chunk)
                n -= len(chunk)
            return b"".join(chunks)

        head_len, body_len = protocol.FRAME_PREFIX.unpack(read_exact(protocol.FRAME_PREFIX.size))
        if head_len > 1 << 20 or body_len > MAX_RESULT_BYTES * 2 + MAX_STDOUT_CHARS * 8 + (1 << 16):
            raise _WorkerBroken("the worker sent an oversized frame")
        header = json.loads(read_exact(head_len))
        body = read_exact(body_len) if body_len else b""
        return header, [body] if body_len else []

    def ensure_ready(self) -> None:
        if self.layers is not None:
            return
        try:
            header, _ = self._read_frame(time.monotonic() + WORKER_START_TIMEOUT_S)
        except TimeoutError:
            raise _WorkerBroken(f"the worker did not start within {WORKER_START_TIMEOUT_S:g} s") from None
        except _WorkerBroken:
            raise _WorkerBroken(f"the worker failed to start: {self.stderr_tail()}") from None
        if not header.get("ready"):
            raise _WorkerBroken("the worker sent no ready message")
        self.layers = header.get("layers", {})

    def _write_frame(self, data: bytes, deadline: float) -> None:
        """Writes a request without ever blocking past ``deadline`` (a stuck worker does not
        drain its pipe; a big mask would otherwise block the host forever)."""
        fd = self.proc.stdin.fileno()
        os.set_blocking(fd, False)
        view = memoryview(data)
        while view:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            _, ready, _ = select.select([], [fd], [], remaining)
            if not ready:
                continue
            try:
                view = view[os.write(fd, view[:PIPE_BYTES]):]
            except BlockingIOError:
                continue
            except OSError as exc:  # BrokenPipeError included
                raise _WorkerBroken(f"the worker is gone ({exc})") from None

    def call(self, request: dict, blobs: list[bytes], timeout_s: float) -> tuple[dict, bytes]:
        self.ensure_ready()
        deadline = time.monotonic() + timeout_s + HOST_GRACE_S
        self._write_frame(protocol.encode_frame(request, blobs), deadline)
        header, body = self._read_frame(deadline)
        return header, body[0] if body else b""

    def stderr_tail(self, limit: int = 800) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace").strip()
        except (OSError, ValueError):
            return "(no error output)"
        return text[-limit:] or "(no error output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)
        try:
            self.stderr.close()
        except OSError:
            pass

    def close(self) -> None:
        """Asks the worker to exit (end of its request stream), then makes sure."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Pool:
    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.idle: "queue.Queue[_Worker]" = queue.Queue()
        self.workers: set[_Worker] = set()
        self.lock = threading.Lock()
        self.closed = False
        self.missing = 0  # slots whose worker could not be (re)started; tried again when needed
        _sweep_stale_workdirs()
        for _ in range(size):
            try:
                self._add()
            except Exception:
                self.missing += 1

    def _add(self) -> None:
        worker = _Worker()
        with self.lock:
            self.workers.add(worker)
        self.idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        with self.lock:
            self.workers.discard(worker)
        worker.kill()
        if not self.closed:
            try:
                self._add()
            except Exception:  # e.g. out of file descriptors: keep the slot, start it when needed
                with self.lock:
                    self.missing += 1

    def _restore(self) -> Optional[str]:
        """Start a worker for a slot lost when its replacement failed; the error if it cannot."""
        with self.lock:
            if self.missing == 0:
                return None
            self.missing -= 1
        try:
            self._add()
        except Exception as exc:
            with self.lock:
                self.missing += 1
            return f"{type(exc).__name__}: {exc}"
        return None

    def execute(self, request: dict, blobs: list[bytes], timeout_s: float) -> tuple[dict, bytes]:
        """Runs one request on a free worker. A worker found broken before the program was
        sent (e.g. killed from outside between calls) is replaced and the next one tried."""
        attempts = self.size + 2
        for attempt in range(attempts):
            worker = self._next_idle()
            if worker is None:
                return {"kind": "crashed", "error": "the sandbox was shut down during the call"}, b""
            if isinstance(worker, str):
                return {"kind": "crashed", "error": f"the sandbox could not start a worker ({worker})"}, b""
            started = False
            try:
                if not worker.alive():
                    raise _WorkerBroken("the worker had exited")
                worker.ensure_ready()
                started = True
                header, body = worker.call(request, blobs, timeout_s)
            except TimeoutError:
                self._replace(worker)
                return {"kind": "timeout", "error": f"the program ran longer than {timeout_s:g} s; its worker was killed"}, b""
            except (_WorkerBroken, ValueError, OSError) as exc:
                self._replace(worker)
                if started or attempt == attempts - 1:
                    return {"kind": "crashed", "error": f"the sandbox worker failed: {exc}"}, b""
                continue
            except BaseException:
                self._replace(worker)  # e.g. KeyboardInterrupt mid-call: the pipe state is unknown
                raise
            self.idle.put(worker)
            return header, body
        raise AssertionError("unreachable")

    def _next_idle(self) -> "_Worker | str | None":
        """A free worker; None once the pool is shut down (no worker will come back); the error
        when no worker is running and none can be started (waiting would then never end)."""
        while True:
            try:
                return self.idle.get(timeout=0.5)
            except queue.Empty:
                if self.closed:
                    return None
                error = self._restore()
                if error is not None:
                    with self.lock:
                        running = len(self.workers)
                    if running == 0:
                        return error

    def layers(self) -> dict:
        worker = self._next_idle()
        if not isinstance(worker, _Worker):
            return {"worker": f"unavailable: {worker or 'the sandbox was shut down'}"}
        try:
            worker.ensure_ready()
        except _WorkerBroken as exc:
            self._replace(worker)
            return {"worker": f"unavailable: {exc}"}
        self.idle.put(worker)
        return dict(worker.layers or {})

    def shutdown(self) -> None:
        self.closed = True
        with self.lock:
            workers = list(self.workers)
            self.workers.clear()
        for worker in workers:
            worker.close()


_pool: Optional[_Pool] = None
_pool_lock = threading.Lock()


def pool_size() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():  # a forked host gets its own workers
            _pool = _Pool(pool_size())
        return _pool


def shutdown() -> None:
    """Stops the workers (also done at interpreter exit); the next call starts new ones."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown()


atexit.register(shutdown)


def isolation_layers() -> dict[str, str]:
    """Which isolation layers are active on this machine, as reported by a live worker."""
    layers = {
        "static_check": "active: AST allowlist in the host before anything runs",
        "process": "active: a fresh forked process per program, scrubbed environment, stdin closed",
        "rlimits": "active: RLIMIT_AS, RLIMIT_CPU, RLIMIT_NPROC=0, RLIMIT_FSIZE=0, RLIMIT_NOFILE=16",
        "wall_clock": "active: SIGKILL by the worker at the timeout, worker killed by the host after a grace period",
        "results": "active: JSON only, validated and size-bounded",
    }
    layers.update(_get_pool().layers())
    return layers


# -- the public entry point ----------------------------------------------------------------
def _validate_call(source: Any, entrypoint: Any, args: Any, timeout_s: Any, memory_mb: Any) -> dict:
    if not isinstance(source, str):
        raise SandboxError(f"source must be a str, not {type(source).__name__}")
    if not isinstance(entrypoint, str) or not entrypoint.isidentifier() or entrypoint.startswith("_"):
        raise SandboxError(f"entrypoint must be a public identifier, got {entrypoint!r}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise SandboxError(f"args must be a dict or None, not {type(args).__name__}")
    for key in args:
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_"):
            raise SandboxError(f"args keys must be public identifiers (they become keyword arguments), got {key!r}")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (0 < timeout_s <= 3600) or math.isnan(timeout_s):
        raise SandboxError(f"timeout_s must be a number in (0, 3600], got {timeout_s!r}")
    if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or not (16 <= memory_mb <= 1 << 20):
        raise SandboxError(f"memory_mb must be an int of at least 16, got {memory_mb!r}")
    return args


def _finish(start: float, **fields: Any) -> RunResult:
    return RunResult(seconds=time.perf_counter() - start, **fields)


def run_program(
    source: str,
    entrypoint: str = "check",
    args: Optional[dict] = None,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
) -> RunResult:
    """Runs ``entrypoint(**args)`` of the untrusted program ``source`` in the sandbox.

    Never raises for a bad program: the result says ``ok=False`` with an ``error_kind``.
    Raises :class:`SandboxError` for misuse (a non-string source, args that are not plain
    data or numeric numpy arrays, nonsensical limits)."""
    start = time.perf_counter()
    args = _validate_call(source, entrypoint, args, timeout_s, memory_mb)
    problems = check_source(source, entrypoint=entrypoint)
    if problems:
        return _finish(start, ok=False, error_kind="rejected", error="; ".join(str(p) for p in problems))
    try:
        data, blobs = protocol.encode_args(args)
    except protocol.ValueNotData as exc:
        raise SandboxError(str(exc)) from None
    request = {
        "source": source, "entrypoint": entrypoint, "args": data, "timeout_s": float(timeout_s),
        "memory_mb": int(memory_mb), "max_result_bytes": MAX_RESULT_BYTES, "max_stdout": MAX_STDOUT_CHARS,
        "max_reply_bytes": MAX_RESULT_BYTES + 2 * MAX_STDOUT_CHARS * 6 + (1 << 16),
    }
    return _run_request(start, request, blobs, float(timeout_s))


def _run_request(start: float, request: dict, blobs: list[bytes], timeout_s: float) -> RunResult:
    header, body = _get_pool().execute(request, blobs, timeout_s)
    if header.get("kind") != "result":
        kind = header.get("kind")
        if kind not in ("timeout", "output_too_large", "crashed", "memory"):
            kind = "crashed"
        return _finish(start, ok=False, error_kind=kind, error=str(header.get("error", "unknown failure")))
    return _parse_reply(start, body)


def _encodable(reply: dict) -> dict:
    """The reply with lone surrogates (``"\\udcff"`` in the program's JSON) replaced by '?': they
    survive JSON but not UTF-8, so a verdict holding one could be neither printed nor saved."""
    text = json.dumps(reply, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return reply
    except UnicodeEncodeError:
        return json.loads(text.encode("utf-8", "replace").decode("utf-8"))


def _parse_reply(start: float, body: bytes) -> RunResult:
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        return _finish(start, ok=False, error_kind="crashed", error="the program process sent an unreadable result")
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return _finish(start, ok=False, error_kind="crashed", error="the program process sent a malformed result")
    reply = _encodable(reply)
    stdout = reply.get("stdout") if isinstance(reply.get("stdout"), str) else ""
    stdout = stdout[: MAX_STDOUT_CHARS + 200]
    if reply["ok"]:
        value = reply.get("value")
        if not protocol.validate_json_data(value):
            return _finish(start, ok=False, error_kind="crashed", stdout=stdout, error="the result is not plain JSON data")
        return _finish(start, ok=True, value=value, stdout=stdout)
    kind = reply.get("kind")
    if kind not in ("timeout", "memory", "runtime_error", "output_too_large", "crashed"):
        kind = "crashed"
    error = reply.get("error")
    return _finish(start, ok=False, error_kind=kind, stdout=stdout,
                   error=str(error)[:4000] if error is not None else "the program failed")


def _run_without_python_layers(source: str, entrypoint: str = "check", args: Optional[dict] = None, *,
                               timeout_s: float = 10.0, memory_mb: int = 1024) -> RunResult:
    """FOR TESTS OF THE OS LAYERS ONLY: runs ``source`` with full builtins and imports and no
    static check, inside the same worker, limits, namespace and seccomp filter. It exists to
    show that the process boundary contains a program even when the Python layers are
    bypassed. It is host-side only and not exported."""
    start = time.perf_counter()
    args = _validate_call(source, entrypoint, args, timeout_s, memory_mb)
    data, blobs = protocol.encode_args(args)
    request = {
        "source": source, "entrypoint": entrypoint, "args": data, "timeout_s": float(timeout_s),
        "memory_mb": int(memory_mb), "max_result_bytes": MAX_RESULT_BYTES, "max_stdout": MAX_STDOUT_CHARS,
        "max_reply_bytes": MAX_RESULT_BYTES + 2 * MAX_STDOUT_CHARS * 6 + (1 << 16), "os_layers_probe": True,
    }
    return _run_request(start, request, blobs, float(timeout_s))

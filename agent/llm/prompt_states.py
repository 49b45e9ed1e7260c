"""Prompt prefixes that recur across processes, kept as llama.cpp state files.

Every LogiCode request starts with the same ~1,100 tokens (the helper API and the examples,
``prompts/templates/logicode_rule_v4.md``). llama.cpp reuses a shared prefix only within a
process, and reading those tokens again costs about 20 s of a rule set's 60 s on 2 cores. This
store keeps such a prefix across processes. It needs no knowledge of the prompt's layout: a
prefix that two prompts have shared is saved once (the context's KV cache, about 30 MB for
1,000 tokens of the 1.5B model), and a later process loads it instead of reading it again.

A loaded prefix is evaluated as it was when saved, so an answer can differ from a cold start in a
greedy near-tie, as it already can when llama.cpp reuses a prefix in memory.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: a shared prefix shorter than this is not worth a state file (the chat template's start)
MIN_PREFIX_TOKENS = 256
#: load or save only when it spares at least this many tokens over what the context holds
MIN_GAIN_TOKENS = 32
MAX_STATES = 4
REMEMBERED_PROMPTS = 16


def default_directory() -> Path:
    from agent.config import default_cache_dir

    return default_cache_dir() / "prompt-states"


def model_key(model_path: str, n_ctx: int) -> str:
    """States are only valid for the model file, context size and llama.cpp build that wrote them."""
    try:
        import llama_cpp
        version = getattr(llama_cpp, "__version__", "?")
    except ImportError:  # pragma: no cover - the store is only used with llama.cpp
        version = "?"
    stat = os.stat(model_path)
    blob = f"{os.path.abspath(model_path)}|{stat.st_size}|{int(stat.st_mtime)}|{n_ctx}|{version}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


class PromptStateStore:
    """Saved KV states of recurring prompt prefixes, for one model (``model_key``).

    ``prepare(llama, tokens)`` runs before a prompt is evaluated: it loads the longest saved
    prefix of ``tokens`` when that beats what the context already holds, and saves the prefix
    that ``tokens`` shares with a recently seen prompt when no state covers it yet. The caller
    then evaluates the prompt as usual: llama.cpp finds the prefix in its context and reads only
    the rest. Failures are logged and leave a cold context, never an error.
    """

    def __init__(self, directory: str | Path, key: str, *, min_tokens: int = MIN_PREFIX_TOKENS,
                 max_states: int = MAX_STATES, remembered: int = REMEMBERED_PROMPTS):
        self.directory = Path(directory)
        self.key = key
        self.min_tokens = int(min_tokens)
        self.max_states = int(max_states)
        self.remembered = int(remembered)
        self.loaded = 0  # prompt tokens spared by loading states, in this process
        self.saved = 0  # states written

    # ------------------------------------------------------------------ files
    def _files(self, kind: str) -> list[Path]:
        if not self.directory.is_dir():
            return []
        files = self.directory.glob(f"{self.key}-{kind}-*.npy")
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)

    @staticmethod
    def _tokens(path: Path) -> np.ndarray | None:
        try:
            return np.load(path)
        except (OSError, ValueError):
            return None

    def _prune(self, kind: str, keep: int) -> None:
        files = self._files(kind)
        if kind == "state" and len(files) > keep:
            files = self._eviction_order(files)
        for path in files[keep:]:
            path.unlink(missing_ok=True)
            path.with_suffix(".state").unlink(missing_ok=True)

    def _eviction_order(self, files: list[Path]) -> list[Path]:
        """States to keep first: those that other saved states continue, then by recent use.

        Loading a prompt touches only the longest saved prefix, so a short prefix that every
        request shares (the helper reference, before any product's parts table) looked unused
        beside the products' longer states and was evicted first. Each product's next first
        request then read the whole shared header again: 75 s instead of 11 s for the first rule
        of a rule set on a slow 2-core machine. Like a radix cache, evict leaves first.
        """
        tokens = {path: self._tokens(path) for path in files}

        def continued(path: Path) -> bool:
            mine = tokens[path]
            return mine is not None and any(
                other is not None and len(other) > len(mine) and _common(mine, other) == len(mine)
                for p, other in tokens.items() if p != path)

        return sorted(files, key=lambda path: not continued(path))  # stable: by recent use within each

    # ------------------------------------------------------------------ use
    def prepare(self, llama: Any, tokens: Sequence[int]) -> int:
        """Bring the longest known prefix of ``tokens`` into ``llama``'s context; returns how
        many prompt tokens the context then holds."""
        tokens = [int(t) for t in tokens]
        held = _common(llama.input_ids[:llama.n_tokens].tolist(), tokens)
        try:
            # saved prefixes of this prompt (the whole saved prefix starts it, one token is left)
            prefixes = [(path, len(saved)) for path, saved in ((p, self._tokens(p)) for p in self._files("state"))
                        if saved is not None and len(saved) < len(tokens)
                        and _common(saved.tolist(), tokens) == len(saved)]
            held = self._load_best(llama, tokens, held, prefixes)
            held = self._save_shared(llama, tokens, held, max((n for _, n in prefixes), default=0))
            self._remember(tokens)
        except Exception as exc:  # a full disk or a foreign file: read the prompt as usual
            log.warning("prompt state store in %s: %s; reading the prompt in full", self.directory, exc)
            llama.reset()
            held = 0
        return held

    def _load_best(self, llama: Any, tokens: list[int], held: int, prefixes: list[tuple[Path, int]]) -> int:
        best_path, best = max(prefixes, key=lambda item: item[1], default=(None, 0))
        if best_path is None or best < held + MIN_GAIN_TOKENS:
            return held
        import llama_cpp

        buf = (llama_cpp.llama_token * best)()
        count = ctypes.c_size_t(0)
        ok = llama_cpp.llama_state_load_file(llama._ctx.ctx, str(best_path.with_suffix(".state")).encode(),
                                              buf, best, ctypes.byref(count))
        if not ok or count.value != best or list(buf[:best]) != tokens[:best]:
            llama.reset()
            best_path.unlink(missing_ok=True)
            best_path.with_suffix(".state").unlink(missing_ok=True)
            raise RuntimeError(f"state file {best_path.with_suffix('.state').name} could not be loaded; removed")
        llama.input_ids[:best] = tokens[:best]
        llama.n_tokens = best
        os.utime(best_path)  # least recently used states go first
        self.loaded += best - held
        return best

    def _save_shared(self, llama: Any, tokens: list[int], held: int, covered: int) -> int:
        """Save the prefix ``tokens`` shares with a remembered prompt, unless a saved state
        already ``covered`` nearly as much of it."""
        shared = 0
        for path in self._files("prompt"):
            seen = self._tokens(path)
            if seen is None:
                continue
            n = _common(seen.tolist(), tokens)
            # a prompt that this one continues (a repair round, the same request again) shares
            # all of itself: that is one conversation, not a prefix that other requests share
            if n < len(seen):
                shared = max(shared, n)
        shared = min(shared, len(tokens) - 1)
        if shared < self.min_tokens:
            return held
        if shared < covered + MIN_GAIN_TOKENS:
            return held
        import llama_cpp

        # the context must hold exactly the shared prefix when it is saved: cut what follows it,
        # or read what is missing (the prompt's own tokens, which the caller would read anyway)
        keep = min(held, shared)
        llama._ctx.kv_cache_seq_rm(-1, keep, -1)
        llama.n_tokens = keep
        if keep < shared:
            llama.eval(tokens[keep:shared])
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(np.asarray(tokens[:shared], np.int32).tobytes()).hexdigest()[:16]
        target = self.directory / f"{self.key}-state-{name}.npy"
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        try:
            arr = (llama_cpp.llama_token * shared)(*tokens[:shared])
            if not llama_cpp.llama_state_save_file(llama._ctx.ctx, tmp.encode(), arr, shared):
                raise RuntimeError("llama.cpp could not write the state file")
            os.replace(tmp, target.with_suffix(".state"))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        # the token list last: a state is listed only once its file is complete
        np.save(target, np.asarray(tokens[:shared], np.int32))
        self.saved += 1
        self._prune("state", self.max_states)
        return shared

    def _remember(self, tokens: list[int]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(np.asarray(tokens, np.int32).tobytes()).hexdigest()[:16]
        np.save(self.directory / f"{self.key}-prompt-{name}.npy", np.asarray(tokens, np.int32))
        self._prune("prompt", self.remembered)

"""A LangChain chat model around ``llama_cpp.Llama`` (GGUF files, CPU).

The GGUF's own chat template formats the conversation. Generation is greedy at
temperature 0 and seeded, so repeated calls give the same answer. Tool calling
goes through llama-cpp-python's ``chatml-function-calling`` handler (grammar-
constrained JSON arguments). The model reads text only: image blocks are replaced
by a short note, and the agent passes the scene parse as text instead.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import Field

from .errors import LLMError, LLMTimeoutError
from .lookup import DEFAULT_DRAFT, LookupLlama, PromptDeadline
from .messages import to_text_only_dicts
from .robust import repetition_cut
from .toolcalls import forced_tool, openai_tools, tool_names

# One Llama per (file, context, threads): loading is the expensive part and the
# weights are shared by every chat model built on them. llama.cpp contexts are not
# thread-safe, so each carries a lock.
_LOCKS: dict[int, threading.Lock] = {}
_LOAD_LOCK = threading.Lock()
_STORES: dict[tuple, Any] = {}  # one prompt state store per directory and model
log = logging.getLogger(__name__)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


#: more decoding threads than this stop helping: token generation is memory-bandwidth bound
MAX_DEFAULT_THREADS = 8


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return 0.0


#: how long ``busy_elsewhere`` watches the machine's CPU time
BUSY_SAMPLE_S = 0.3


def _cpu_ticks() -> tuple[int, int, float]:
    """(busy clock ticks of all CPUs, clock ticks of this process, monotonic time) from /proc."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    busy = sum(fields[:3]) + sum(fields[5:8])
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12]), time.monotonic()  # utime + stime of all its threads


def busy_elsewhere(window_s: float = BUSY_SAMPLE_S) -> float | None:
    """Cores that other processes keep busy now: the machine's CPU time over a short window,
    less this process's own. None where /proc cannot say (not Linux)."""
    try:
        busy0, own0, start = _cpu_ticks()
        time.sleep(window_s)
        busy1, own1, end = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") * max(end - start, 1e-3)
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / ticks)


def default_threads(cpus: int | None = None, others: float | None = None, host_cpus: int | None = None) -> int:
    """Threads llama.cpp uses when ``LLMConfig.n_threads`` is not set.

    Every core this process may run on (at most 8) that other processes are not keeping
    busy: ``cpus * (1 - others / host_cpus)``, rounded, at least 1. ``others`` is measured
    (``busy_elsewhere``: the machine's CPU time over a short window, less this process's own),
    or, where /proc cannot say, the load average less one runnable task for this process. On an
    otherwise idle 2-core machine that is 2. On a busy one it stays 1: llama.cpp threads spin
    while they wait for each other, and a thread waiting for a core that another job holds stalls
    every token. Measured on the shared 2-core development machine at a load average of 4 to 5
    (Qwen2.5-Coder-0.5B, 64 tokens): 1 thread 4.3 to 10.2 tokens/s, 2 threads 1.2 tokens/s.

    The load average alone counted this process's own recent work as other work: the agent fits
    its detectors (both cores, tens of seconds) just before it loads the model, the load average
    then read about 1.6 on an idle 2-core machine, and the model decoded on 1 thread at about half
    the speed of 2 (Qwen2.5-Coder-1.5B: 5.6 against 10 tokens/s).
    """
    cpus = _available_cpus() if cpus is None else cpus
    if others is None:
        others = busy_elsewhere()
    if others is None:
        others = max(0.0, _load_average() - 1.0)
    host_cpus = (os.cpu_count() or cpus) if host_cpus is None else host_cpus
    # /proc/stat and the load average count the whole machine, which may have more cores than
    # this process may use (a container's cpuset): compare with the machine's cores.
    idle = cpus * max(0.0, 1.0 - others / max(1, host_cpus))
    return max(1, min(MAX_DEFAULT_THREADS, cpus, round(idle)))


def load_llama(model_path: str, n_ctx: int, n_threads: int | None, seed: int) -> Any:
    """The model, loaded once per process; a caller arriving during a load waits for it (the
    lock covers the cache lookup) instead of loading a second copy."""
    with _LOAD_LOCK:
        return _load_llama(model_path, n_ctx, n_threads, seed)


AMX_WARNING = (
    "this llama.cpp build has AMX kernels (AMX_INT8 = 1 in its system info): on some AMX CPUs they "
    "segfault on Q4_K weights, the default models' format (ggml-org/llama.cpp#20824). If the model "
    "crashes, rebuild llama-cpp-python without them: `make install` does, or "
    "CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
    "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python")


def uses_amx(system_info: str | bytes | None = None) -> bool:
    """Whether llama.cpp's system info (this process's build when None) reports AMX kernels.

    A crash inside them kills the process, so it cannot be caught: warning before the load is
    what can be done at run time."""
    if system_info is None:
        try:
            import llama_cpp
            system_info = llama_cpp.llama_print_system_info()
        except Exception:  # an old or partial binding: nothing to report
            return False
    text = system_info.decode("utf-8", "replace") if isinstance(system_info, bytes) else str(system_info)
    return "AMX_INT8 = 1" in text


@lru_cache(maxsize=4)
def _load_llama(model_path: str, n_ctx: int, n_threads: int | None, seed: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LLMError(
            "llama-cpp-python is not installed; install the 'llm' extra (pip install -e '.[llm]')"
        ) from exc
    if not os.path.isfile(model_path):
        raise LLMError(f"GGUF model file {model_path} does not exist")
    if uses_amx():
        log.warning(AMX_WARNING)
    threads = n_threads or default_threads()
    try:
        llama = Llama(model_path=model_path, n_ctx=n_ctx, n_threads=threads, seed=seed, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise LLMError(f"llama.cpp could not load {model_path}: {exc}") from exc
    _LOCKS[id(llama)] = threading.Lock()
    # Free the model while the interpreter is still whole; llama-cpp-python's own finaliser
    # runs during module teardown and prints a TypeError traceback at every exit otherwise.
    atexit.register(llama.close)
    return llama


def _tool_choice_payload(tool_choice: Any, tools: list[dict]) -> Any:
    """The chatml handler's tool_choice. LangChain's "no tool_choice" means the model may call
    tools; the handler reads None as "never", so it is "auto" here. The handler cannot force
    "some tool among several", so that lets the model choose."""
    forced = forced_tool(tool_choice, tool_names(tools))
    if forced in (None, "any"):
        return "auto"
    if forced == "none":
        return "none"
    return {"type": "function", "function": {"name": forced}}


def _for_function_calling(payload: list[dict]) -> list[dict]:
    """Tool results as user turns: the chatml function-calling template renders no 'tool' role."""
    names = {call["id"]: call["function"]["name"]
             for message in payload for call in message.get("tool_calls") or []}
    out = []
    for message in payload:
        if message["role"] == "tool":
            name = names.get(message.get("tool_call_id"), "tool")
            out.append({"role": "user", "content": f"Result of functions.{name}:\n{message['content']}"})
        else:
            out.append(message)
    return out


class _Deadline:
    """A llama.cpp stopping criterion that ends decoding once ``deadline`` (monotonic) has passed.

    Stopping criteria run in Python between tokens (logits processors run inside a C
    callback, where an exception would be swallowed), so this is how a generation that is
    not streamed (the function-calling handler's) is cut off inside llama.cpp.
    """

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.expired = False

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        if time.monotonic() > self.deadline:
            self.expired = True
        return self.expired


class _BoundedLlama:
    """A ``Llama`` whose completions all stop at one deadline (the function-calling handler
    makes up to three completions per answer; they share the caller's time budget)."""

    def __init__(self, llama: Any, deadline: _Deadline):
        self._llama = llama
        self._deadline = deadline

    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        from llama_cpp import StoppingCriteriaList

        criteria = list(kwargs.pop("stopping_criteria", None) or []) + [self._deadline]
        return self._llama.create_completion(*args, stopping_criteria=StoppingCriteriaList(criteria), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)


class LlamaCppChatModel(BaseChatModel):
    """Chat model on a local GGUF file through llama.cpp."""

    model_path: str
    model_name: str = Field(default="", description="registry name or file name, for display and ids")
    n_ctx: int = 4096
    n_threads: int | None = None
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float | None = Field(default=None, description="generation stops (and raises) after this")
    max_repeated_lines: int = Field(
        default=3, ge=0,
        description="decoding stops when a line repeats this many times in a row (a greedy loop); "
                    "the answer keeps one copy and ends with finish_reason 'repetition'; 0 never stops")
    prompt_state_dir: str | None = Field(
        default=None, description="keep prompt prefixes that recur across processes here "
                                  "(agent.llm.prompt_states); None reads every prompt in full")
    prompt_lookup: int = Field(
        default=DEFAULT_DRAFT, ge=0, le=32,
        description="greedy answers guess up to this many tokens per pass from the prompt and keep those "
                    "the model confirms (agent.llm.lookup); 0 decodes one token per pass")

    @property
    def _llm_type(self) -> str:
        return "logiscan-llamacpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx, "seed": self.seed,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    @property
    def llama(self) -> Any:
        return load_llama(self.model_path, self.n_ctx, self.n_threads, self.seed)

    def _prompt_states(self) -> Any:
        if not self.prompt_state_dir:
            return None
        from .prompt_states import PromptStateStore, model_key

        key = (self.prompt_state_dir, self.model_path, self.n_ctx)
        with _LOAD_LOCK:
            if key not in _STORES:
                _STORES[key] = PromptStateStore(self.prompt_state_dir, model_key(self.model_path, self.n_ctx))
            return _STORES[key]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        from llama_cpp.llama_chat_format import chatml_function_calling

        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        # Per-call sampling overrides: a repair loop asks for a different answer, reproducibly.
        temperature = kwargs.pop("temperature", self.temperature)
        seed = kwargs.pop("seed", self.seed)
        timeout_s = kwargs.pop("timeout_s", self.timeout_s)  # a caller's deadline, for this call only
        if kwargs:
            raise LLMError(f"unsupported generation options for llama.cpp: {sorted(kwargs)}")
        llama = self.llama
        payload = to_text_only_dicts(messages)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        common = dict(temperature=temperature, max_tokens=self.max_tokens, stop=stop or [])
        expired = False
        try:
            with _LOCKS[id(llama)]:
                # Re-seeding per call makes sampled (temperature > 0) answers reproducible too.
                llama.set_seed(seed)
                if tools:
                    bounded = llama if deadline is None else _BoundedLlama(llama, _Deadline(deadline))
                    try:
                        response = chatml_function_calling(
                            llama=bounded, messages=_for_function_calling(payload), tools=tools,
                            tool_choice=_tool_choice_payload(tool_choice, tools), **common,
                        )
                    except Exception:
                        # A completion cut short can leave the handler with half a JSON object.
                        if deadline is None or not bounded._deadline.expired:
                            raise
                        response = None
                    expired = deadline is not None and bounded._deadline.expired
                else:
                    # Streaming lets us stop inside llama.cpp once the time budget is spent (closing
                    # the generator ends decoding), so the model is free for the next call at once.
                    pieces: list[str] = []
                    finish_reason = None
                    cut = None  # where a repetition loop starts, if decoding fell into one
                    store = self._prompt_states()
                    if store is None and self.prompt_lookup == 0:
                        stream = llama.create_chat_completion(messages=payload, seed=seed, stream=True, **common)
                    else:
                        # Llama's own method on the wrapper: the same handler and defaults, with
                        # the wrapper's create_completion reading the prompt's tokens (it brings a
                        # saved prefix in, and decodes greedy answers with prompt lookup)
                        target = LookupLlama(llama, self.prompt_lookup, prepare=store.prepare if store else None,
                                             deadline=deadline)
                        stream = type(llama).create_chat_completion(
                            target, messages=payload, seed=seed, stream=True, **common)
                    try:
                        for chunk in stream:
                            choice = chunk["choices"][0]
                            delta = choice.get("delta") or {}
                            content = delta.get("content")
                            if content:
                                pieces.append(content)
                            finish_reason = choice.get("finish_reason") or finish_reason
                            if deadline is not None and time.monotonic() > deadline and finish_reason is None:
                                expired = True
                                break
                            if content and "\n" in content and finish_reason is None:
                                cut = repetition_cut("".join(pieces), self.max_repeated_lines)
                                if cut is not None:
                                    finish_reason = "repetition"
                                    break
                    finally:
                        stream.close()
                    decoded = "".join(pieces)  # repeats included: they are in the context
                    text = decoded if cut is None else decoded[:cut]

                    def tokens(s: str) -> int:
                        return len(llama.tokenize(s.encode(), add_bos=False, special=True)) if s else 0

                    generated = tokens(text)
                    # The context holds the prompt plus the decoded tokens but the last (never fed back).
                    prompt_tokens = max(0, llama.n_tokens - max(0, tokens(decoded) - 1))
                    response = {
                        "choices": [{"message": {"content": text}, "finish_reason": finish_reason}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                                  "total_tokens": prompt_tokens + generated},
                    }
        except PromptDeadline:  # the deadline passed while the prompt was being read
            expired = True
        except ValueError as exc:  # llama-cpp-python reports context overflow this way
            raise LLMError(
                f"llama.cpp model {self.model_name or self.model_path} cannot take this prompt: {exc} "
                f"(n_ctx={self.n_ctx}; shorten the prompt or raise n_ctx)"
            ) from exc
        if expired:
            raise LLMTimeoutError(
                f"llama.cpp model {self.model_name or self.model_path} did not finish within "
                f"{timeout_s:g} s (raise timeout_s or lower max_tokens)"
            )
        choice = response["choices"][0]
        message = choice["message"]
        tool_calls = []
        for call in message.get("tool_calls") or []:
            arguments = call["function"].get("arguments") or "{}"
            try:
                args = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise LLMError(f"model returned malformed tool arguments {arguments!r}: {exc}") from exc
            tool_calls.append({"name": call["function"]["name"], "args": args,
                               "id": call.get("id") or f"call_{uuid.uuid4().hex[:8]}", "type": "tool_call"})
        usage = response.get("usage") or {}
        ai = AIMessage(
            content=message.get("content") or "",
            tool_calls=tool_calls,
            usage_metadata={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
            response_metadata={"finish_reason": choice.get("finish_reason"), "model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=ai)])

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=openai_tools(tools, tool_choice), tool_choice=tool_choice, **kwargs)

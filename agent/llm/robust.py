"""Robust use of a model's answer: time limits, and code that may or may not be there."""

from __future__ import annotations

import ast
import concurrent.futures as futures
import re
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable

from .errors import LLMError, LLMTimeoutError
from .messages import content_text

# A closing fence starts or ends its line: a model that copies an instruction such as "in one
# ```python block" into a comment must not end its code block there.
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|```[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_PYTHON_TAGS = {"python", "py", "python3"}
# Statements that prose never parses into; a lone name or constant ("OK", "42") is not code.
_CODE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AugAssign,
               ast.AnnAssign, ast.Import, ast.ImportFrom, ast.Return, ast.For, ast.While, ast.If,
               ast.With, ast.Try, ast.Call)


def invoke_with_timeout(chat: BaseChatModel, messages: list[BaseMessage], timeout_s: float, **kwargs: Any) -> str:
    """Ask ``chat`` and return the text of its answer, or raise :class:`LLMError`.

    ``timeout_s`` bounds the wait, and the backend's own generation too where it has a per-call
    limit (:func:`timeout_option`). Any failure (time budget exceeded, server down, model error)
    becomes an LLMError whose message names the model, so the agent can record it and carry on.
    """
    return content_text(invoke_message_with_timeout(chat, messages, timeout_s, **kwargs).content)


def invoke_message_with_timeout(model: Runnable, messages: list[BaseMessage], timeout_s: float,
                                **kwargs: Any) -> BaseMessage:
    """Like :func:`invoke_with_timeout`, but for any runnable (a chat model with tools bound,
    say) and returning the whole message, tool calls included."""
    if timeout_s <= 0:
        raise LLMError(f"timeout_s must be positive, got {timeout_s}")
    name = _model_name(model)
    # The backend gets the same limit, so a call the caller gives up on does not run on in its
    # thread, holding the model (and the CPU) for the next call.
    kwargs = {**timeout_option(model, timeout_s), **kwargs}
    # A daemon-less pool would keep the interpreter alive on a hung call; shutdown(wait=False) avoids blocking.
    pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-call")
    future = pool.submit(model.invoke, messages, **kwargs)
    try:
        return future.result(timeout=timeout_s)
    except futures.TimeoutError:
        future.cancel()
        raise LLMTimeoutError(f"model {name} did not answer within {timeout_s:g} s") from None
    except LLMError:
        raise
    except Exception as exc:  # the agent must survive any backend failure
        raise LLMError(f"model {name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        pool.shutdown(wait=False)


def timeout_option(model: Any, timeout_s: float) -> dict[str, float]:
    """The call option that makes ``model`` itself stop after ``timeout_s``, so that a caller's
    deadline frees the model too, not only the caller: ``timeout_s`` for logiscan's own backends
    (llama.cpp, transformers), ``timeout`` for OpenAI-compatible clients, none otherwise."""
    fields = getattr(type(getattr(model, "bound", model)), "model_fields", {})
    if "timeout_s" in fields:
        return {"timeout_s": timeout_s}
    if "request_timeout" in fields:  # langchain_openai's ChatOpenAI (alias ``timeout``)
        return {"timeout": timeout_s}
    return {}


def _model_name(model: Any) -> str:
    # A chat model with tools bound (RunnableBinding) wraps the model in ``bound``.
    inner = getattr(model, "bound", model)
    return getattr(inner, "model_name", None) or type(inner).__name__


def _looks_like_code(source: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(node, _CODE_NODES) for node in ast.walk(tree))


def extract_code(text: str | None) -> str | None:
    """Python code from a model's answer, or None when it holds only prose.

    Prefers the first block fenced as python; else the first fenced block that parses as
    code; else the whole answer when it parses as code. A fence cut off by the token limit
    still counts (its code runs to the end of the answer). A block labelled python is
    returned even when it does not parse, so the caller can report the syntax error back.
    """
    if not text or not text.strip():
        return None
    blocks = [(tag.lower(), body.strip("\n")) for tag, body in _FENCE.findall(text)]
    for tag, body in blocks:
        if tag in _PYTHON_TAGS and body.strip():
            return body.strip("\n") + "\n"
    for tag, body in blocks:
        if not tag and _looks_like_code(body):
            return body.strip("\n") + "\n"
    if not blocks and _looks_like_code(text.strip()):
        return text.strip() + "\n"
    return None


def repetition_cut(text: str, max_repeats: int) -> int | None:
    """Where to cut ``text`` when it ends in a loop: the same non-blank line ``max_repeats``
    times in a row after its first occurrence. Returns the offset just past the first
    occurrence (the loop collapsed to one line), or ``None`` while the text is not looping.

    Small models decoding greedily fall into such loops (a comment line repeated until
    ``max_tokens``); stopping at the first repeats saves the rest of the budget, and the
    collapsed answer is short enough not to be copied back by a repair round.
    """
    if max_repeats < 1:
        return None
    lines = text.split("\n")[:-1]  # complete lines only
    if len(lines) < max_repeats + 1:
        return None
    last = lines[-1].strip()
    if not last or any(line.strip() != last for line in lines[-(max_repeats + 1):]):
        return None
    first = len(lines) - (max_repeats + 1)
    while first > 0 and lines[first - 1].strip() == last:
        first -= 1
    return sum(len(line) + 1 for line in lines[:first + 1])

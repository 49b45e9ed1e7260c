"""Prompt-lookup decoding for llama.cpp: greedy answers in fewer passes over the weights.

A LogiCode answer copies much of its prompt (the helper calls, part ids and idioms of the
examples). So where the answer's last few tokens occur earlier in the context, the tokens that
followed them there are a good guess of what comes next (prompt lookup decoding, A. Saxena,
2023). Each pass feeds the current token plus that guess as one batch, keeps the guessed tokens
up to the first one the model would not have chosen itself, and takes the model's own choice
there: several tokens for one pass when the guess is right, one (as without lookup) when it is not.

A pass that checks a guess costs more than a plain one on a CPU: the output layer (Qwen2.5 has a
152k-word vocabulary) runs for every checked position. So only a match of ``MIN_NGRAM`` tokens or
more is guessed, and what it saves grows with the answer's copying: on four LogiCode requests
(Qwen2.5-Coder-1.5B, 2 threads) decoding took 8.8 / 9.3, 12.3 / 12.4 and 17.9 / 11.8 seconds
(plain / lookup) on three of them. The answer is the greedy one, but the logits of a batched pass
are not bitwise those of a one-token pass, so a near-tie between two tokens can tip either way
(as it can when llama.cpp reuses a cached prompt prefix).

llama-cpp-python's own ``draft_model`` needs ``logits_all=True``, which keeps a row of logits
for every context position (n_ctx x vocabulary floats: 2.5 GB for Qwen2.5 at 4,096 tokens); this
loop asks llama.cpp for the logits of the checked positions only.

It runs behind ``Llama.create_chat_completion`` (:class:`LookupLlama` wraps the model and
answers ``create_completion`` for greedy, unconstrained streams), so the chat template, the
prompt-state store and the caller's streaming loop (deadline, repetition stop) stay as they are.

A call's deadline also holds while its prompt is read, for sampled answers too (their prompt is
read here, then llama.cpp reuses it): the caller's loop sees nothing until the first token, and a
repair request near the end of a generation budget reads several hundred new tokens (the rejected
answer and its error), seconds on a CPU that no check could interrupt.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Iterator

import numpy as np

#: the n-gram sizes tried, longest first, to find where the answer's last tokens occur before.
#: Same requests as above (decoding seconds, plain / lookup): matches of 1-3 tokens with 4 guessed
#: tokens 8.2 / 9.5, 12.6 / 12.0, 17.6 / 14.8; with 10 guessed tokens 7.7 / 17.3, 13.2 / 21.1,
#: 19.5 / 16.2 (short matches guess wrong often, and each wrong guess costs a checking pass).
MAX_NGRAM = 4
MIN_NGRAM = 3
#: guessed tokens per pass (LLMConfig.prompt_lookup)
DEFAULT_DRAFT = 6
#: prompt tokens read per batch when a deadline is set: 1.5 s of reading on 2 cores for the 1.5B
#: model. Reading 640 tokens in chunks of 128 took 4-8 % longer than in one batch; in chunks of
#: 64, 8-17 % longer.
DEADLINE_CHUNK = 128


class PromptDeadline(TimeoutError):
    """The call's deadline passed while its prompt was being read."""


def find_draft(tokens: np.ndarray, n_draft: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """The tokens that followed the latest earlier occurrence of the sequence's last n-gram
    (longest n first), at most ``n_draft`` of them; [] when the last tokens never occurred."""
    n = len(tokens)
    for size in range(min(max_ngram, n - 1), MIN_NGRAM - 1, -1):
        tail = tokens[n - size:]
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:n - 1], size)
        hits = np.flatnonzero((windows == tail).all(axis=1))
        # the latest occurrence first: in an answer that repeats itself, the nearest context fits best
        for start in hits[::-1]:
            follow = tokens[start + size:start + size + n_draft]
            if len(follow):
                return [int(t) for t in follow]
    return []


class LookupLlama:
    """A ``Llama`` whose greedy streamed completions use prompt lookup (``n_draft`` guessed
    tokens at most per pass; 0: none). ``prepare(llama, prompt_tokens)``, if given, runs first on
    every completion: the prompt-state store brings a saved prefix into the context. The chat
    handler formats the messages and calls ``create_completion`` with the prompt's tokens, so this
    is where they are known.

    Other completions (sampling, grammars, logits processors, logprobs, not streamed, or all of
    them with ``n_draft`` 0) go to the model unchanged, after their prompt is read here when a
    deadline is set.
    """

    def __init__(self, llama: Any, n_draft: int, prepare: Callable[[Any, list[int]], Any] | None = None,
                 deadline: float | None = None):
        """``deadline``: a ``time.monotonic()`` time; prompt reading stops there with
        :class:`PromptDeadline` (decoding is stopped by the caller's streaming loop)."""
        self._llama = llama
        self._n_draft = int(n_draft)
        self._prepare = prepare
        self._deadline = deadline
        self.stats = {"passes": 0, "tokens": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, prompt: Any = None, *args: Any, **kwargs: Any) -> Any:
        tokens = isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)
        if tokens and self._prepare is not None:
            self._prepare(self._llama, prompt)
        greedy = kwargs.get("temperature", 0.8) == 0 and kwargs.get("stream")
        # the chat template's stopping criteria (its end-of-turn token ids) are honoured below
        plain = not any(kwargs.get(k) for k in ("grammar", "logits_processor", "logprobs", "logit_bias",
                                                 "suffix", "echo"))
        if args or not (greedy and plain and tokens) or self._n_draft < 1:
            if tokens and self._deadline is not None:
                # read the prompt here, where the deadline is checked; llama.cpp then finds it
                # in the context and reads one token again for fresh logits
                self._read_prompt(self._llama, prompt)
            return self._llama.create_completion(prompt, *args, **kwargs)
        stop = kwargs.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        return self._stream(list(prompt), int(kwargs.get("max_tokens") or 16), stop, kwargs.get("model"),
                            kwargs.get("stopping_criteria"))

    def _stream(self, prompt: list[int], max_tokens: int, stop: list[str], model: Any,
                criteria: Any = None) -> Iterator[dict]:
        import llama_cpp

        llama = self._llama
        ident, created = f"cmpl-{uuid.uuid4()}", int(time.time())
        name = model or llama.model_path
        n_ctx = llama.n_ctx()
        if len(prompt) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")

        def chunk(text: str, finish: Any) -> dict:
            return {"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        out: list[int] = []
        state = {"text": "", "sent": 0}
        hold = max((len(s) for s in stop), default=0)  # a stop string may still be forming

        def take(token: int, row: np.ndarray) -> str | None:
            """Add one chosen token (``row``: the logits it was chosen from) to the answer; why the
            answer ends, or None."""
            if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                return "stop"
            if criteria is not None and criteria(np.asarray(context + [token], dtype=np.intc), row):
                return "stop"
            out.append(token)
            text = llama.detokenize(out).decode("utf-8", errors="ignore")
            cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
            if cuts:
                state["text"] = text[:min(cuts)]
                return "stop"
            state["text"] = text
            if len(out) >= max_tokens or llama.n_tokens + 2 >= n_ctx:
                return "length"
            return None

        try:
            context = list(prompt)
            row = self._read_prompt(llama, prompt)
            current = int(np.argmax(row))
            finish = take(current, row)
            while finish is None:
                safe = len(state["text"]) - hold
                if safe > state["sent"]:
                    yield chunk(state["text"][state["sent"]:safe], None)
                    state["sent"] = safe
                context.append(current)
                room = min(self._n_draft, max_tokens - len(out), n_ctx - llama.n_tokens - 2)
                draft = find_draft(np.asarray(context, dtype=np.int64), room) if room > 0 else []
                start = llama.n_tokens
                rows = self._decode(llama, [current] + draft, want_all=True)
                accepted = 0
                while accepted < len(draft) and int(np.argmax(rows[accepted])) == draft[accepted]:
                    accepted += 1
                # keep the current token and the guesses the model itself would have chosen
                llama.n_tokens = start + 1 + accepted
                llama._ctx.kv_cache_seq_rm(-1, llama.n_tokens, -1)
                self.stats["tokens"] += 1 + accepted
                for i, guess in enumerate(draft[:accepted]):
                    finish = take(guess, rows[i])
                    context.append(guess)
                    if finish is not None:
                        break
                current = int(np.argmax(rows[accepted]))
                if finish is None:
                    finish = take(current, rows[accepted])
            text = state["text"]
            if len(text) > state["sent"]:
                yield chunk(text[state["sent"]:], None)
            yield chunk("", finish)
        finally:
            # the context's logits are a checking batch's, not the last kept token's
            llama._requires_eval = True

    def _read_prompt(self, llama: Any, prompt: list[int]) -> np.ndarray:
        """Evaluate the prompt, reusing the longest prefix already in the context (a prompt state
        or the previous answer's prompt); the logits after its last token."""
        common = 0
        for a, b in zip(llama.input_ids[:llama.n_tokens], prompt):
            if a != b:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # at least one token is read, for fresh logits
        llama._ctx.kv_cache_seq_rm(-1, common, -1)
        llama.n_tokens = common
        rest = prompt[common:]
        logits = None
        deadline = self._deadline
        step = llama.n_batch if deadline is None else min(llama.n_batch, DEADLINE_CHUNK)
        for i in range(0, len(rest), step):
            if deadline is not None and time.monotonic() > deadline:
                raise PromptDeadline(f"the deadline passed after {i} of {len(rest)} new prompt tokens")
            logits = self._decode(llama, rest[i:i + step], want_all=False)
        return logits[-1]

    def _decode(self, llama: Any, tokens: list[int], want_all: bool) -> np.ndarray:
        """Feed ``tokens`` as one batch after the context; the logits after each of them
        (``want_all``) or after the last."""
        n_past = llama.n_tokens
        llama._batch.set_batch(batch=tokens, n_past=n_past, logits_all=want_all)
        llama._ctx.decode(llama._batch)
        llama.input_ids[n_past:n_past + len(tokens)] = tokens
        llama.n_tokens = n_past + len(tokens)
        rows = len(tokens) if want_all else 1
        vocab = llama.n_vocab()
        logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(rows * vocab,))
        self.stats["passes"] += 1
        return np.array(logits, dtype=np.float32).reshape(rows, vocab)

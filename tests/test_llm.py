"""Chat-model backends: configuration, llama.cpp on a real GGUF, robustness helpers."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from PIL import Image
from pydantic import ValidationError

from agent.llm import (
    IMAGE_OMITTED_NOTE, LLMConfig, LLMError, LLMTimeoutError, extract_code, image_to_data_url,
    invoke_with_timeout, make_chat_model, model_id, timeout_option, weights,
)
from agent.llm.messages import MessageFormatError, data_url_to_image, to_text_only_dicts


def _installed(name: str) -> None:
    try:
        weights.model_path(name)
    except weights.WeightsError as exc:
        pytest.skip(f"{exc}")


# -- configuration ------------------------------------------------------------------------

def test_config_validation_messages():
    with pytest.raises(ValidationError, match="backend"):
        LLMConfig(backend="mystery")
    with pytest.raises(ValidationError, match="base_url must start with http"):
        LLMConfig(backend="openai", base_url="localhost:8000")
    with pytest.raises(ValidationError, match="model must name"):
        LLMConfig(model="  ")
    assert LLMConfig().backend == "llamacpp" and LLMConfig().model == "qwen2.5-coder-1.5b"


def test_model_id_is_stable_and_separates_what_changes_answers():
    base = LLMConfig(model="smollm2-135m")
    assert model_id(base) == model_id(LLMConfig(model="smollm2-135m"))
    assert model_id(base).startswith("llamacpp:smollm2-135m@b179c9523d0e")
    assert model_id(base) != model_id(LLMConfig(model="smollm2-135m", temperature=0.7))
    assert model_id(base) != model_id(LLMConfig(model="qwen2.5-coder-0.5b"))
    # a loop cut short changes what a repair round sees
    assert model_id(base) != model_id(LLMConfig(model="smollm2-135m", max_repeated_lines=0))
    served = LLMConfig(backend="openai", model="qwen", base_url="http://127.0.0.1:9/v1")
    assert model_id(served).startswith("openai:qwen@http://127.0.0.1:9/v1")
    assert "rep=" not in model_id(served)  # the repetition stop is llama.cpp's


def test_unknown_llamacpp_model_and_missing_weights_are_clear(monkeypatch, tmp_path):
    with pytest.raises(LLMError, match="neither a registered model"):
        make_chat_model(LLMConfig(model="not-a-model"))
    with pytest.raises(LLMError, match=r"does not exist"):
        make_chat_model(LLMConfig(model=str(tmp_path / "absent.gguf")))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    # A configuration no other test builds, so no cached instance hides the missing file.
    with pytest.raises(LLMError, match="make model"):
        make_chat_model(LLMConfig(model="qwen2.5-coder-0.5b", seed=12345))


def test_openai_backend_needs_a_server_or_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="needs base_url"):
        make_chat_model(LLMConfig(backend="openai", model="gpt-4o"))


# -- message conversion -------------------------------------------------------------------

def test_text_only_conversion_replaces_images_with_a_note():
    url = image_to_data_url(Image.new("RGB", (8, 6), (255, 0, 0)))
    assert url.startswith("data:image/png;base64,")
    assert data_url_to_image(url).size == (8, 6)
    messages = [
        SystemMessage("sys"),
        HumanMessage(content=[{"type": "text", "text": "look:"}, {"type": "image_url", "image_url": {"url": url}}]),
        AIMessage(content="", tool_calls=[{"name": "count", "args": {"part": "screw"}, "id": "c1"}]),
        ToolMessage(content="2", tool_call_id="c1"),
    ]
    dicts = to_text_only_dicts(messages)
    assert [d["role"] for d in dicts] == ["system", "user", "assistant", "tool"]
    assert dicts[1]["content"] == f"look:\n{IMAGE_OMITTED_NOTE}"
    assert dicts[2]["tool_calls"][0]["function"] == {"name": "count", "arguments": '{"part": "screw"}'}
    assert dicts[3]["tool_call_id"] == "c1"


def test_remote_and_broken_image_urls_are_refused():
    with pytest.raises(MessageFormatError, match="not a data URL"):
        data_url_to_image("https://example.com/cat.png")
    with pytest.raises(MessageFormatError, match="invalid base64"):
        data_url_to_image("data:image/png;base64,@@@")
    with pytest.raises(MessageFormatError, match="readable image"):
        data_url_to_image("data:image/png;base64,aGVsbG8=")


# -- extract_code -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Here you go:\n```python\ncount = len(parts)\nprint(count)\n```\nDone.", "count = len(parts)\nprint(count)\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```\ndef f(a):\n    return a + 1\n```", "def f(a):\n    return a + 1\n"),
        ("```python\nresult = check(\n", "result = check(\n"),  # cut off by the token limit
        ("import numpy as np\nn = np.sum(mask)", "import numpy as np\nn = np.sum(mask)\n"),
        ("```text\nnot code\n```\n```python\ny = 2\n```", "y = 2\n"),
        # an instruction copied into a comment does not close the block; a fence ending a line does
        ("```python\ndef f():\n    # answer in one ```python block\n    return 1\n```",
         "def f():\n    # answer in one ```python block\n    return 1\n"),
        ("```python\nz = 3```\nDone.", "z = 3\n"),
    ],
)
def test_extract_code_finds_python(text, expected):
    assert extract_code(text) == expected


@pytest.mark.parametrize(
    "text",
    ["The query image looks normal to me.", "OK", "", None, "42", "```\nThe box has 3 screws.\n```",
     "I cannot write code for this, sorry!"],
)
def test_extract_code_returns_none_for_prose(text):
    assert extract_code(text) is None


# -- llama.cpp on real GGUF files ----------------------------------------------------------

@pytest.fixture(scope="module")
def smol():
    _installed("smollm2-135m")
    return make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=16, n_ctx=1024))


@pytest.mark.slow
def test_llamacpp_answers_deterministically_and_is_cached(smol):
    assert make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=16, n_ctx=1024)) is smol
    url = image_to_data_url(Image.new("RGB", (16, 16)))
    # A text-only model gets image blocks replaced by a note rather than failing.
    question = [SystemMessage("You are a helpful assistant."),
                HumanMessage(content=[{"type": "text", "text": "Name one colour."},
                                      {"type": "image_url", "image_url": {"url": url}}])]
    smol.llama.reset()
    first = smol.invoke(question)
    assert isinstance(first.content, str) and first.content.strip()
    assert first.usage_metadata["output_tokens"] > 0 and first.usage_metadata["input_tokens"] > 10
    # The same prompt from the same (cold) context gives the same answer. A warm context is
    # not bitwise-equal: llama.cpp reuses the cached prompt prefix and evaluates only the last
    # token, whose logits then come from a 1-row instead of an n-row matrix product, and on
    # some CPUs that changes a near-tie between two greedy tokens.
    smol.llama.reset()
    assert smol.invoke(question).content == first.content


@pytest.mark.slow
def test_llamacpp_honours_stop(smol):
    reply = smol.invoke([HumanMessage("Count from 1 to 10, separated by commas.")], stop=["4"])
    assert "3" in reply.content and "4" not in reply.content, reply.content
    # "stop" (not "length"): the stop string ended generation before the token budget did.
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] < 16


def test_prompt_lookup_guesses_what_followed_the_latest_match():
    import numpy as np
    from agent.llm.lookup import find_draft

    # the last 3 tokens (7, 8, 9) occurred twice: the latest occurrence is followed by 4, 5
    seq = np.array([7, 8, 9, 1, 2, 3, 7, 8, 9, 4, 5, 0, 7, 8, 9])
    assert find_draft(seq, 6) == [4, 5, 0, 7, 8, 9]
    assert find_draft(seq, 2) == [4, 5]
    # n-grams shorter than MIN_NGRAM (3) never guess: 1, 2 occurred, but only as a pair
    assert find_draft(np.array([1, 2, 5, 6, 1, 2]), 4) == []
    assert find_draft(np.array([1, 2, 3]), 4) == []


@pytest.mark.slow
def test_prompt_lookup_without_guesses_is_plain_greedy_decoding(monkeypatch):
    """The lookup loop's own prompt reading, prefix reuse, stop strings and token limit: with no
    guesses it must write exactly what llama.cpp's own greedy decoding writes."""
    from agent.llm import lookup

    _installed("smollm2-135m")
    plain = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=40, n_ctx=1024, prompt_lookup=0,
                                      prompt_states=False))
    own = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=40, n_ctx=1024, prompt_states=False))
    monkeypatch.setattr(lookup, "find_draft", lambda *args, **kwargs: [])
    passes = []
    real_stream = lookup.LookupLlama._stream

    def counted(self, *args, **kwargs):
        yield from real_stream(self, *args, **kwargs)
        passes.append(self.stats["passes"])

    monkeypatch.setattr(lookup.LookupLlama, "_stream", counted)
    for question, stop in (("Name three colours.", None), ("Count from 1 to 10, separated by commas.", ["6"]),
                           ("Write a long story about a fox.", None)):
        for chat in (plain, own):  # each answer after the same cached prompt prefix
            chat.llama.reset()
            chat.invoke(question, stop=stop)
        expected = plain.invoke(question, stop=stop)
        got = own.invoke(question, stop=stop)
        assert got.content == expected.content, question
        assert got.response_metadata["finish_reason"] == expected.response_metadata["finish_reason"]
    assert len(passes) == 6 and all(p > 1 for p in passes)  # the loop, not llama.cpp's, answered


@pytest.mark.slow
def test_prompt_lookup_confirms_copied_tokens_in_fewer_passes(monkeypatch):
    from agent.llm import lookup

    _installed("smollm2-135m")
    made = []
    real_init = lookup.LookupLlama.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(lookup.LookupLlama, "__init__", spy)
    line = "ok = lc.within_references(observed, references, lambda s: max(lc.lengths(s, 'p1'), default=0))"
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=120, n_ctx=1024, prompt_states=False))
    reply = chat.invoke(f"Copy this Python line exactly, three times, one per line:\n{line}")
    assert line in reply.content
    stats = made[-1].stats
    # every pass kept one token or more; copying kept several per pass
    assert stats["tokens"] >= 2 * (stats["passes"] - 1), stats
    # sampling (temperature > 0) is never guessed: it goes to llama.cpp, after the wrapper read
    # its prompt (where the call's deadline is checked)
    made.clear()
    make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=8, n_ctx=1024, temperature=0.7,
                              prompt_states=False)).invoke("Name a colour.")
    assert made == [] or made[-1].stats["tokens"] == 0

def test_repetition_cut_collapses_a_loop_and_leaves_code_alone():
    from agent.llm.robust import repetition_cut

    loop = "def f(x):\n    # same\n    # same\n    # same\n"
    assert repetition_cut(loop, 3) is None  # two repeats after the first: not yet a loop
    looped = loop + "    # same\n"
    cut = repetition_cut(looped, 3)
    assert looped[:cut] == "def f(x):\n    # same\n"
    assert repetition_cut(looped + "    # sa", 3) == cut  # an unfinished line does not count
    # code that repeats lines, but not in a row, or blank lines, is not a loop
    code = "if a:\n    return 1\nelse:\n    return 1\n\n\n\n\n"
    assert repetition_cut(code, 3) is None
    assert repetition_cut(looped, 0) is None


@pytest.mark.slow
def test_llamacpp_stops_a_repetition_loop():
    _installed("smollm2-135m")
    prompt = [HumanMessage("# same\n# same\n# same\n# same\nContinue this text exactly:\n# same\n# same\n")]
    free = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=120, n_ctx=1024, max_repeated_lines=0))
    looping = free.invoke(prompt)
    assert looping.content.count("# same") > 10 and looping.response_metadata["finish_reason"] == "length"
    stopped = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=120, n_ctx=1024)).invoke(prompt)
    assert stopped.response_metadata["finish_reason"] == "repetition"
    assert stopped.content.strip() == "# same"  # the loop collapsed to one line
    assert stopped.usage_metadata["output_tokens"] < 10 < looping.usage_metadata["output_tokens"]


@pytest.mark.slow
def test_llamacpp_timeout_stops_generation():
    _installed("smollm2-135m")
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=2000, n_ctx=1024, timeout_s=0.2))
    with pytest.raises(LLMTimeoutError, match=r"did not finish within 0.2 s"):
        chat.invoke([HumanMessage("Write a very long story about a screw factory.")])
    # a caller's deadline for one call (the rest of a generation budget) overrides the model's own
    roomy = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=2000, n_ctx=1024, timeout_s=600))
    with pytest.raises(LLMTimeoutError, match=r"did not finish within 0.3 s"):
        roomy.invoke([HumanMessage("Write a very long story about a screw factory.")],
                     **timeout_option(roomy, 0.3))


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_llamacpp_deadline_holds_while_the_prompt_is_read(monkeypatch, temperature):
    """A call whose deadline passes before its prompt is read stops before reading it, greedy
    (the lookup loop) or sampled (llama.cpp's own loop): no chunk of the prompt is decoded.
    The model answers the next call as if nothing had happened."""
    from agent.llm import lookup

    _installed("smollm2-135m")
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=12, n_ctx=1024, temperature=temperature,
                                     prompt_states=False))
    question = [HumanMessage("List the parts of a splicing connector. " * 40)]
    expected = chat.invoke(question).content
    chat.llama.reset()
    decoded = []
    real_decode = lookup.LookupLlama._decode

    def spy(self, llama, tokens, want_all):
        decoded.append(len(tokens))
        return real_decode(self, llama, tokens, want_all)

    monkeypatch.setattr(lookup.LookupLlama, "_decode", spy)
    sampled = []
    real_completion = type(chat.llama).create_completion
    monkeypatch.setattr(type(chat.llama), "create_completion",
                        lambda self, *a, **k: sampled.append(1) or real_completion(self, *a, **k))
    with pytest.raises(LLMTimeoutError, match=r"did not finish within"):
        chat.invoke(question, **timeout_option(chat, 1e-6))
    assert decoded == [] and sampled == []
    # with time to spare the prompt is read in chunks the deadline is checked between
    assert chat.invoke(question, **timeout_option(chat, 600)).content == expected
    assert decoded and max(decoded) <= lookup.DEADLINE_CHUNK


def test_timeout_option_names_each_backends_own_per_call_limit(tmp_path):
    from langchain_core.language_models import FakeListChatModel
    from langchain_openai import ChatOpenAI

    from agent.llm.llamacpp import LlamaCppChatModel
    from agent.llm.vlm import TransformersVLMChatModel

    assert timeout_option(LlamaCppChatModel(model_path=str(tmp_path / "m.gguf")), 5.0) == {"timeout_s": 5.0}
    assert timeout_option(TransformersVLMChatModel(model_name="tiny"), 5.0) == {"timeout_s": 5.0}
    server = ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key="x")
    assert timeout_option(server, 5.0) == {"timeout": 5.0}
    assert timeout_option(server.bind(stop=["x"]), 5.0) == {"timeout": 5.0}  # a bound runnable
    assert timeout_option(FakeListChatModel(responses=["a"]), 5.0) == {}  # none: only the caller waits less


@pytest.mark.slow
def test_llamacpp_tool_calling():
    _installed("qwen2.5-coder-0.5b")

    @tool
    def count_parts(part: str, expected: int) -> str:
        """Count the parts of one kind in the image and compare with the expected count."""
        return ""

    chat = make_chat_model(LLMConfig(model="qwen2.5-coder-0.5b", max_tokens=64, n_ctx=2048))
    bound = chat.bind_tools([count_parts], tool_choice="count_parts")
    reply = bound.invoke([HumanMessage("Check the screws: a normal bag holds 2 screws.")])
    assert len(reply.tool_calls) == 1
    call = reply.tool_calls[0]
    assert call["name"] == "count_parts" and set(call["args"]) == {"part", "expected"}
    assert isinstance(call["args"]["expected"], int)
    with pytest.raises(LLMError, match="not among the bound tools"):
        chat.bind_tools([count_parts], tool_choice="measure")


@pytest.mark.slow
def test_invoke_with_timeout_turns_failures_into_llm_errors(smol):
    text = invoke_with_timeout(smol, [HumanMessage("Say yes.")], timeout_s=60)
    assert isinstance(text, str) and text
    with pytest.raises(LLMError, match="timeout_s must be positive"):
        invoke_with_timeout(smol, [HumanMessage("hi")], timeout_s=0)
    # A server that is not there: the agent gets an LLMError naming the model, not a crash.
    down = make_chat_model(LLMConfig(backend="openai", model="absent", base_url="http://127.0.0.1:9/v1", timeout_s=5))
    with pytest.raises(LLMError, match=r"model absent failed: .*Connection"):
        invoke_with_timeout(down, [HumanMessage("hi")], timeout_s=30)


@pytest.mark.slow
def test_invoke_with_timeout_gives_up_on_a_slow_model():
    _installed("smollm2-135m")
    # The caller's limit (0.05 s) is passed to llama.cpp too, so the model is freed at once
    # rather than at its own limit (2 s); whichever of the two notices first reports it.
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=2000, n_ctx=1024, timeout_s=2))
    with pytest.raises(LLMTimeoutError, match="within 0.05 s"):
        invoke_with_timeout(chat, [HumanMessage("Write a very long story about bolts.")], timeout_s=0.05)


@pytest.mark.slow
def test_llamacpp_prompt_longer_than_context_is_a_clear_error():
    _installed("smollm2-135m")
    chat = make_chat_model(LLMConfig(model="smollm2-135m", max_tokens=8, n_ctx=256))
    with pytest.raises(LLMError, match=r"cannot take this prompt: .*n_ctx=256"):
        chat.invoke([HumanMessage("screw nut washer " * 200)])


@pytest.mark.slow
def test_llamacpp_tool_loop_with_automatic_choice_and_tool_results():
    _installed("qwen2.5-coder-0.5b")

    @tool
    def count_parts(part: str) -> int:
        """Count the parts of one kind in the image."""
        return 3

    chat = make_chat_model(LLMConfig(model="qwen2.5-coder-0.5b", max_tokens=48, n_ctx=2048))
    bound = chat.bind_tools([count_parts])  # no tool_choice: the model decides
    history = [HumanMessage("Use count_parts to count the screws, then say how many there are.")]
    first = bound.invoke(history)
    assert isinstance(first, AIMessage)
    # Whatever it chose, a tool result fed back must be rendered and answered, not dropped.
    call = {"name": "count_parts", "args": {"part": "screw"}, "id": "call_1"}
    history += [AIMessage(content="", tool_calls=[call]), ToolMessage(content="3", tool_call_id="call_1")]
    second = bound.invoke(history)
    assert second.tool_calls or (isinstance(second.content, str) and second.content.strip())
    # the agentic loop's last request goes to the unbound model, with the tool history: there the
    # model answers in words (with tools bound, the grammar only lets it name a tool or stop)
    from agent.agentic import FINAL_ANSWER_REQUEST

    final = chat.invoke(history + [HumanMessage(FINAL_ANSWER_REQUEST)])
    assert not final.tool_calls and isinstance(final.content, str) and final.content.strip()


@pytest.mark.slow
def test_llamacpp_timeout_also_bounds_tool_calling():
    # The function-calling handler does not stream; a stopping criterion ends its decoding.
    _installed("qwen2.5-coder-0.5b")

    @tool
    def describe(text: str) -> str:
        """Describe the parts of the product in great detail."""
        return ""

    chat = make_chat_model(LLMConfig(model="qwen2.5-coder-0.5b", max_tokens=2000, n_ctx=2048, timeout_s=0.3))
    bound = chat.bind_tools([describe], tool_choice="describe")
    with pytest.raises(LLMTimeoutError, match=r"did not finish within 0.3 s"):
        bound.invoke([HumanMessage("Describe a screw bag with every screw, nut and washer, at length.")])


def test_default_threads_leave_cores_that_other_work_holds():
    from agent.llm.llamacpp import MAX_DEFAULT_THREADS, default_threads

    assert default_threads(cpus=2, others=0.0, host_cpus=2) == 2      # only this process is busy
    assert default_threads(cpus=2, others=1.0, host_cpus=2) == 1      # one other job on a core
    assert default_threads(cpus=2, others=8.0, host_cpus=2) == 1      # never below one
    assert default_threads(cpus=4, others=0.0, host_cpus=64) == 4     # a container's share of a big host
    assert default_threads(cpus=64, others=0.0, host_cpus=64) == MAX_DEFAULT_THREADS


def test_this_process_own_work_is_not_counted_as_other_work(monkeypatch):
    """The agent fits its detectors on every core just before it loads the model: that work is
    its own, and must not cost the model a thread (the load average counted it)."""
    import os

    from agent.llm import llamacpp

    real = llamacpp.busy_elsewhere(0.05)
    if real is None:
        pytest.skip("/proc is not available here")
    assert real >= 0.0
    hz = os.sysconf("SC_CLK_TCK")
    # over the window, the machine's CPUs were busy for two cores' worth of ticks: all of it this
    # process's own (its detectors), then half of it another process's
    for own_share, elsewhere, threads in ((1.0, 0.0, 2), (0.5, 1.0, 1)):
        ticks = iter([(0, 0, 100.0), (2 * hz, int(2 * hz * own_share), 101.0)])
        monkeypatch.setattr(llamacpp, "_cpu_ticks", lambda: next(ticks))
        measured = llamacpp.busy_elsewhere(0.0)
        assert measured == pytest.approx(elsewhere, abs=0.01)
        assert llamacpp.default_threads(cpus=2, others=measured, host_cpus=2) == threads


def test_default_threads_fall_back_to_the_load_average_without_proc(monkeypatch):
    from agent.llm import llamacpp

    monkeypatch.setattr(llamacpp, "busy_elsewhere", lambda window_s=0.3: None)
    monkeypatch.setattr(llamacpp, "_load_average", lambda: 3.0)  # this process and two others
    assert llamacpp.default_threads(cpus=2, host_cpus=2) == 1
    monkeypatch.setattr(llamacpp, "_load_average", lambda: 1.0)
    assert llamacpp.default_threads(cpus=2, host_cpus=2) == 2


def test_amx_builds_are_recognised_and_the_installed_one_has_no_amx():
    """llama.cpp's AMX kernels segfault on Q4_K weights on some CPUs (they did on this project's
    machines); `make install` builds it without them, and a build that has them is warned about."""
    from agent.llm.llamacpp import uses_amx

    assert uses_amx(b"CPU : AVX512 = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 |")
    assert not uses_amx("CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |")
    pytest.importorskip("llama_cpp")
    assert not uses_amx(), "llama-cpp-python was built with AMX kernels: run `make install`"


# -- prompt states: a recurring prompt prefix is read once, across processes ----------------

def _logits_after(llama, tokens, held):
    import numpy as np

    llama.eval(tokens[held:])
    return np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),)).copy()


@pytest.mark.slow
def test_prompt_states_save_a_shared_prefix_and_a_new_process_loads_it(smol, tmp_path):
    import numpy as np

    from agent.llm.prompt_states import PromptStateStore

    llama = smol.llama
    shared = llama.tokenize(("Helper reference: count(scene, part) returns how many components a part has. " * 12)
                            .encode(), add_bos=False)
    first, second, third = (shared + llama.tokenize(q.encode(), add_bos=False)
                            for q in (" Are there two screws?", " Is the cable red?", " Is a nut missing?"))
    llama.reset()
    store = PromptStateStore(tmp_path, "model", min_tokens=64)
    assert store.prepare(llama, first) == 0 and store.saved == 0  # nothing seen before: read in full
    _logits_after(llama, first, 0)
    held = store.prepare(llama, second)  # the second prompt shares the helper reference: saved
    assert store.saved == 1 and held >= len(shared) - 1
    assert len(list(tmp_path.glob("model-state-*.state"))) == 1

    # a new process: an empty context, a new store on the same directory
    llama.reset()
    later = PromptStateStore(tmp_path, "model", min_tokens=64)
    held = later.prepare(llama, third)
    assert held == later.loaded and held >= len(shared) - 1 and later.saved == 0
    assert llama.input_ids[:held].tolist() == third[:held]
    warm = _logits_after(llama, third, held)
    llama.reset()
    cold = _logits_after(llama, third, 0)
    # the loaded prefix gives the model the same next-token distribution as reading it
    assert warm.argmax() == cold.argmax() and np.corrcoef(warm, cold)[0, 1] > 0.999
    llama.reset()


@pytest.mark.slow
def test_a_broken_prompt_state_is_removed_and_the_prompt_read_in_full(smol, tmp_path, caplog):
    import numpy as np

    from agent.llm.prompt_states import PromptStateStore

    llama = smol.llama
    tokens = llama.tokenize(("A long and repeated helper reference. " * 20).encode(), add_bos=False)
    np.save(tmp_path / "model-state-broken.npy", np.asarray(tokens[:100], np.int32))
    (tmp_path / "model-state-broken.state").write_bytes(b"not a llama.cpp state")
    llama.reset()
    store = PromptStateStore(tmp_path, "model", min_tokens=64)
    with caplog.at_level("WARNING"):
        assert store.prepare(llama, tokens) == 0
    assert "reading the prompt in full" in caplog.text and llama.n_tokens == 0
    assert not list(tmp_path.glob("model-state-broken*"))
    reply = smol.invoke([HumanMessage("Name one colour.")])  # the model still answers
    assert reply.content.strip()


def test_prompt_state_eviction_keeps_the_prefix_that_other_states_continue(tmp_path):
    """The helper reference that every request shares is loaded less often than each product's
    longer state (only the longest prefix is loaded), yet it is the one worth keeping."""
    import os

    import numpy as np

    from agent.llm.prompt_states import PromptStateStore

    header = list(range(300))
    states = {"header": header, "box": header + [1000] * 50, "bottle": header + [2000] * 50,
              "bag": header + [3000] * 50, "other": [7] * 400}
    for age, (name, tokens) in enumerate(states.items()):  # "header" oldest, "other" newest
        np.save(tmp_path / f"model-state-{name}.npy", np.asarray(tokens, np.int32))
        (tmp_path / f"model-state-{name}.state").write_bytes(b"kv")
        for suffix in (".npy", ".state"):
            os.utime(tmp_path / f"model-state-{name}{suffix}", (1_000_000 + age, 1_000_000 + age))
    PromptStateStore(tmp_path, "model", max_states=3)._prune("state", 3)
    kept = sorted(p.stem.split("-")[-1] for p in tmp_path.glob("model-state-*.npy"))
    assert kept == ["bag", "header", "other"]  # the least recently used leaves went first
    assert sorted(p.stem.split("-")[-1] for p in tmp_path.glob("model-state-*.state")) == kept


def test_prompt_states_are_on_by_default_and_can_be_turned_off(tmp_path, monkeypatch):
    from agent.llm.config import _prompt_state_dir

    monkeypatch.setenv("LOGISCAN_CACHE", str(tmp_path))
    assert _prompt_state_dir(LLMConfig()) == str(tmp_path / "prompt-states")
    assert _prompt_state_dir(LLMConfig(prompt_state_dir=tmp_path / "states")) == str(tmp_path / "states")
    assert _prompt_state_dir(LLMConfig(prompt_states=False)) is None

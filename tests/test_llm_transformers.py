"""The transformers VLM backend, end to end on a tiny random-weight Qwen2-VL built from a config.

The real AutoProcessor + chat template + AutoModelForImageTextToText + generate path runs;
only the weights are random (no VLM weights are reachable from this machine).
"""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image

from agent.llm import LLMConfig, LLMError, MessageFormatError, image_to_data_url, make_chat_model, model_id


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# The Qwen2-VL chat-template convention: each image becomes vision_start, image_pad, vision_end;
# the processor then expands image_pad to one token per merged patch.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_processor(corpus, vocab_size=300):
    """A Qwen2-VL processor with a byte-level BPE tokenizer trained on ``corpus``, and a small image processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def tiny_qwen2_vl(tokenizer, hidden=32, layers=1, max_positions=2048):
    """A random-weight Qwen2-VL for ``tokenizer``, built from a config."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    quarter = hidden // 16  # mrope sections sum to half the head dimension (hidden / 2 heads)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
            rope_parameters={"rope_type": "default", "mrope_section": [2 * quarter, quarter, quarter],
                             "rope_theta": 10000.0},
            eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def build_tiny_qwen2_vl(directory) -> None:
    """Save a ~100k-parameter Qwen2-VL with a BPE tokenizer, a chat template and a small image processor."""
    corpus = ["The query image shows two screws and one nut.", "reference 1 reference 2 query",
              "Answer with a JSON object per rule: rule_id, passed, observed, expected, reason.",
              "system user assistant verdict normal anomalous"]
    processor = tiny_processor(corpus)
    tiny_qwen2_vl(processor.tokenizer).save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-qwen2-vl")
    build_tiny_qwen2_vl(directory)
    return directory


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    return make_chat_model(LLMConfig(backend="transformers", model=str(tiny_vlm_dir), max_tokens=6))


def _images():
    return [Image.new("RGB", (64, 48), (200, 30, 30)), Image.new("RGB", (40, 80), (30, 30, 200))]


@pytest.mark.slow
def test_vlm_reads_images_through_the_chat_template(vlm, tiny_vlm_dir):
    red, blue = _images()
    messages = [
        SystemMessage("You inspect products."),
        HumanMessage(content=[
            {"type": "text", "text": "reference 1:"},
            {"type": "image_url", "image_url": {"url": image_to_data_url(red)}},
            {"type": "text", "text": "query:"},
            {"type": "image", "image": blue},  # in-process PIL block
        ]),
    ]
    reply = vlm.invoke(messages)
    assert isinstance(reply.content, str)
    assert reply.response_metadata["images"] == 2
    # Every merged 2x2 patch of each image fills one prompt position: pixels reached the model.
    processor, _ = vlm.loaded()
    grids = processor.image_processor(images=[red, blue], return_tensors="pt")["image_grid_thw"]
    assert reply.response_metadata["image_tokens"] == int(grids.prod(-1).sum()) // 4 > 2
    assert 0 < reply.usage_metadata["output_tokens"] <= 6
    again = vlm.invoke(messages)
    assert again.content == reply.content  # greedy decoding is deterministic
    assert model_id(LLMConfig(backend="transformers", model=str(tiny_vlm_dir))).startswith(
        f"transformers:{tiny_vlm_dir.name}@")


@pytest.mark.slow
def test_vlm_text_only_prompt_and_cached_instance(vlm, tiny_vlm_dir):
    assert make_chat_model(LLMConfig(backend="transformers", model=str(tiny_vlm_dir), max_tokens=6)) is vlm
    reply = vlm.invoke([HumanMessage("Is the query normal?")])
    assert reply.response_metadata["images"] == 0 and reply.response_metadata["image_tokens"] == 0


def test_two_callers_during_a_slow_load_share_one_model(tiny_vlm_dir, monkeypatch):
    import threading
    import time

    import transformers

    from agent.llm import vlm as vlm_module

    real = transformers.AutoModelForImageTextToText.from_pretrained
    loads = []

    def slow_load(*args, **kwargs):
        loads.append(1)
        time.sleep(0.5)  # a 7B model on a GPU takes minutes; the second caller arrives meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", slow_load)
    key = (str(tiny_vlm_dir), "none", "float32")  # not the fixture's key: a fresh cache entry
    got = []
    threads = [threading.Thread(target=lambda: got.append(vlm_module.load_vlm(*key))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and got[0][1] is got[1][1]


def test_vlm_refuses_remote_image_urls(vlm):
    with pytest.raises(MessageFormatError, match="not a data URL"):
        vlm.invoke([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])])


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="could not load transformers image-text-to-text model"):
        make_chat_model(LLMConfig(backend="transformers", model=str(tmp_path))).invoke([HumanMessage("hi")])


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "expected_images"), [("images", 3), ("grid", 1)])
def test_inspection_prompt_reaches_the_vlm(vlm, mode, expected_images):
    from prompts import NormalityRules
    from prompts.multimodal import build_inspection_messages, parse_inspection_answer

    rules = NormalityRules.from_strings(["Exactly two screws.", "One nut."], category="screw_bag")
    red, blue = _images()
    messages = build_inspection_messages(rules, red, [blue, blue], mode=mode)
    reply = vlm.invoke(messages)
    assert reply.response_metadata["images"] == expected_images
    assert reply.response_metadata["image_tokens"] > 0
    assert parse_inspection_answer(reply.content) == []  # random weights answer noise, never a crash


# ---------------------------------------------------------------- tool calling through the prompt
# A tiny Qwen2-VL trained here (a few hundred Adam steps, about 15 s) to answer one inspection the
# way a tool-calling model does: first a <tool_call>, then, once the tool's result is in the
# conversation, the per-rule JSON. Its weights are learned, not faked, so the whole path runs:
# tools rendered into the chat template, generate, the call read back, the tool run by the
# agentic loop, its result rendered as a turn, and the final answer parsed into findings.

def _count_parts_tool():
    from langchain_core.tools import tool

    @tool
    def count_parts(part: str) -> dict:
        """Count the parts of one kind in the query image."""
        return {"part": part, "count": 3}

    return count_parts


def _inspection_turns():
    """(messages, tools, target) of both turns, as run_agentic will send them."""
    import json

    from langchain_core.messages import AIMessage, ToolMessage
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from agent.agentic import agentic_instructions

    count_parts = _count_parts_tool()
    base = [SystemMessage("You inspect industrial images against normality rules."),
            HumanMessage("Rule R1: exactly two screws. Answer with a JSON list: rule_id, passed, observed, "
                         "expected, reason."),
            HumanMessage(agentic_instructions([count_parts.name]))]
    call = '<tool_call>\n{"name": "count_parts", "arguments": {"part": "screw"}}\n</tool_call>'
    answer = '[{"rule_id": "R1", "passed": false, "observed": 3, "expected": 2, "reason": "three screws"}]'
    after = base + [AIMessage(content="", tool_calls=[{"name": "count_parts", "args": {"part": "screw"}, "id": "c1"}]),
                    ToolMessage(content=json.dumps(count_parts.invoke({"part": "screw"})), tool_call_id="c1")]
    tools = [convert_to_openai_tool(count_parts)]
    return [(base[:2], base, tools, call), (base[:2], after, tools, answer)]


def build_tiny_tool_caller(directory) -> None:
    import torch

    from agent.llm.vlm import render_prompt

    turns = _inspection_turns()
    draft = tiny_processor(["x"])  # renders the prompts; the real vocabulary is learned from them
    texts = [(render_prompt(draft, messages, tools)[0], target) for _, messages, tools, target in turns]
    processor = tiny_processor([p + t for p, t in texts], vocab_size=600)
    tokenizer = processor.tokenizer
    model = tiny_qwen2_vl(tokenizer, hidden=64, layers=2, max_positions=4096)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    batches = []
    for prompt, target in texts:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = torch.tensor([prompt_ids + tokenizer(target)["input_ids"] + [end]])
        labels = ids.clone()
        labels[:, :len(prompt_ids)] = -100  # learn the answers only
        batches.append((ids, labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(600):
        loss = sum(model(input_ids=ids, labels=labels).loss for ids, labels in batches)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:
            break
    model.eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


@pytest.fixture(scope="module")
def tool_caller(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-tool-caller")
    build_tiny_tool_caller(directory)
    return make_chat_model(LLMConfig(backend="transformers", model=str(directory), max_tokens=64))


@pytest.mark.slow
def test_a_vlm_drives_the_agentic_loop_through_tool_calls(tool_caller):
    from agent.agentic import run_agentic
    from prompts import NormalityRules

    rules = NormalityRules.model_validate({"category": "screw_bag", "rules": [{"id": "R1", "text": "exactly two screws"}]})
    messages = _inspection_turns()[0][0]
    findings, trace, note = run_agentic(tool_caller, messages, [_count_parts_tool()], rules, timeout_s=120)
    assert note == ""
    assert [(t.tool, t.arguments) for t in trace] == [("count_parts", {"part": "screw"})]
    assert '"count": 3' in trace[0].output
    assert [(f.rule_id, f.passed, f.observed, f.expected) for f in findings] == [("R1", False, "3", "2")]


@pytest.mark.slow
def test_bound_tools_reach_the_prompt_and_history_renders_as_text(tool_caller):
    from agent.llm.vlm import render_prompt

    processor, _ = tool_caller.loaded()
    _, after, tools, _ = _inspection_turns()[1]
    prompt, _ = render_prompt(processor, after, tools, tool_choice="count_parts")
    assert '"name": "count_parts"' in prompt and "<tools>" in prompt
    assert "must call the function 'count_parts'" in prompt
    # the earlier call and its result, as the template's plain turns (this template has no tool role)
    assert '<tool_call>\n{"name": "count_parts", "arguments": {"part": "screw"}}\n</tool_call>' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"part": "screw", "count": 3}\n</tool_response>' in prompt
    # without tools bound (the loop's final request), the history still renders, and no tools are offered
    plain, _ = render_prompt(processor, after)
    assert "<tools>" not in plain and "<tool_response>" in plain
    reply = tool_caller.invoke(after)  # no tools bound: whatever it writes is content
    assert reply.tool_calls == [] and "R1" in reply.content


def test_bind_tools_refuses_an_unknown_tool_choice(vlm):
    with pytest.raises(LLMError, match="not among the bound tools"):
        vlm.bind_tools([_count_parts_tool()], tool_choice="measure")
    with pytest.raises(LLMError, match="at least one tool"):
        vlm.bind_tools([])


@pytest.mark.slow
def test_sampling_options_per_call(vlm):
    """The agent samples its repair rounds (temperature, seed per call), as with llama.cpp."""
    messages = [HumanMessage("Is the query normal?")]
    sampled = {vlm.invoke(messages, temperature=1.5, seed=s).content for s in range(6)}
    assert len(sampled) > 1  # sampling, not greedy
    assert vlm.invoke(messages, temperature=1.5, seed=3).content == vlm.invoke(messages, temperature=1.5, seed=3).content
    with pytest.raises(LLMError, match="unsupported generation options"):
        vlm.invoke(messages, top_k=3)

"""The transformers VLM backend, end to end on a tiny random-weight Qwen2-VL built from a config.

The real AutoProcessor + chat template + AutoModelForImageTextToText + generate path runs;
only the weights are random (no VLM weights are reachable from this machine).
"""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from PIL import Image

from agent.llm import LLMConfig, LLMError, MessageFormatError, image_to_data_url, make_chat_model, model_id


def build_tiny_qwen2_vl(directory) -> None:
    """Save a ~100k-parameter Qwen2-VL with a BPE tokenizer, a chat template and a small image processor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["The query image shows two screws and one nut.", "reference 1 reference 2 query",
              "Answer with a JSON object per rule: rule_id, passed, observed, expected, reason.",
              "system user assistant verdict normal anomalous"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    # The Qwen2-VL chat-template convention: each image becomes vision_start, image_pad, vision_end;
    # the processor then expands image_pad to one token per merged patch.
    chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=chat_template)
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0},
            eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(directory)
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

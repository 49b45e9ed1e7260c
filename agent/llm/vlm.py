"""A LangChain chat model around any transformers image-text-to-text model.

``AutoProcessor`` + ``AutoModelForImageTextToText`` load a hub id or a local directory
(Qwen2.5-VL, SmolVLM/Idefics3, InternVL, LLaVA, ...). Weights are placed by accelerate
(``device_map="auto"``), in bfloat16 on a GPU and float32 on CPU. Images travel as images:
LangChain image blocks become ``{"type": "image"}`` entries of the processor's chat
template, and the decoded PIL images go to the processor beside the text.

Tool calling (``bind_tools``) goes through the prompt (``toolcalls``): the tools are described
in the system turn, and ``<tool_call>`` blocks are read back from the generated text, so any
model whose training covered that format (Qwen2.5/3-VL, Hermes-style fine-tunes) can drive the
agentic loop.
"""

from __future__ import annotations

import threading
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
from .messages import to_vlm_conversation
from .toolcalls import as_text_conversation, forced_tool, openai_tools, parse_tool_calls, tool_names, with_tools

_LOAD_LOCK = threading.Lock()
_GENERATE_LOCKS: dict[int, threading.Lock] = {}


def resolve_dtype(dtype: str, on_gpu: bool) -> Any:
    import torch

    if not on_gpu:
        # bf16 matmuls on CPU are slow and lossy for tiny models; float32 is the safe CPU choice.
        return torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        raise LLMError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'") from None
    if not isinstance(value, torch.dtype):
        raise LLMError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
    return value


def load_vlm(model: str, device_map: str, dtype: str) -> tuple[Any, Any]:
    """Load (processor, model) once per process for a given id/dir, placement and dtype.

    The lock covers the cache lookup too: a second caller that arrives while the first is still
    loading (say, after the first call timed out during a slow load) waits and gets the same
    model instead of loading a second copy onto the GPU."""
    with _LOAD_LOCK:
        return _load_vlm(model, device_map, dtype)


@lru_cache(maxsize=2)
def _load_vlm(model: str, device_map: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    on_gpu = torch.cuda.is_available()
    try:
        processor = AutoProcessor.from_pretrained(model)
        kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, on_gpu)}
        if device_map and device_map != "none":
            kwargs["device_map"] = device_map
        vlm = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise LLMError(
            f"could not load transformers image-text-to-text model {model!r}: {exc}. "
            "Pass a local directory or a hub id that is reachable from this machine."
        ) from exc
    vlm.eval()
    return processor, vlm


def render_prompt(processor: Any, messages: list[BaseMessage], tools: list[dict] | None = None,
                  tool_choice: Any = None) -> tuple[str, list]:
    """The chat-template text a model reads for ``messages`` (with ``tools`` offered), and its images."""
    messages = with_tools(messages, tools, tool_choice) if tools else as_text_conversation(messages)
    conversation, images = to_vlm_conversation(messages)
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False), images


class TransformersVLMChatModel(BaseChatModel):
    """Chat model on a transformers VLM; images in the messages are given to the model as pixels."""

    model_name: str = Field(description="hub id or local directory")
    device_map: str = "auto"
    dtype: str = "bfloat16"
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int = 0
    timeout_s: float | None = None

    @property
    def _llm_type(self) -> str:
        return "logiscan-transformers-vlm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "dtype": self.dtype,
                "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed}

    def loaded(self) -> tuple[Any, Any]:
        return load_vlm(self.model_name, self.device_map, self.dtype)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=openai_tools(tools, tool_choice), tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        import torch

        timeout_s = kwargs.pop("timeout_s", self.timeout_s)  # a caller's deadline, for this call only
        tools = kwargs.pop("tools", None)
        tool_choice = kwargs.pop("tool_choice", None)
        # per-call sampling, as the llama.cpp backend offers: the agent samples its repair rounds
        temperature = float(kwargs.pop("temperature", self.temperature))
        seed = int(kwargs.pop("seed", self.seed))
        if kwargs:
            raise LLMError(f"unsupported generation options for the transformers backend: {sorted(kwargs)}")
        processor, vlm = self.loaded()
        if getattr(processor, "chat_template", None) is None:
            raise LLMError(f"the processor of {self.model_name!r} has no chat template")
        prompt, images = render_prompt(processor, messages, tools, tool_choice)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
        inputs = inputs.to(vlm.device)
        if "pixel_values" in inputs and vlm.dtype != torch.float32:
            inputs["pixel_values"] = inputs["pixel_values"].to(vlm.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        image_token_id = getattr(processor, "image_token_id", None)
        # How many prompt positions carry image features: proof that pixels reached the model.
        image_tokens = int((inputs["input_ids"] == image_token_id).sum()) if image_token_id is not None else None
        generate_kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        if temperature > 0:
            generate_kwargs.update(do_sample=True, temperature=temperature)
        else:
            generate_kwargs.update(do_sample=False)
        if timeout_s is not None:
            generate_kwargs["max_time"] = timeout_s  # generate() stops itself when over budget
        if stop:
            generate_kwargs.update(stop_strings=stop, tokenizer=processor.tokenizer)
        # one generation at a time per model: generate() keeps per-call state on the model (Qwen2-VL's
        # rope deltas), and a call that timed out may still be decoding when the next one starts
        with _GENERATE_LOCKS.setdefault(id(vlm), threading.Lock()), torch.inference_mode():
            torch.manual_seed(seed)
            output = vlm.generate(**inputs, **generate_kwargs)
        new_tokens = output[0, prompt_len:]
        text = processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        finished = bool(len(new_tokens)) and int(new_tokens[-1]) in _eos_ids(vlm)
        if timeout_s is not None and not finished and len(new_tokens) < self.max_tokens and not stop:
            raise LLMTimeoutError(
                f"transformers model {self.model_name!r} did not finish within {timeout_s:g} s"
            )
        calls, invalid = [], []
        if tools and forced_tool(tool_choice, tool_names(tools)) != "none":
            text, calls, invalid = parse_tool_calls(text, tool_names(tools))
        ai = AIMessage(
            content=text.strip(), tool_calls=calls, invalid_tool_calls=invalid,
            usage_metadata={"input_tokens": int(prompt_len), "output_tokens": int(len(new_tokens)),
                            "total_tokens": int(prompt_len + len(new_tokens))},
            response_metadata={"model_name": self.model_name, "images": len(images), "image_tokens": image_tokens},
        )
        return ChatResult(generations=[ChatGeneration(message=ai)])


def _eos_ids(vlm: Any) -> set[int]:
    eos = getattr(vlm.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

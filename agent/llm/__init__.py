"""Language-model backends as LangChain chat models, chosen by :class:`LLMConfig`.

- ``llamacpp`` (default): a GGUF file on CPU; registry names come from :mod:`agent.llm.weights`.
- ``transformers``: any image-text-to-text model by hub id or local directory.
- ``openai``: any OpenAI-compatible server (vLLM, Ollama, llama.cpp server) via ``base_url``.

Names load on first use, so ``python -m agent.llm.weights`` stays light (no LangChain import).
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "LLMConfig": "agent.llm.config",
    "make_chat_model": "agent.llm.config",
    "model_id": "agent.llm.config",
    "LLMError": "agent.llm.errors",
    "LLMTimeoutError": "agent.llm.errors",
    "IMAGE_OMITTED_NOTE": "agent.llm.messages",
    "MessageFormatError": "agent.llm.messages",
    "image_to_data_url": "agent.llm.messages",
    "extract_code": "agent.llm.robust",
    "invoke_with_timeout": "agent.llm.robust",
    "invoke_message_with_timeout": "agent.llm.robust",
    "timeout_option": "agent.llm.robust",
    "DEFAULT_MODEL": "agent.llm.weights",
    "WeightsError": "agent.llm.weights",
    "model_path": "agent.llm.weights",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.llm' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value

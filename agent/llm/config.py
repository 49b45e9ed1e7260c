"""Which language model to use, and how to build it (one instance per configuration)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Literal

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from . import weights
from .errors import LLMError
from .lookup import DEFAULT_DRAFT

Backend = Literal["llamacpp", "transformers", "openai"]


class LLMConfig(BaseModel):
    """A language-model choice. ``model`` is a registry name or GGUF path (llamacpp),
    a hub id or local directory (transformers), or the served model name (openai)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend = "llamacpp"
    model: str = weights.DEFAULT_MODEL
    base_url: str | None = Field(default=None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    api_key: SecretStr | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    n_ctx: int = Field(default=4096, ge=256, le=131072)
    n_threads: int | None = Field(default=None, ge=1)
    seed: int = Field(default=0, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_repeated_lines: int = Field(
        default=3, ge=0,
        description="llama.cpp: stop decoding when a line repeats this many times in a row (0: never)")
    prompt_states: bool = Field(
        default=True,
        description="llama.cpp: save prompt prefixes that recur (the LogiCode request's helper API and "
                    "examples) so that later processes load them instead of reading them again")
    prompt_state_dir: Path | None = Field(
        default=None, description="where prompt states are kept; None: $LOGISCAN_CACHE/prompt-states or "
                                  "~/.cache/logiscan/prompt-states")
    prompt_lookup: int = Field(
        default=DEFAULT_DRAFT, ge=0, le=32,
        description="llama.cpp: greedy answers guess up to this many tokens per pass from the prompt and keep "
                    "those the model confirms (agent.llm.lookup: fewer passes over the weights; a batched "
                    "pass can tip a near-tie, as a cached prefix can); 0: off")
    device_map: str = "auto"
    dtype: str = "bfloat16"

    @field_validator("model")
    @classmethod
    def _model_given(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("model must name a registry model, a file, a directory or a hub id")
        return value

    @field_validator("base_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value


def resolve_gguf(model: str) -> tuple[Path, str]:
    """(path, display name) for a registry name or a GGUF file path."""
    if model in weights.REGISTRY:
        return weights.model_path(model), model
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists():
        if not path.is_file():
            raise LLMError(f"GGUF model file {path} does not exist")
        return path.resolve(), path.name
    raise LLMError(
        f"llamacpp model {model!r} is neither a registered model ({', '.join(sorted(weights.REGISTRY))}) "
        "nor a .gguf file"
    )


def _fingerprint(path: Path) -> str:
    """Cheap, stable content id for a model file or directory (no full-file hashing)."""
    if path.is_dir():
        config = path / "config.json"
        blob = config.read_bytes() if config.is_file() else str(sorted(p.name for p in path.iterdir())).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
    return f"{path.stat().st_size:x}"


def model_id(config: LLMConfig | None = None) -> str:
    """A stable id of the model and the generation settings that change its answers (for cache keys)."""
    config = config or LLMConfig()
    if config.backend == "llamacpp":
        if config.model in weights.REGISTRY:
            core = f"{config.model}@{weights.REGISTRY[config.model].sha256[:12]}"
        else:
            path = Path(config.model).expanduser()
            core = f"{path.name}@{_fingerprint(path)}" if path.is_file() else path.name
    elif config.backend == "transformers":
        path = Path(config.model).expanduser()
        core = f"{path.name}@{_fingerprint(path)}" if path.is_dir() else config.model
    else:
        core = f"{config.model}@{config.base_url or 'api.openai.com'}"
    settings = f"t={config.temperature:g},seed={config.seed},max={config.max_tokens}"
    if config.backend == "llamacpp" and config.max_repeated_lines:
        settings += f",rep={config.max_repeated_lines}"  # a loop cut short changes what repairs see
    return f"{config.backend}:{core}|{settings}"


_INSTANCES: dict[str, BaseChatModel] = {}
_INSTANCES_LOCK = threading.Lock()


def make_chat_model(config: LLMConfig | None = None) -> BaseChatModel:
    """Build (once per configuration and process) the LangChain chat model for ``config``.

    The default is llama.cpp on the verified Qwen2.5-Coder-1.5B-Instruct GGUF.
    """
    config = config or LLMConfig()
    key = json.dumps(config.model_dump(mode="json") | {"api_key": _secret(config)}, sort_keys=True)
    with _INSTANCES_LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = _build(config)
        return _INSTANCES[key]


def _secret(config: LLMConfig) -> str | None:
    return config.api_key.get_secret_value() if config.api_key else None


def _prompt_state_dir(config: LLMConfig) -> str | None:
    if not config.prompt_states:
        return None
    from .prompt_states import default_directory

    return str(Path(config.prompt_state_dir).expanduser() if config.prompt_state_dir else default_directory())


def _build(config: LLMConfig) -> BaseChatModel:
    if config.backend == "llamacpp":
        from .llamacpp import LlamaCppChatModel

        try:
            path, name = resolve_gguf(config.model)
        except weights.WeightsError as exc:
            raise LLMError(str(exc)) from exc
        return LlamaCppChatModel(
            model_path=str(path), model_name=name, n_ctx=config.n_ctx, n_threads=config.n_threads,
            seed=config.seed, temperature=config.temperature, max_tokens=config.max_tokens,
            timeout_s=config.timeout_s, max_repeated_lines=config.max_repeated_lines,
            prompt_state_dir=_prompt_state_dir(config), prompt_lookup=config.prompt_lookup,
        )
    if config.backend == "transformers":
        from .vlm import TransformersVLMChatModel

        return TransformersVLMChatModel(
            model_name=config.model, device_map=config.device_map, dtype=config.dtype,
            temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed,
            timeout_s=config.timeout_s,
        )
    if config.backend == "openai":
        from langchain_openai import ChatOpenAI

        if not config.base_url and not (config.api_key or os.environ.get("OPENAI_API_KEY")):
            raise LLMError("the openai backend needs base_url (a local server) or an API key")
        # OpenAI itself wants max_completion_tokens; local servers (llama.cpp, Ollama, older vLLM)
        # only know max_tokens and would silently generate without limit.
        limit = ({"extra_body": {"max_tokens": config.max_tokens}} if config.base_url
                 else {"max_completion_tokens": config.max_tokens})
        return ChatOpenAI(
            model=config.model, base_url=config.base_url,
            # Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the client requires one.
            api_key=_secret(config) or os.environ.get("OPENAI_API_KEY") or "not-needed",
            temperature=config.temperature, seed=config.seed, timeout=config.timeout_s, max_retries=1,
            **limit,
        )
    raise LLMError(f"unknown backend {config.backend!r}")  # pragma: no cover - Literal guards it

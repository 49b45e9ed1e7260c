"""Loading open_clip models: by name + pretrained tag, a local checkpoint, a config, or injected.

Every CLIP detector works on a :class:`ClipModel`: the open_clip model together with its
tokenizer, device, dtype and the image normalisation it was trained with. The loader never
downloads silently in an offline place: when weights cannot be had it raises
:class:`CLIPWeightsUnavailable` naming the file to fetch and where to put it.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..images import ImageInput, load_image

log = logging.getLogger(__name__)

#: CLIP's own normalisation, used when a model does not say otherwise.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

DeviceLike = Union[str, torch.device, None]


class CLIPWeightsUnavailable(RuntimeError):
    """CLIP weights could not be found locally and could not be downloaded."""


class CLIPModelError(ValueError):
    """A model, tag or configuration cannot be used by the CLIP detectors."""


# -- device and dtype ------------------------------------------------------------------
def select_device(device: DeviceLike = None) -> torch.device:
    """``cuda`` if present, then ``mps``, then ``cpu``; an explicit choice is checked."""
    if device is not None and str(device) != "auto":
        chosen = torch.device(device)
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise CLIPModelError(f"device {str(device)!r} was asked for but CUDA is not available here")
        if chosen.type == "mps" and not _mps_available():
            raise CLIPModelError(f"device {str(device)!r} was asked for but MPS is not available here")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def select_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Half precision on accelerators (bf16 where the GPU supports it), fp32 on the CPU."""
    if precision != "auto":
        if precision not in _PRECISIONS:
            raise CLIPModelError(f"precision must be 'auto' or one of {sorted(_PRECISIONS)}, not {precision!r}")
        return _PRECISIONS[precision]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _PRECISIONS.items()}[dtype]


# -- the loaded model --------------------------------------------------------------------
@dataclass
class ClipModel:
    """An open_clip model ready for inference, plus what is needed to feed it."""

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    name: str = "custom"
    image_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    preprocess: Optional[Callable] = None
    _text_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        visual = getattr(self.model, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise CLIPModelError(
                "the CLIP detectors need an open_clip ViT image tower (model.visual.transformer); "
                f"{type(visual).__name__} is not one (ResNet and timm towers are not supported)"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise CLIPModelError("open_clip towers with attentional pooling (CoCa) are not supported")
        self.model.eval()
        self.model.requires_grad_(False)

    # -- geometry ---------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.grid_size)  # type: ignore[return-value]

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.proj.shape[1])

    @property
    def logit_scale(self) -> float:
        # CLIP's learned temperature; capped at 100 as in CLIP training
        return float(min(self.model.logit_scale.exp().item(), 100.0))

    # -- input ------------------------------------------------------------------------
    def to_tensor(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Load, squash-resize and normalise images; returns the batch and each (W, H).

        Squashing (not centre-cropping) keeps every pixel, so that a patch's position in
        the token grid maps straight back onto the original image.
        """
        from PIL import Image

        height, width = self.image_size
        batch = np.empty((len(images), height, width, 3), dtype=np.float32)
        sizes: list[tuple[int, int]] = []
        for i, image in enumerate(images):
            pil = load_image(image)
            sizes.append(pil.size)
            pil = pil.resize((width, height), Image.BICUBIC)
            batch[i] = np.asarray(pil, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(batch).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        tensor = (tensor - mean) / std
        return tensor.to(self.device, self.dtype), sizes

    # -- text -------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalised text embeddings (n, D) in float32, cached per sentence."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            emb = encode_text_truncated(self.model, self.tokenize(chunk)).float()
            emb = torch.nn.functional.normalize(emb, dim=-1)
            for text, row in zip(chunk, emb):
                self._text_cache[text] = row
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.stack([self._text_cache[t] for t in texts])


def truncation_length(model: torch.nn.Module, tokens: torch.Tensor) -> Optional[int]:
    """Shortest context that gives the same text embeddings, or None where truncating is not exact.

    With CLIP's causal mask and end-of-text pooling, tokens after the end-of-text token
    cannot change its output, so the 77-token context can be cut to the longest sentence:
    WinCLIP's ~250 prompts then cost a fifth of the compute.
    """
    if getattr(model, "attn_mask", None) is None or getattr(model, "text_pool_type", "argmax") != "argmax":
        return None
    return int(tokens.argmax(dim=-1).max().item()) + 1


def encode_text_truncated(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on the shortest exact context (see :func:`truncation_length`)."""
    length = truncation_length(model, tokens) if hasattr(model, "token_embedding") else None
    if length is None:
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


# -- building models ---------------------------------------------------------------------
def random_clip_config(
    *,
    image_size: int = 64,
    patch_size: int = 16,
    vision_width: int = 48,
    vision_layers: int = 4,
    text_width: int = 32,
    text_layers: int = 2,
    embed_dim: int = 32,
) -> dict[str, Any]:
    """An open_clip config dict for a small ViT CLIP (tests, CPU smoke runs)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": vision_width,
            "layers": vision_layers,
            "head_width": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": text_width,
            "heads": max(1, text_width // 16),
            "layers": text_layers,
        },
    }


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _network_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """A quick check so that an offline machine fails in seconds rather than hanging."""
    if _hub_offline():
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_repo_file(hub: str) -> tuple[str, Optional[str]]:
    """open_clip writes 'org/repo/file' or 'org/repo/' (default file names)."""
    if hub.endswith("/"):
        return hub.rstrip("/"), None
    repo, filename = os.path.split(hub)
    return repo, filename


def _missing_weights_message(model_name: str, tag: str, cfg: dict, cache_dir: Optional[str], reason: str) -> str:
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    lines = [
        f"CLIP weights for {model_name!r} with pretrained tag {tag!r} are not available offline ({reason}).",
        "Get them in one of these ways:",
    ]
    if hub:
        repo, filename = _hub_repo_file(hub)
        cache_hint = f"cache_dir={cache_dir!r}" if cache_dir else "HF_HOME / HF_HUB_CACHE"
        lines.append(
            f"  * on a machine with internet: `huggingface-cli download {repo} "
            f"{filename or 'open_clip_pytorch_model.bin'}`, then copy the Hugging Face cache "
            f"(~/.cache/huggingface/hub) to this machine, or point {cache_hint} at it;"
        )
    if url:
        lines.append(f"  * download {url} and pass its local path as pretrained=/path/to/{os.path.basename(url)};")
    lines.append(
        "  * or pass any local open_clip checkpoint file as pretrained='/path/to/checkpoint.pt' "
        "(or load_clip(checkpoint=...)), or inject a built model with load_clip(model=..., tokenizer=...)."
    )
    return "\n".join(lines)


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: Optional[str] = None) -> str:
    """Return a local file for ``pretrained`` (a path or an open_clip tag), downloading only when online."""
    import open_clip

    path = Path(os.path.expanduser(pretrained))
    if path.suffix or os.sep in pretrained or pretrained.startswith("."):
        if not path.is_file():
            raise CLIPWeightsUnavailable(
                f"CLIP checkpoint file {str(path)!r} does not exist. Pass an existing open_clip checkpoint "
                f"(.pt, .bin or .safetensors) for model {model_name!r}, or an open_clip pretrained tag."
            )
        return str(path)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise CLIPModelError(
            f"open_clip has no pretrained tag {pretrained!r} for model {model_name!r}; "
            f"known tags: {tags or 'none (is the model name right?)'}"
        )
    if "file" in cfg:
        return cfg["file"]
    hub = cfg.get("hf_hub", "")
    online = _network_reachable()
    if hub:
        from huggingface_hub import hf_hub_download

        repo, filename = _hub_repo_file(hub)
        candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename and filename.endswith(".bin"):
            candidates.insert(0, filename[: -len(".bin")] + ".safetensors")
        for candidate in candidates:
            try:
                return hf_hub_download(repo, candidate, cache_dir=cache_dir, local_files_only=not online)
            except Exception as exc:  # noqa: BLE001 - every miss is reported together below
                last_error = exc
        if not cfg.get("url"):
            raise CLIPWeightsUnavailable(
                _missing_weights_message(model_name, pretrained, cfg, cache_dir, "not in the Hugging Face cache"
                                         if not online else f"download failed: {last_error}")
            )
    url = cfg.get("url", "")
    if url:
        clip_cache = Path(cache_dir or os.path.expanduser("~/.cache/clip"))
        target = clip_cache / os.path.basename(url)
        if target.is_file():
            return str(target)
        if online:
            from open_clip.pretrained import download_pretrained_from_url

            try:
                return download_pretrained_from_url(url, cache_dir=str(clip_cache))
            except Exception as exc:  # noqa: BLE001
                raise CLIPWeightsUnavailable(
                    _missing_weights_message(model_name, pretrained, cfg, cache_dir, f"download failed: {exc}")
                ) from exc
    raise CLIPWeightsUnavailable(
        _missing_weights_message(model_name, pretrained, cfg, cache_dir, "no network and nothing in the local caches")
    )


def _preprocess_stats(model: torch.nn.Module, model_name: str, pretrained: Optional[str]):
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if (mean is None or std is None) and pretrained:
        import open_clip

        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        mean, std = tag_cfg.get("mean"), tag_cfg.get("std")
    return tuple(mean or OPENAI_MEAN), tuple(std or OPENAI_STD)


def _needs_quick_gelu(model_name: str, tag: Optional[str]) -> bool:
    """Whether a pretrained tag's weights were trained with QuickGELU that the config lacks."""
    import open_clip

    if not tag:
        return False
    try:
        wants = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))
        has = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    except Exception:  # an unknown tag: open_clip reports it when it loads
        return False
    return wants and not has


def load_clip(
    model_name: str = "ViT-B-16-plus-240",
    pretrained: Optional[str] = None,
    *,
    checkpoint: Optional[str | os.PathLike] = None,
    model_config: Optional[dict[str, Any]] = None,
    random_init: bool = False,
    image_size: Optional[int] = None,
    device: DeviceLike = None,
    precision: str = "auto",
    cache_dir: Optional[str] = None,
    model: Optional[torch.nn.Module] = None,
    preprocess: Optional[Callable] = None,
    tokenizer: Optional[Callable] = None,
    seed: int = 0,
) -> ClipModel:
    """Load (or wrap) an open_clip ViT CLIP model for the CLIP detectors.

    * ``load_clip("ViT-B-16-plus-240", "laion400m_e32")``: an open_clip name and pretrained tag,
      found in the Hugging Face / open_clip cache, or downloaded when a network is there;
    * ``load_clip("ViT-L-14-336", checkpoint="/models/vit_l_14_336.pt")``: a local checkpoint;
    * ``load_clip("ViT-B-16", random_init=True)`` or ``load_clip("tiny", model_config={...},
      random_init=True)``: random weights from a config (timing, tests);
    * ``load_clip(model=m, preprocess=p, tokenizer=t)``: an already-built model.

    ``device`` defaults to cuda, then mps, then cpu; ``precision="auto"`` gives bf16/fp16 on a GPU.
    ``image_size`` changes the input resolution (open_clip interpolates the position embedding).
    """
    import open_clip

    chosen_device = select_device(device)
    dtype = select_dtype(chosen_device, precision)
    if model is not None:
        if tokenizer is None:
            tokenizer = open_clip.get_tokenizer(model_name if model_name in open_clip.list_models() else "ViT-B-16")
        model = model.to(chosen_device, dtype)
        mean, std = _preprocess_stats(model, model_name, None)
        if preprocess is not None and hasattr(preprocess, "transforms"):
            for t in preprocess.transforms:  # pick the Normalize of an open_clip preprocess
                if type(t).__name__ == "Normalize":
                    mean, std = tuple(t.mean), tuple(t.std)
        return ClipModel(
            model=model, tokenizer=tokenizer, device=chosen_device, dtype=dtype, name=model_name,
            image_size=tuple(model.visual.image_size), mean=mean, std=std, preprocess=preprocess,
        )

    sources = [pretrained is not None, checkpoint is not None, random_init]
    if sum(sources) != 1:
        raise CLIPModelError(
            "say where the weights come from: exactly one of pretrained='<tag or file>', "
            "checkpoint='<file>' or random_init=True (random weights are only good for tests and timing)"
        )
    if model_config is None and model_name not in open_clip.list_models():
        raise CLIPModelError(
            f"unknown open_clip model {model_name!r}; pass model_config={{...}} for a custom one, "
            f"or one of e.g. ViT-B-16, ViT-B-16-plus-240, ViT-L-14-336"
        )

    weights_file: Optional[str] = None
    if checkpoint is not None:
        weights_file = resolve_pretrained(model_name, os.fspath(checkpoint), cache_dir)
    elif pretrained is not None:
        # resolve first, so that an offline machine fails fast, before building a large model
        weights_file = resolve_pretrained(model_name, pretrained, cache_dir)

    torch.manual_seed(seed)
    if model_config is not None:
        cfg = dict(model_config)
        if image_size is not None:
            cfg["vision_cfg"] = {**cfg["vision_cfg"], "image_size": image_size}
        built = open_clip.model.CLIP(**cfg)
        if weights_file is not None:
            open_clip.load_checkpoint(built, weights_file)
        built = built.to(chosen_device, dtype)
    else:
        built = open_clip.create_model(
            model_name,
            pretrained=weights_file,
            load_weights=weights_file is not None,
            # weights trained with QuickGELU (OpenAI's) under a config without it would load without
            # complaint and give quietly worse features; open_clip only warns when it resolves the
            # tag itself, and here the tag was resolved to a file above
            force_quick_gelu=_needs_quick_gelu(model_name, pretrained if checkpoint is None else None),
            precision=_precision_name(dtype),
            device=chosen_device,
            force_image_size=image_size,
            cache_dir=cache_dir,
            pretrained_text=False,
        )
    tok = tokenizer or open_clip.get_tokenizer(model_name if model_config is None else "ViT-B-16")
    mean, std = _preprocess_stats(built, model_name, pretrained if checkpoint is None else None)
    if random_init:
        warnings.warn(f"CLIP model {model_name!r} has RANDOM weights: its scores mean nothing", stacklevel=2)
    return ClipModel(
        model=built, tokenizer=tok, device=chosen_device, dtype=dtype,
        name=f"{model_name}:{pretrained or (os.path.basename(os.fspath(checkpoint)) if checkpoint else 'random')}",
        image_size=tuple(built.visual.image_size), mean=mean, std=std,
    )

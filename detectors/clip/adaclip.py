"""AdaCLIP-style hybrid prompts (Cao et al., ECCV 2024) on open_clip.

Learnable prompts go into both towers of a frozen CLIP:

* static prompts: ``depth`` x ``length`` tokens per tower, shared by all images;
* dynamic prompts: generated per image from its (unprompted) CLIP embedding by small
  linear layers, added to the static ones.

In the image tower the prompt tokens are appended after the patch tokens at block 0 and
replaced before each of the next ``depth - 1`` blocks (forward hooks); in the text tower
they replace placeholder tokens after the start token. Patch tokens of several tapped
layers are scored against the prompted [normal, anomalous] texts; the map is the mean
over layers of (p_anomalous + 1 - p_normal) / 2. Only the prompt parameters are trained
(on auxiliary anomaly data with masks, :meth:`AdaCLIP.train`) and saved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..images import ImageInput, load_image
from .common import CLIPDetector
from .loading import truncation_length
from .features import (
    check_layers, default_layers, encode_image_layers, from_batch_first, to_batch_first,
)

log = logging.getLogger(__name__)

#: AdaCLIP taps blocks 6, 12, 18 and 24 of the 24-block ViT-L-14-336
ADACLIP_LAYER_FRACTIONS = (6 / 24, 12 / 24, 18 / 24, 24 / 24)
#: the state words the prompted text tower contrasts
ADACLIP_STATES = ("normal {}", "damaged {}")
_PLACEHOLDER = "X"


class HybridPrompts(nn.Module):
    """Static (shared) plus dynamic (per-image) prompt tokens for the image and text towers."""

    def __init__(self, embed_dim: int, vision_width: int, text_width: int, depth: int = 4, length: int = 5):
        super().__init__()
        if depth < 1 or length < 1:
            raise ValueError(f"prompt depth and length must be >= 1, got depth={depth}, length={length}")
        self.depth, self.length = depth, length
        self.vision_static = nn.Parameter(torch.randn(depth, length, vision_width) * 0.02)
        self.text_static = nn.Parameter(torch.randn(depth, length, text_width) * 0.02)
        self.vision_dynamic = nn.Linear(embed_dim, length * vision_width)
        self.text_dynamic = nn.Linear(embed_dim, length * text_width)
        for layer in (self.vision_dynamic, self.text_dynamic):
            nn.init.normal_(layer.weight, std=0.02 / max(1, embed_dim) ** 0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, image_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vision prompts (B, depth, length, Wv), text prompts (B, depth, length, Wt))."""
        batch = image_embedding.shape[0]
        vision = self.vision_dynamic(image_embedding).view(batch, 1, self.length, -1)
        text = self.text_dynamic(image_embedding).view(batch, 1, self.length, -1)
        return self.vision_static[None] + vision, self.text_static[None] + text


@dataclass
class TrainingSample:
    """One auxiliary training image: an anomaly mask (None = all normal) and its class name."""

    image: ImageInput
    mask: Optional[np.ndarray] = None
    label: Optional[int] = None
    class_name: str = "object"

    @property
    def is_anomalous(self) -> int:
        if self.label is not None:
            return int(self.label)
        return int(self.mask is not None and bool(np.asarray(self.mask).any()))


def _read_mask(paths: Sequence[Path]) -> np.ndarray:
    union = None
    for path in paths:
        mask = np.asarray(load_image(path).convert("L")) > 0
        union = mask if union is None else (union | mask)
    return union


def anomaly_folder_samples(root: Union[str, Path], categories: Optional[Sequence[str]] = None) -> list[TrainingSample]:
    """Samples from a folder in MVTec AD or MVTec LOCO layout (``root/<category>/...`` or one category).

    ``train/good`` and ``test/good`` images are normal; ``test/<defect>/<id>.png`` are
    anomalous, with masks in ``ground_truth/<defect>/<id>_mask.png`` (MVTec AD) or the union
    of ``ground_truth/<defect>/<id>/*.png`` (LOCO).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder {str(root)!r} does not exist")
    if (root / "train").is_dir() or (root / "test").is_dir():
        category_dirs = [root]
    else:
        category_dirs = sorted(p for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))
    if categories is not None:
        category_dirs = [p for p in category_dirs if p.name in set(categories)]
    if not category_dirs:
        raise FileNotFoundError(
            f"no category in MVTec/LOCO layout under {str(root)!r} (expected <category>/train/good/*.png, "
            f"<category>/test/<defect>/*.png and <category>/ground_truth/<defect>/...)"
        )
    samples: list[TrainingSample] = []
    for cat_dir in category_dirs:
        name = cat_dir.name.replace("_", " ")
        for split in ("train", "validation", "test"):
            split_dir = cat_dir / split
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                for image_path in sorted(defect_dir.glob("*.png")):
                    if defect_dir.name == "good":
                        samples.append(TrainingSample(image=image_path, mask=None, label=0, class_name=name))
                        continue
                    gt = cat_dir / "ground_truth" / defect_dir.name
                    mask_paths = sorted((gt / image_path.stem).glob("*.png")) or sorted(gt.glob(f"{image_path.stem}_mask.png"))
                    if not mask_paths:
                        raise FileNotFoundError(
                            f"no ground-truth mask for anomalous image {str(image_path)!r}: expected "
                            f"{str(gt / image_path.stem)}/*.png or {str(gt / (image_path.stem + '_mask.png'))}"
                        )
                    samples.append(TrainingSample(image=image_path, mask=_read_mask(mask_paths), label=1, class_name=name))
    if not samples:
        raise FileNotFoundError(f"no .png images found under {str(root)!r}")
    return samples


class AdaCLIP(CLIPDetector):
    """Zero-shot anomaly maps from a frozen CLIP with trained hybrid prompts.

    ``fit`` needs no references (the method is zero-shot; any given are not used); train the
    prompts once on auxiliary data with :meth:`train`, keep them with :meth:`save`.
    """

    name = "adaclip"
    default_model = ("ViT-L-14-336", "openai")

    def __init__(self, clip=None, *, layers: Optional[Sequence[int]] = None, prompt_depth: int = 4,
                 prompt_length: int = 5, seed: int = 0, **kwargs) -> None:
        super().__init__(clip, **kwargs)
        model = self.clip.model
        if not hasattr(model, "token_embedding"):
            raise ValueError("AdaCLIP needs an open_clip CLIP with its own text tower (not a HF text model)")
        vision_blocks = len(model.visual.transformer.resblocks)
        text_blocks = len(model.transformer.resblocks)
        if prompt_depth > min(vision_blocks, text_blocks):
            raise ValueError(
                f"prompt_depth={prompt_depth} is too deep for towers of {vision_blocks} and {text_blocks} blocks"
            )
        self.layers = check_layers(layers, vision_blocks) if layers is not None else default_layers(
            vision_blocks, ADACLIP_LAYER_FRACTIONS)
        torch.manual_seed(seed)
        self.prompts = HybridPrompts(
            self.clip.embed_dim, model.visual.transformer.width, model.transformer.width,
            depth=prompt_depth, length=prompt_length,
        ).to(self.clip.device)
        self.prompts.eval()

    def fit(self, references: Sequence[ImageInput]) -> "AdaCLIP":
        if len(references):
            log.info("AdaCLIP is zero-shot: %d reference images are not used", len(references))
        return self

    # -- prompted towers --------------------------------------------------------------------
    def _prompted_vision(self, images: torch.Tensor, prompts: torch.Tensor):
        """Run the image tower with prompt tokens inserted; returns tapped VisionFeatures."""
        visual = self.clip.model.visual
        blocks = visual.transformer.resblocks
        batch_first = bool(getattr(visual.transformer, "batch_first", True))
        prompts = prompts.to(self.clip.dtype)
        length = self.prompts.length

        def append(_module, args, kwargs):
            x = to_batch_first(args[0], batch_first)
            x = torch.cat([x, prompts[:, 0]], dim=1)
            return (from_batch_first(x, batch_first), *args[1:]), kwargs

        def replace(layer):
            def hook(_module, _inputs, output):
                x = to_batch_first(output, batch_first)
                x = torch.cat([x[:, :-length], prompts[:, layer]], dim=1)
                return from_batch_first(x, batch_first)
            return hook

        def strip(_module, _inputs, output):
            x = to_batch_first(output, batch_first)
            return from_batch_first(x[:, :-length], batch_first)

        handles = [blocks[0].register_forward_pre_hook(append, with_kwargs=True)]
        handles += [blocks[layer - 1].register_forward_hook(replace(layer)) for layer in range(1, self.prompts.depth)]
        # drop the prompts after the last block, so that 'avg' pooling towers pool patches only
        handles.append(blocks[-1].register_forward_hook(strip))
        try:
            feats = encode_image_layers(visual, images, self.layers)
        finally:
            for handle in handles:
                handle.remove()
        return feats

    def _prompted_text(self, prompts: torch.Tensor, class_names: Sequence[str]) -> torch.Tensor:
        """(B, 2, D) normalised [normal, anomalous] embeddings, prompted per image."""
        from open_clip.transformer import text_global_pool

        model = self.clip.model
        length = self.prompts.length
        batch = prompts.shape[0]
        placeholder = " ".join([_PLACEHOLDER] * length)
        sentences = [f"{placeholder} {state.format(name)}." for name in class_names for state in ADACLIP_STATES]
        tokens = self.clip.tokenize(sentences)  # (B*2, ctx)
        cut = truncation_length(model, tokens)  # exact: causal mask + end-of-text pooling
        if cut is not None:
            tokens = tokens[:, :cut]
        prompts = prompts.to(self.clip.dtype).repeat_interleave(len(ADACLIP_STATES), dim=0)  # (B*2, depth, len, W)
        x = model.token_embedding(tokens).to(self.clip.dtype)
        x = torch.cat([x[:, :1], prompts[:, 0], x[:, 1 + length :]], dim=1)
        x = x + model.positional_embedding[: tokens.shape[1]].to(x.dtype)
        attn_mask = model.attn_mask[: tokens.shape[1], : tokens.shape[1]] if model.attn_mask is not None else None
        batch_first = bool(getattr(model.transformer, "batch_first", True))
        x = from_batch_first(x, batch_first)
        for index, block in enumerate(model.transformer.resblocks):
            if 1 <= index < self.prompts.depth:
                xb = to_batch_first(x, batch_first)
                xb = torch.cat([xb[:, :1], prompts[:, index], xb[:, 1 + length :]], dim=1)
                x = from_batch_first(xb, batch_first)
            x = block(x, attn_mask=attn_mask)
        x = model.ln_final(to_batch_first(x, batch_first))
        pooled = text_global_pool(x, tokens, getattr(model, "text_pool_type", "argmax"),
                                  eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            pooled = model.text_projection(pooled) if isinstance(model.text_projection, nn.Linear) else pooled @ model.text_projection
        return F.normalize(pooled.float(), dim=-1).view(batch, len(ADACLIP_STATES), -1)

    def forward_maps(self, images: torch.Tensor, class_names: Sequence[str]):
        """(per-layer anomaly probabilities (B, L, N), image probability (B,)); differentiable in the prompts."""
        with torch.no_grad():
            global_embedding = encode_image_layers(self.clip.model.visual, images, []).image
        vision_prompts, text_prompts = self.prompts(global_embedding)
        feats = self._prompted_vision(images, vision_prompts)
        text = self._prompted_text(text_prompts, class_names)  # (B, 2, D)
        scale = self.clip.logit_scale
        layer_maps = []
        for layer in self.layers:
            probs = (scale * torch.einsum("bnd,bkd->bnk", feats.patches[layer], text)).softmax(dim=-1)
            layer_maps.append((probs[..., 1] + 1.0 - probs[..., 0]) / 2.0)
        image_prob = (scale * torch.einsum("bd,bkd->bk", feats.image, text)).softmax(dim=-1)[:, 1]
        return torch.stack(layer_maps, dim=1), image_prob

    def _score_batch(self, images: torch.Tensor):
        layer_maps, image_prob = self.forward_maps(images, [self.class_name] * images.shape[0])
        patch_map = layer_maps.mean(dim=1)
        score = 0.5 * (image_prob + patch_map.amax(dim=1))
        return score, patch_map.view(-1, *self.clip.grid_size)

    # -- training ---------------------------------------------------------------------------
    def _grid_target(self, mask: Optional[np.ndarray]) -> torch.Tensor:
        rows, cols = self.clip.grid_size
        if mask is None:
            return torch.zeros(rows * cols)
        arr = torch.from_numpy(np.asarray(mask, dtype=np.float32) > 0).float()
        if arr.ndim != 2:
            raise ValueError(f"a training mask must be 2-D (H, W), got shape {tuple(arr.shape)}")
        return F.adaptive_avg_pool2d(arr[None, None], (rows, cols)).reshape(-1)

    def loss(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
             class_names: Sequence[str]) -> torch.Tensor:
        """Focal + dice on every layer's map against the masks, plus BCE on the image probability."""
        layer_maps, image_prob = self.forward_maps(images, class_names)
        eps = 1e-6
        total = F.binary_cross_entropy(image_prob.clamp(eps, 1 - eps), labels)
        for i in range(layer_maps.shape[1]):
            p = layer_maps[:, i].clamp(eps, 1 - eps)
            bce = F.binary_cross_entropy(p, targets, reduction="none")
            p_true = p * targets + (1 - p) * (1 - targets)
            focal = ((1 - p_true) ** 2 * bce).mean()
            # dice on both the anomalous and the normal region keeps all-normal images informative
            dice = 0.0
            for pred, tgt in ((p, targets), (1 - p, 1 - targets)):
                inter = (pred * tgt).sum(dim=1)
                dice = dice + (1 - (2 * inter + 1) / (pred.sum(dim=1) + tgt.sum(dim=1) + 1)).mean()
            total = total + focal + dice / 2
        return total

    def train(
        self,
        data: Union[str, Path, Sequence[TrainingSample]],
        *,
        epochs: int = 1,
        batch_size: Optional[int] = None,
        lr: float = 1e-3,
        max_steps: Optional[int] = None,
        seed: int = 0,
        accelerator=None,
    ) -> list[float]:
        """Train the prompt parameters on auxiliary data; returns the loss of every step.

        ``data`` is a folder in MVTec AD / LOCO layout (e.g. written by the project's synthetic
        generator) or a list of :class:`TrainingSample`. Uses ``accelerate`` for the device
        placement and backward pass; the CLIP model itself stays frozen.
        """
        from accelerate import Accelerator

        samples = anomaly_folder_samples(data) if isinstance(data, (str, Path)) else list(data)
        if not samples:
            raise ValueError("no training samples")
        bs = batch_size or self.batch_size
        accelerator = accelerator or Accelerator(cpu=self.clip.device.type == "cpu")
        optimizer = torch.optim.AdamW(self.prompts.parameters(), lr=lr, weight_decay=0.0)
        prompts, optimizer = accelerator.prepare(self.prompts, optimizer)
        generator = torch.Generator().manual_seed(seed)
        history: list[float] = []
        self.prompts.train()
        try:
            for _ in range(epochs):
                order = torch.randperm(len(samples), generator=generator).tolist()
                for start in range(0, len(order), bs):
                    chunk = [samples[i] for i in order[start : start + bs]]
                    images, _ = self.clip.to_tensor([s.image for s in chunk])
                    targets = torch.stack([self._grid_target(s.mask) for s in chunk]).to(self.clip.device)
                    labels = torch.tensor([float(s.is_anomalous) for s in chunk], device=self.clip.device)
                    loss = self.loss(images, targets, labels, [s.class_name for s in chunk])
                    optimizer.zero_grad()
                    accelerator.backward(loss)
                    optimizer.step()
                    history.append(float(loss.detach()))
                    if max_steps is not None and len(history) >= max_steps:
                        return history
        finally:
            self.prompts = accelerator.unwrap_model(prompts)
            self.prompts.eval()
        return history

    # -- persistence: prompt parameters only ------------------------------------------------
    def _metadata(self) -> dict[str, str]:
        return {
            "model": self.clip.name, "layers": json.dumps(self.layers), "depth": str(self.prompts.depth),
            "length": str(self.prompts.length), "embed_dim": str(self.clip.embed_dim),
        }

    def save(self, path: Union[str, Path]) -> None:
        """Write only the prompt parameters (safetensors) with the shape they need."""
        from safetensors.torch import save_file

        state = {k: v.detach().float().cpu().contiguous() for k, v in self.prompts.state_dict().items()}
        save_file(state, str(path), metadata=self._metadata())

    def load_prompts(self, path: Union[str, Path]) -> "AdaCLIP":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"AdaCLIP prompt file {str(path)!r} does not exist")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        mine = self._metadata()
        for key in ("depth", "length", "embed_dim"):
            if meta.get(key) != mine[key]:
                raise ValueError(
                    f"prompt file {str(path)!r} was trained with {key}={meta.get(key)} but this AdaCLIP has "
                    f"{key}={mine[key]} (model {meta.get('model')!r} vs {mine['model']!r})"
                )
        self.prompts.load_state_dict(load_file(str(path), device=str(self.clip.device)))
        if "layers" in meta:
            self.layers = json.loads(meta["layers"])
        return self

    @classmethod
    def load(cls, path: Union[str, Path], clip=None, **kwargs) -> "AdaCLIP":
        """Build an AdaCLIP on ``clip`` (or the default model) with the prompt depth/length of ``path``."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        detector = cls(clip, prompt_depth=int(meta.get("depth", 4)), prompt_length=int(meta.get("length", 5)),
                       **kwargs)
        return detector.load_prompts(path)

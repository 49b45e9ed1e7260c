"""InCTRL-style few-shot in-context residual learning (Zhu & Pang, CVPR 2024) on open_clip.

* patch residual: for each tapped layer, 0.5 * (1 - cos) from every query patch to its
  nearest reference patch, averaged over the layers -> a map;
* image residual: the class embedding of the query minus the mean of the references'
  class embeddings, both through a small trainable adapter;
* text prior: p(anomalous) of the query's class embedding against the prompt ensemble;
* fusion: a small head turns [image residual, its norm, text prior] into a probability,
  and the score is (head + max patch residual) / 2.

The head starts as a training-free fusion (residual magnitude plus text prior); its MLP
branch and the adapter learn from labelled auxiliary images with :meth:`InCTRL.train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import NotFittedError
from ..images import ImageInput
from .common import CLIPDetector
from .features import check_layers, default_layers, encode_image_layers, nearest_distance, two_class_probability

#: InCTRL taps blocks 7, 9 and 11 of the 12-block ViT-B-16-plus-240
INCTRL_LAYER_FRACTIONS = (7 / 12, 9 / 12, 11 / 12)


class ResidualAdapter(nn.Module):
    """x + W2 relu(W1 x), W2 zero-initialised so that an untrained adapter is the identity."""

    def __init__(self, dim: int, hidden: Optional[int] = None) -> None:
        super().__init__()
        hidden = hidden or max(8, dim // 4)
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.relu(self.down(x)))


class ResidualHead(nn.Module):
    """Logit of anomaly from the image residual and the text prior.

    A fixed-form linear part (a * |residual| + b * logit(text prior) + c) gives a sensible
    untrained fusion; an MLP on the full residual (zero-initialised output) adds what
    training on auxiliary data teaches.
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.magnitude_weight = nn.Parameter(torch.tensor(8.0))
        self.text_weight = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(-2.0))
        self.mlp = nn.Sequential(nn.Linear(dim + 2, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, residual: torch.Tensor, text_prior: torch.Tensor) -> torch.Tensor:
        magnitude = residual.norm(dim=-1)
        text_logit = torch.logit(text_prior.clamp(1e-4, 1 - 1e-4))
        fixed = self.magnitude_weight * magnitude + self.text_weight * text_logit + self.bias
        learned = self.mlp(torch.cat([residual, magnitude[:, None], text_prior[:, None]], dim=-1))[:, 0]
        return fixed + learned


class InCTRLHead(nn.Module):
    """The trainable part of InCTRL: adapter plus head (pure torch, float32)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.adapter = ResidualAdapter(dim)
        self.head = ResidualHead(dim)

    def forward(self, query_image: torch.Tensor, reference_images: torch.Tensor,
                text_prior: torch.Tensor) -> torch.Tensor:
        """Logit (B,) from query class embeddings (B, D) and the references' (K, D)."""
        prototype = self.adapter(reference_images).mean(dim=0, keepdim=True)
        residual = self.adapter(query_image) - prototype
        return self.head(residual, text_prior)


class InCTRL(CLIPDetector):
    """Few-shot: ``fit(references)`` with 1..k normal images, then ``score``."""

    name = "inctrl"
    default_model = ("ViT-B-16-plus-240", "laion400m_e32")

    def __init__(self, clip=None, *, layers: Optional[Sequence[int]] = None, **kwargs) -> None:
        super().__init__(clip, **kwargs)
        depth = len(self.clip.model.visual.transformer.resblocks)
        self.layers = check_layers(layers, depth) if layers is not None else default_layers(
            depth, INCTRL_LAYER_FRACTIONS)
        self.trainable = InCTRLHead(self.clip.embed_dim).to(self.clip.device)
        self.reference_images: Optional[torch.Tensor] = None
        self.reference_patches: Optional[dict[int, torch.Tensor]] = None

    def _embed(self, images: torch.Tensor):
        return encode_image_layers(self.clip.model.visual, images, self.layers)

    @torch.no_grad()
    def fit(self, references: Sequence[ImageInput]) -> "InCTRL":
        if len(references) == 0:
            raise NotFittedError("InCTRL is few-shot: fit() needs at least one normal reference image")
        self.text_features()
        feats = self._encode_references(references, self._embed)
        self.reference_images = torch.cat([f.image for f in feats])
        self.reference_patches = {
            layer: torch.cat([f.patches[layer].reshape(-1, f.patches[layer].shape[-1]) for f in feats])
            for layer in self.layers
        }
        return self

    def _require_fit(self) -> None:
        if self.reference_images is None:
            raise NotFittedError("InCTRL.score() before fit(references): give it 1..k normal images first")

    def patch_residual(self, feats, reference_patches: dict[int, torch.Tensor]) -> torch.Tensor:
        """(B, N): nearest-reference residual per patch, averaged over the tapped layers."""
        return torch.stack([nearest_distance(feats.patches[l], reference_patches[l]) for l in self.layers]).mean(0)

    def _fused(self, feats, reference_images, reference_patches):
        patch_map = self.patch_residual(feats, reference_patches)
        text_prior = two_class_probability(feats.image, self.text_features(), self.clip.logit_scale)
        logit = self.trainable(feats.image, reference_images, text_prior)
        return logit, patch_map

    def _score_batch(self, images: torch.Tensor):
        self._require_fit()
        feats = self._embed(images)
        logit, patch_map = self._fused(feats, self.reference_images, self.reference_patches)
        score = 0.5 * (torch.sigmoid(logit) + patch_map.amax(dim=1))
        return score, patch_map.view(-1, *self.clip.grid_size)

    # -- training -------------------------------------------------------------------------
    def train(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[int],
        references: Sequence[ImageInput],
        *,
        epochs: int = 10,
        lr: float = 1e-3,
        shots: int = 4,
        seed: int = 0,
    ) -> list[float]:
        """Train the adapter and head on labelled auxiliary images (1 = anomalous).

        The backbone is frozen, so features are computed once; each step draws ``shots``
        in-context references from ``references``. Returns the mean loss per epoch.
        """
        if len(images) != len(labels) or not images:
            raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
        if not references:
            raise ValueError("training needs normal reference images to draw in-context shots from")
        target = torch.tensor([float(l) for l in labels], device=self.clip.device)
        if not set(target.unique().tolist()) <= {0.0, 1.0}:
            raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
        with torch.no_grad():
            self.text_features()
            queries = self._encode_references(images, self._embed)
            refs = torch.cat([f.image for f in self._encode_references(references, self._embed)])
            query_images = torch.cat([f.image for f in queries])
            text_prior = two_class_probability(query_images, self.text_features(), self.clip.logit_scale)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(self.trainable.parameters(), lr=lr, weight_decay=1e-4)
        self.trainable.train()
        history = []
        for _ in range(epochs):
            pick = torch.randperm(len(refs), generator=generator)[: max(1, min(shots, len(refs)))]
            logit = self.trainable(query_images, refs[pick.to(refs.device)], text_prior)
            loss = F.binary_cross_entropy_with_logits(logit, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
        self.trainable.eval()
        return history

    def save_head(self, path: str | Path) -> None:
        """Save only the trained adapter and head (safetensors)."""
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.trainable.state_dict().items()}
        save_file(state, str(path), metadata={"model": self.clip.name, "layers": ",".join(map(str, self.layers))})

    def load_head(self, path: str | Path) -> "InCTRL":
        from safetensors.torch import load_file

        self.trainable.load_state_dict(load_file(str(path), device=str(self.clip.device)))
        return self

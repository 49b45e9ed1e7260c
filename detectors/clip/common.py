"""Glue shared by the CLIP detectors: model resolution, batching, AnomalyResult assembly."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..base import Detector
from ..images import ImageInput
from ..schema import AnomalyResult
from .features import upsample_map
from .loading import ClipModel, load_clip
from .prompts import class_name_from, prompt_ensemble


class CLIPDetector(Detector):
    """A Detector on an open_clip model; subclasses implement :meth:`_score_batch`."""

    name = "clip"
    default_model = ("ViT-B-16-plus-240", "laion400m_e32")

    def __init__(
        self,
        clip: Optional[ClipModel] = None,
        *,
        class_name: Optional[str] = None,
        rules=None,
        model_name: Optional[str] = None,
        pretrained: Optional[str] = None,
        batch_size: int = 8,
        map_sigma: float = 4.0,
        **load_kwargs,
    ) -> None:
        if clip is None:
            name, tag = self.default_model
            explicit = pretrained is not None or any(
                load_kwargs.get(k) for k in ("checkpoint", "random_init", "model_config"))
            clip = load_clip(model_name or name, pretrained if explicit else tag, **load_kwargs)
        if not isinstance(clip, ClipModel):
            raise TypeError(f"clip must be a ClipModel from load_clip(), not {type(clip).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip = clip
        self.class_name = class_name_from(class_name, rules)
        self.batch_size = batch_size
        self.map_sigma = map_sigma
        self._text: Optional[torch.Tensor] = None

    # -- text side ------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """(2, D) normalised [normal, anomalous] class embeddings of the prompt ensemble."""
        if self._text is None:
            normal, anomalous = prompt_ensemble(self.class_name)
            rows = []
            for sentences in (normal, anomalous):
                mean = self.clip.encode_text(sentences).mean(dim=0)
                rows.append(torch.nn.functional.normalize(mean, dim=-1))
            self._text = torch.stack(rows)
        return self._text

    # -- scoring --------------------------------------------------------------------------
    def _score_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (B,), token-grid maps (B, h, w)) for a preprocessed batch."""
        raise NotImplementedError

    def score(self, image: ImageInput) -> AnomalyResult:
        return self.score_many([image])[0]

    @torch.no_grad()
    def score_many(self, images: Sequence[ImageInput]) -> list[AnomalyResult]:
        """Score images in batches of ``batch_size``; maps come back at each image's resolution."""
        results: list[AnomalyResult] = []
        for start in range(0, len(images), self.batch_size):
            began = time.perf_counter()
            batch, sizes = self.clip.to_tensor(images[start : start + self.batch_size])
            scores, maps = self._score_batch(batch)
            per_image = (time.perf_counter() - began) / len(sizes)
            for score, grid_map, size in zip(scores.tolist(), maps, sizes):
                full = upsample_map(grid_map, size, self.map_sigma).cpu().numpy().astype(np.float32)
                y, x = np.unravel_index(int(np.argmax(full)), full.shape)
                results.append(AnomalyResult(
                    detector=self.name, score=float(score), raw_score=float(score), calibrated=False,
                    anomaly_map=full, peak_xy=(int(x), int(y)), seconds=per_image,
                ))
        return results

    def _encode_references(self, references: Sequence[ImageInput], encode) -> list:
        out = []
        for start in range(0, len(references), self.batch_size):
            batch, _ = self.clip.to_tensor(references[start : start + self.batch_size])
            out.append(encode(batch))
        return out

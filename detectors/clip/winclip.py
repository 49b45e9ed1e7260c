"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023) on open_clip.

Zero-shot: the compositional prompt ensemble gives a normal and an anomalous text
embedding for the class. Every 2x2 and 3x3 window of patch tokens is embedded on its own
(the tower sees only that window's tokens), scored against the two texts, and the window
scores are aggregated onto patches by a harmonic mean; the scales and the whole image are
averaged into the map. Few-shot (WinCLIP+): the reference images' patch and window
embeddings form a memory; nearest-neighbour distances give a second map, averaged with
the zero-shot one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..base import NotFittedError
from ..images import ImageInput
from .common import CLIPDetector
from .features import (
    encode_image_layers, encode_windows, nearest_distance, two_class_probability,
    window_indices, window_to_patch_mean,
)


class WinCLIP(CLIPDetector):
    """Zero-shot with ``fit([])``, few-shot (WinCLIP+) with ``fit(references)``."""

    name = "winclip"
    default_model = ("ViT-B-16-plus-240", "laion400m_e32")

    def __init__(self, clip=None, *, window_sizes: Sequence[int] = (2, 3), **kwargs) -> None:
        super().__init__(clip, **kwargs)
        if not window_sizes or any(int(k) < 1 for k in window_sizes):
            raise ValueError(f"window_sizes must be positive integers, got {list(window_sizes)}")
        grid = self.clip.grid_size
        self.window_sizes = tuple(int(k) for k in window_sizes if int(k) <= min(grid))
        if not self.window_sizes:
            raise ValueError(f"none of the windows {list(window_sizes)} fit the {grid} token grid of this model")
        self._windows = {k: window_indices(grid, k) for k in self.window_sizes}
        self._last_layer = len(self.clip.model.visual.transformer.resblocks) - 1
        self.memory: Optional[dict[str, torch.Tensor]] = None

    # -- embeddings -------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        visual = self.clip.model.visual
        feats = encode_image_layers(visual, images, [self._last_layer])
        out = {"image": feats.image, "patch": feats.patches[self._last_layer]}
        for k, windows in self._windows.items():
            out[f"window{k}"] = encode_windows(visual, images, windows)
        return out

    # -- fit / score ------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, references: Sequence[ImageInput]) -> "WinCLIP":
        """Zero-shot for no references; otherwise build the WinCLIP+ patch/window memory."""
        self.text_features()
        if len(references) == 0:
            self.memory = None
            return self
        parts = self._encode_references(references, self._embed)
        keys = ["patch", *(f"window{k}" for k in self.window_sizes)]
        self.memory = {
            key: torch.cat([p[key].reshape(-1, p[key].shape[-1]) for p in parts]) for key in keys
        }
        return self

    @property
    def few_shot(self) -> bool:
        return self.memory is not None

    def zero_shot(self, emb: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(image probability (B,), zero-shot patch map (B, N))."""
        text, scale = self.text_features(), self.clip.logit_scale
        image_prob = two_class_probability(emb["image"], text, scale)
        n_patches = emb["patch"].shape[1]
        scale_maps = [image_prob[:, None].expand(-1, n_patches)]  # the whole-image window
        for k in self.window_sizes:
            window_prob = two_class_probability(emb[f"window{k}"], text, scale)
            scale_maps.append(window_to_patch_mean(window_prob, self._windows[k], n_patches, harmonic=True))
        return image_prob, torch.stack(scale_maps).mean(dim=0)

    def few_shot_map(self, emb: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over scales of nearest-neighbour distances to the reference memory, on patches (B, N)."""
        if self.memory is None:
            raise NotFittedError("WinCLIP+ needs fit(references) with at least one normal image")
        n_patches = emb["patch"].shape[1]
        maps = [nearest_distance(emb["patch"], self.memory["patch"])]
        for k in self.window_sizes:
            dist = nearest_distance(emb[f"window{k}"], self.memory[f"window{k}"])
            maps.append(window_to_patch_mean(dist, self._windows[k], n_patches))
        return torch.stack(maps).mean(dim=0)

    def _score_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self._embed(images)
        image_prob, zs_map = self.zero_shot(emb)
        if self.memory is None:
            patch_map = zs_map
            score = 0.5 * (image_prob + patch_map.amax(dim=1))
        else:
            fs_map = self.few_shot_map(emb)
            patch_map = 0.5 * (zs_map + fs_map)
            # WinCLIP+: the zero-shot image evidence plus the strongest few-shot deviation
            score = 0.5 * (image_prob + fs_map.amax(dim=1))
        grid = self.clip.grid_size
        return score, patch_map.view(-1, *grid)

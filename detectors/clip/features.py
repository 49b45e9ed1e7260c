"""Pure-torch feature extraction from an open_clip ViT: tapped layers, windows, prompts.

Intermediate layers are read with forward hooks on ``visual.transformer.resblocks[i]``
and projected into the joint space with ``ln_post`` + ``proj``, as WinCLIP, InCTRL and
AdaCLIP do. Blocks may run batch-first (N, L, D) or sequence-first (L, N, D); both are
handled. Extra tokens (AdaCLIP's visual prompts) are appended after the patch tokens, so
that token ``0`` is always the class token and ``1 .. 1+N`` the patches.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F


@dataclass
class VisionFeatures:
    """Normalised embeddings of a batch: class token (B, D) and patches per tapped layer (B, N, D)."""

    image: torch.Tensor
    patches: dict[int, torch.Tensor]
    grid: tuple[int, int]


def _batch_first(transformer: torch.nn.Module) -> bool:
    return bool(getattr(transformer, "batch_first", True))


def to_batch_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


def from_batch_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x if batch_first else x.transpose(0, 1)


def default_layers(depth: int, fractions: Sequence[float]) -> list[int]:
    """Block indices (0-based) at fractions of the depth: 7/12, 9/12, 11/12 of ViT-B gives 6, 8, 10."""
    layers = sorted({min(depth - 1, max(0, round(depth * f) - 1)) for f in fractions})
    return layers


def check_layers(layers: Sequence[int], depth: int) -> list[int]:
    bad = [i for i in layers if not 0 <= i < depth]
    if bad or not layers:
        raise ValueError(f"tapped layers must be block indices in 0..{depth - 1}; got {list(layers)}")
    return sorted(set(int(i) for i in layers))


def project_tokens(visual: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``ln_post`` then ``proj``: the tower's own map from token space to the joint space."""
    tokens = visual.ln_post(tokens)
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens


@contextmanager
def tap_blocks(visual: torch.nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Capture the batch-first output of the given residual blocks while the context is open."""
    captured: dict[int, torch.Tensor] = {}
    batch_first = _batch_first(visual.transformer)
    handles = []
    for index in layers:
        block = visual.transformer.resblocks[index]

        def hook(_module, _inputs, output, index=index):
            captured[index] = to_batch_first(output, batch_first)

        handles.append(block.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def encode_image_layers(
    visual: torch.nn.Module,
    images: torch.Tensor,
    layers: Sequence[int],
    *,
    visual_forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> VisionFeatures:
    """Class embedding and projected patch tokens of the tapped ``layers``, all L2-normalised (float32)."""
    grid = tuple(visual.grid_size)
    n_patches = grid[0] * grid[1]
    with tap_blocks(visual, layers) as captured:
        pooled = (visual_forward or visual)(images)
    if isinstance(pooled, tuple):  # towers built with output_tokens=True
        pooled = pooled[0]
    patches = {}
    for index in layers:
        tokens = captured[index][:, 1 : 1 + n_patches]
        patches[index] = F.normalize(project_tokens(visual, tokens).float(), dim=-1)
    return VisionFeatures(image=F.normalize(pooled.float(), dim=-1), patches=patches, grid=grid)


# -- WinCLIP windows -------------------------------------------------------------------------
def window_indices(grid: tuple[int, int], size: int, stride: int = 1) -> torch.Tensor:
    """Patch indices (n_windows, size*size) of all size x size windows on the token grid."""
    rows, cols = grid
    if size > min(rows, cols):
        raise ValueError(f"a {size}x{size} window does not fit a {rows}x{cols} token grid")
    index = torch.arange(rows * cols).view(rows, cols)
    windows = index.unfold(0, size, stride).unfold(1, size, stride)  # (r', c', size, size)
    return windows.reshape(-1, size * size)


def encode_windows(visual: torch.nn.Module, images: torch.Tensor, windows: torch.Tensor,
                   chunk: int = 4096) -> torch.Tensor:
    """Embed every window of every image by running the tower on that window's tokens only.

    As in WinCLIP, tokens outside the window are dropped (not zeroed): each window is a short
    sequence of the class token plus its patches, with their original position embeddings,
    so its class output is the embedding of that sub-image. Returns (B, n_windows, D), normalised.
    """
    batch_first = _batch_first(visual.transformer)
    tokens = visual._embeds(images)  # (B, 1 + N, W): position embedding and ln_pre applied
    batch, _, width = tokens.shape
    n_windows, window_len = windows.shape
    gather = torch.cat([torch.zeros(n_windows, 1, dtype=torch.long), windows + 1], dim=1).to(tokens.device)
    sequences = tokens[:, gather]  # (B, n_windows, 1 + k*k, W)
    sequences = sequences.reshape(batch * n_windows, window_len + 1, width)
    outputs = []
    for start in range(0, sequences.shape[0], chunk):
        x = to_batch_first(sequences[start : start + chunk], batch_first)
        x = from_batch_first(visual.transformer(x), batch_first)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        outputs.append(pooled)
    embedded = torch.cat(outputs).view(batch, n_windows, -1)
    return F.normalize(embedded.float(), dim=-1)


def window_to_patch_mean(values: torch.Tensor, windows: torch.Tensor, n_patches: int,
                         harmonic: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """Aggregate per-window values (B, n_windows) onto the patches each window covers -> (B, N).

    ``harmonic=True`` gives WinCLIP's harmonic mean, which lets one confident normal
    window pull a patch down and so sharpens the map at object borders.
    """
    batch = values.shape[0]
    index = windows.to(values.device).reshape(-1)
    per_slot = values.repeat_interleave(windows.shape[1], dim=1)
    if harmonic:
        per_slot = 1.0 / per_slot.clamp_min(eps)
    total = torch.zeros(batch, n_patches, device=values.device, dtype=values.dtype)
    count = torch.zeros(n_patches, device=values.device, dtype=values.dtype)
    total.index_add_(1, index, per_slot)
    count.index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    mean = total / count.clamp_min(1)
    return 1.0 / mean.clamp_min(eps) if harmonic else mean


def two_class_probability(features: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over [normal, anomalous] text embeddings; returns p(anomalous), shape features[..., 0]."""
    logits = scale * features @ text.T
    return logits.softmax(dim=-1)[..., 1]


def nearest_distance(query: torch.Tensor, memory: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """0.5 * (1 - max cosine) from each query row (..., D) to a memory (M, D) of normalised rows."""
    flat = query.reshape(-1, query.shape[-1])
    best = []
    for start in range(0, memory.shape[0], chunk):
        best.append((flat @ memory[start : start + chunk].T).amax(dim=1))
    similarity = torch.stack(best, dim=1).amax(dim=1)
    return (0.5 * (1.0 - similarity)).clamp_min(0).view(query.shape[:-1])


def upsample_map(grid_map: torch.Tensor, size_wh: tuple[int, int], sigma: float = 0.0) -> torch.Tensor:
    """Bilinear resize of a (h, w) token-grid map to the image's (H, W), optionally Gaussian-smoothed."""
    width, height = size_wh
    out = F.interpolate(grid_map[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = max(1, int(3 * sigma))
        xs = torch.arange(-radius, radius + 1, dtype=torch.float32, device=out.device)
        kernel = torch.exp(-(xs**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        out = F.pad(out, (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1))
        out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[0, 0]

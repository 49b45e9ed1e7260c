"""PatchCore's numerical core, in plain torch (no images, no I/O, no pydantic).

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022):

1. :func:`embed_patches` -- multi-layer patch features with local neighbourhood
   aggregation: each layer is average-pooled over a ``k x k`` window, deeper (coarser)
   layers are upsampled to the finest layer's grid, and the layers are concatenated.
2. :func:`greedy_coreset` -- a memory bank that covers the reference patches with few
   entries (farthest-point sampling on a random projection).
3. :func:`nearest_distances` -- each query patch's distance to its nearest bank entry,
   computed in chunks to bound memory.
4. :func:`distance_map` -- the patch distances as a map, upsampled and Gaussian-smoothed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def embed_patches(feature_maps: Mapping[str, torch.Tensor], layers: Sequence[str],
                  neighbourhood: int = 3, grid_layer: str | None = None) -> torch.Tensor:
    """Concatenate locally aggregated features of ``layers`` on one grid.

    The grid is ``grid_layer``'s (default: the finest layer's). Coarser layers are
    upsampled bilinearly; finer ones are average-pooled down, which keeps their
    fine-detail response while the number of patches -- and so the cost of the
    nearest-neighbour search -- stays that of the coarser grid.

    Each layer's features are L2-normalised per patch before concatenation, so that a
    layer with large activations cannot drown the others (EfficientNet's deeper blocks
    are an order of magnitude larger than its shallow ones).

    Returns a ``(B, D, h, w)`` tensor, ``h, w`` being the finest layer's grid.
    """
    if not layers:
        raise ValueError("embed_patches needs at least one layer")
    maps = [feature_maps[layer] for layer in layers]
    if grid_layer is None:
        target = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    else:
        target = feature_maps[grid_layer].shape[-2:]
    pad = neighbourhood // 2
    out = []
    for m in maps:
        m = m.float()
        if neighbourhood > 1:
            m = F.avg_pool2d(m, kernel_size=neighbourhood, stride=1, padding=pad, count_include_pad=False)
        h, w = m.shape[-2:]
        if (h, w) != tuple(target):
            if h >= target[0] and w >= target[1]:
                m = F.adaptive_avg_pool2d(m, tuple(target))
            else:
                m = F.interpolate(m, size=tuple(target), mode="bilinear", align_corners=False)
        out.append(F.normalize(m, dim=1))
    return torch.cat(out, dim=1)


def flatten_patches(embedding: torch.Tensor) -> torch.Tensor:
    """``(B, D, h, w)`` -> ``(B*h*w, D)``, row-major over (b, y, x)."""
    b, d, h, w = embedding.shape
    return embedding.permute(0, 2, 3, 1).reshape(b * h * w, d)


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128,
                   seed: int = 0, start_index: int = 0) -> torch.Tensor:
    """Indices of ``n_select`` rows of ``features`` chosen by greedy farthest-point sampling.

    Distances are computed on a fixed random projection to ``projection_dim`` dimensions
    (Johnson-Lindenstrauss, as in the paper) to make each iteration cheap. Deterministic
    for a given ``seed`` and ``start_index``.
    """
    n, d = features.shape
    if n_select >= n:
        return torch.arange(n)
    if n_select < 1:
        raise ValueError(f"n_select must be >= 1, got {n_select}")
    x = features.float()
    if projection_dim and projection_dim < d:
        gen = torch.Generator().manual_seed(seed)
        proj = torch.randn(d, projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    x = x.contiguous()
    sq_norms = (x * x).sum(dim=1)
    selected = torch.empty(n_select, dtype=torch.long)
    idx = int(start_index) % n
    min_dist = torch.full((n,), float("inf"))
    dist = torch.empty(n)
    for i in range(n_select):
        selected[i] = idx
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix-vector product per step, not three passes
        torch.mv(x, x[idx], out=dist)
        dist.mul_(-2.0).add_(sq_norms).add_(sq_norms[idx])
        torch.minimum(min_dist, dist, out=min_dist)
        idx = int(torch.argmax(min_dist))
    return selected


def nearest_distances(query: torch.Tensor, bank: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest row of ``bank`` (``(N,)``)."""
    if bank.shape[0] == 0:
        raise ValueError("the memory bank is empty")
    out = torch.empty(query.shape[0], dtype=torch.float32)
    bank = bank.float()
    bank_sq = (bank * bank).sum(dim=1)
    for start in range(0, query.shape[0], chunk_size):
        q = query[start:start + chunk_size].float()
        # |q-b|^2 = |q|^2 - 2 q.b + |b|^2, one matrix product per chunk
        d2 = (q * q).sum(dim=1, keepdim=True) - 2.0 * (q @ bank.T) + bank_sq[None, :]
        out[start:start + chunk_size] = d2.min(dim=1).values.clamp_min_(0.0).sqrt_()
    return out


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(1, 1, H, W)`` tensor, reflect-padded."""
    if sigma <= 0:
        return image
    k = gaussian_kernel1d(sigma)
    r = k.numel() // 2
    h, w = image.shape[-2:]
    mode = "reflect" if min(h, w) > r else "replicate"
    x = F.pad(image, (r, r, 0, 0), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode=mode)
    return F.conv2d(x, k.view(1, 1, -1, 1))


def distance_map(patch_distances: torch.Tensor, grid: tuple[int, int], size: tuple[int, int],
                 sigma: float) -> torch.Tensor:
    """Patch distances on a ``grid`` = (h, w) -> ``(H, W)`` map at ``size`` = (H, W), smoothed."""
    m = patch_distances.reshape(1, 1, *grid)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(m, sigma)[0, 0]

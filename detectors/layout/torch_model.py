"""The layout detector's numerical core, in plain torch (no images, no I/O).

A positional patch memory: each query patch is compared only with the references'
patches at (nearly) the same place, within ``window`` grid cells. PatchCore asks "does this
patch exist anywhere in the references?" and so cannot see an empty compartment, a label
on the wrong side or a fourth fruit: each of those looks normal *somewhere*. Here, a patch
must look like what the references show *there*.

That question only sees what the query *adds*: where a part is missing, the query shows the
background that some reference also shows nearby, and every one of its patches finds a match.
So the comparison also runs the other way (:func:`missing_distances`): each reference patch
must find its like in the query, at (nearly) the same place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalise(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> per-patch unit vectors, so distances compare directions only."""
    return F.normalize(features.float(), dim=1)


def to_grid(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``(B, C, h, w)`` features onto ``grid`` = (h, w) (images of another size)."""
    if tuple(features.shape[-2:]) == tuple(grid):
        return features
    return F.interpolate(features, size=tuple(grid), mode="bilinear", align_corners=False)


def positional_distances(query: torch.Tensor, references: Sequence[torch.Tensor], window: int,
                         skip_centre: bool = False) -> torch.Tensor:
    """Per-cell squared distance of ``query`` (C, h, w) to the nearest reference patch
    within ``window`` cells of the same position; returns ``(h, w)``.

    ``skip_centre`` leaves out the zero offset: a single reference compared with itself.
    """
    if not references:
        raise ValueError("positional_distances needs at least one reference")
    c, h, w = query.shape
    best = torch.full((h, w), float("inf"))
    inside = F.pad(torch.ones(1, h, w), (window, window, window, window), value=0.0)[0] > 0
    for ref in references:
        padded = F.pad(ref, (window, window, window, window), value=0.0)
        for dy in range(2 * window + 1):
            for dx in range(2 * window + 1):
                if skip_centre and dy == window and dx == window:
                    continue
                d = ((query - padded[:, dy:dy + h, dx:dx + w]) ** 2).sum(0)
                # an offset that falls outside the reference is no match
                d = d.masked_fill(~inside[dy:dy + h, dx:dx + w], float("inf"))
                best = torch.minimum(best, d)
    return best


def missing_distances(query: torch.Tensor, references: Sequence[torch.Tensor], window: int,
                      fraction: float) -> tuple[float, torch.Tensor]:
    """What the query lacks of its closest reference: ``(raw score, (h, w) map)``.

    Per reference, the squared distance of each of its patches to the nearest query patch within
    ``window`` cells, summed up by :func:`top_mean` over ``fraction`` of its cells; the
    reference with the smallest sum is the closest, and its sum and map are returned. Taking the
    closest reference keeps normal variation out: where a cable takes one of several routes, a
    normal query matches a reference whose cable takes its route, but a query without a cable
    lacks one against every reference.
    """
    if not references:
        raise ValueError("missing_distances needs at least one reference")
    maps = [positional_distances(ref, [query], window) for ref in references]
    raws = [top_mean(m, fraction) for m in maps]
    closest = min(range(len(raws)), key=raws.__getitem__)
    return raws[closest], maps[closest]


def top_mean(distances: torch.Tensor, fraction: float) -> float:
    """Mean of the largest ``fraction`` of the cells (at least one): the image's raw score."""
    flat = distances.flatten()
    k = max(1, int(round(fraction * flat.numel())))
    return float(flat.topk(k).values.mean())

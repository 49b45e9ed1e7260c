"""A synthetic, LOCO-like image generator for tests, demos and users without the dataset.

The five MVTec LOCO AD categories are rendered procedurally (numpy, scipy) with the
geometry of the real photographs, the rules of the built-in rule packs, logical
anomalies of the dataset's kinds (quantity, size/length, position/arrangement,
matching) and structural defects (scratch, contamination, broken part). Every
sample is deterministic for ``(seed, category, index, kind, anomaly type)``.

>>> gen = SynthGenerator("screw_bag", seed=3, scale=0.25)
>>> s = gen.sample(0, kind="logical", anomaly_type="missing_nut")
>>> s.part_counts["nut"], s.mask.any()
(1, True)
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .render import finish
from .scenes import (
    LOGICAL_TYPES,
    NOMINAL_SIZE,
    PART_NAMES,
    SCENES,
    STRUCTURAL_TYPES,
    apply_structural,
)

CATEGORIES: tuple[str, ...] = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")

Kind = Literal["good", "logical", "structural"]
_KIND_CODE = {"good": 0, "logical": 1, "structural": 2}

__all__ = [
    "CATEGORIES", "LOGICAL_TYPES", "STRUCTURAL_TYPES", "SynthError", "SynthGenerator", "SynthSample",
    "generate_dataset", "full_size",
]


class SynthError(ValueError):
    """Bad generator arguments (unknown category, kind or anomaly type, bad scale)."""


class SynthSample(BaseModel):
    """One rendered image and its ground truth."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    category: str
    index: int
    label: Kind
    anomaly_type: Optional[str] = None
    reason: str = Field(description="one sentence; for good images, why it is normal")
    image: np.ndarray = Field(exclude=True, description="(H, W, 3) uint8")
    mask: np.ndarray = Field(exclude=True, description="(H, W) bool, empty for good images")
    part_map: np.ndarray = Field(exclude=True, description="(H, W) uint8: 0 background, i = part_names[i-1]")
    part_names: list[str]
    part_counts: dict[str, int] = Field(description="ground-truth number of each discrete part")
    facts: dict[str, Any] = Field(default_factory=dict, description="measured ground truth, e.g. screw lengths")


def full_size(category: str) -> tuple[int, int]:
    """(width, height) of the real LOCO images of ``category`` (scale 1.0)."""
    _check_category(category)
    return NOMINAL_SIZE[category]


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise SynthError(f"Unknown category '{category}'. Known categories: {', '.join(CATEGORIES)}.")


class SynthGenerator:
    """Renders samples of one category at ``scale`` times the LOCO resolution."""

    def __init__(self, category: str, seed: int = 0, scale: float = 0.5) -> None:
        _check_category(category)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SynthError(f"seed must be a non-negative integer, got {seed!r}.")
        if not (0.05 <= float(scale) <= 2.0):
            raise SynthError(f"scale must be between 0.05 and 2.0, got {scale!r}.")
        self.category = category
        self.seed = int(seed)
        self.scale = float(scale)
        self.part_names = list(PART_NAMES[category])
        self.logical_types = LOGICAL_TYPES[category]
        self.structural_types = STRUCTURAL_TYPES

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images this generator renders."""
        w, h = NOMINAL_SIZE[self.category]
        return max(8, int(round(w * self.scale))), max(8, int(round(h * self.scale)))

    def anomaly_types(self, kind: Kind) -> tuple[str, ...]:
        if kind == "logical":
            return self.logical_types
        if kind == "structural":
            return self.structural_types
        return ()

    def sample(self, index: int, kind: Kind = "good", anomaly_type: str | None = None) -> SynthSample:
        """Render image ``index`` of ``kind``; ``anomaly_type`` defaults to cycling through the kind's types."""
        if kind not in _KIND_CODE:
            raise SynthError(f"Unknown kind '{kind}': use 'good', 'logical' or 'structural'.")
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise SynthError(f"index must be a non-negative integer, got {index!r}.")
        types = self.anomaly_types(kind)
        if kind == "good":
            if anomaly_type is not None:
                raise SynthError(f"A good sample has no anomaly type, got '{anomaly_type}'.")
        elif anomaly_type is None:
            anomaly_type = types[int(index) % len(types)]
        elif anomaly_type not in types:
            raise SynthError(
                f"Unknown {kind} anomaly type '{anomaly_type}' for {self.category}. Known: {', '.join(types)}."
            )
        type_code = zlib.crc32((anomaly_type or "").encode())
        rng = np.random.default_rng([self.seed, CATEGORIES.index(self.category), int(index), _KIND_CODE[kind], type_code])
        build = SCENES[self.category](rng, self.scale, anomaly_type if kind == "logical" else None)
        if kind == "structural":
            apply_structural(build, rng, self.category, anomaly_type)
        cv = build.cv
        image = finish(cv, rng)
        mask = build.anomaly_mask if build.anomaly_mask is not None else np.zeros((cv.height, cv.width), dtype=bool)
        if kind == "good":
            mask = np.zeros_like(mask)
            reason = "Everything matches the normality rules of the category."
        else:
            reason = build.reason
            if not mask.any():  # an anomaly must be visible somewhere; never hand out an empty mask
                raise RuntimeError(f"internal error: empty mask for {self.category} {kind} {anomaly_type} #{index}")
        return SynthSample(
            category=self.category, index=int(index), label=kind, anomaly_type=anomaly_type, reason=reason,
            image=image, mask=mask, part_map=cv.parts, part_names=list(self.part_names),
            part_counts=dict(build.counts), facts=dict(build.facts),
        )


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def generate_dataset(
    out: str | Path,
    seed: int = 0,
    categories: list[str] | tuple[str, ...] | str | None = None,
    per_split: int = 10,
    scale: float = 0.5,
    *,
    progress: Any = None,
) -> dict[str, Any]:
    """Write the MVTec LOCO AD layout for each category under ``out``.

    Every split folder (``train/good``, ``validation/good``, ``test/good``,
    ``test/logical_anomalies``, ``test/structural_anomalies``) gets ``per_split`` images;
    anomalies cycle through their category's types. Alongside: one mask per anomaly in
    ``ground_truth/<split>/<id>/000.png``, ``labels.jsonl`` (every test image),
    ``meta.jsonl`` (part counts and facts of every image) and ``rules.yaml``.
    ``progress``, if given, is called with ``(category, done, total)``.
    """
    from prompts.rules import NormalityRules

    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    cats = list(categories) if categories else list(CATEGORIES)
    for c in cats:
        _check_category(c)
    if not isinstance(per_split, (int, np.integer)) or per_split < 1:
        raise SynthError(f"per_split must be a positive integer, got {per_split!r}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SynthError(f"Output '{out}' exists and is not a directory.")
    start = time.perf_counter()
    summary: dict[str, Any] = {"root": str(out), "seed": int(seed), "scale": float(scale), "categories": {}}
    plan = [
        ("train", "good", "good", 0),
        ("validation", "good", "good", 10_000),
        ("test", "good", "good", 20_000),
        ("test", "logical_anomalies", "logical", 0),
        ("test", "structural_anomalies", "structural", 0),
    ]
    for cat in cats:
        gen = SynthGenerator(cat, seed=seed, scale=scale)
        root = out / cat
        root.mkdir(parents=True, exist_ok=True)
        labels, meta = [], []
        counts: dict[str, int] = {}
        done, total = 0, per_split * len(plan)
        for split, folder, kind, offset in plan:
            for i in range(per_split):
                s = gen.sample(offset + i, kind=kind)
                rel = f"{split}/{folder}/{i:03d}.png"
                _save_png(root / rel, s.image)
                if kind != "good":
                    _save_png(root / "ground_truth" / folder / f"{i:03d}" / "000.png", s.mask.astype(np.uint8) * 255)
                if split == "test":
                    labels.append({"file": rel, "label": s.label, "anomaly_type": s.anomaly_type, "reason": s.reason})
                meta.append({"file": rel, "label": s.label, "anomaly_type": s.anomaly_type,
                             "part_counts": s.part_counts, "facts": s.facts})
                counts[f"{split}/{folder}"] = counts.get(f"{split}/{folder}", 0) + 1
                done += 1
                if progress is not None:
                    progress(cat, done, total)
        (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels), encoding="utf-8")
        (root / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta), encoding="utf-8")
        (root / "rules.yaml").write_text(NormalityRules.for_category(cat).to_yaml(), encoding="utf-8")
        summary["categories"][cat] = {"images": done, "splits": counts, "size": list(gen.size)}
    summary["images"] = sum(v["images"] for v in summary["categories"].values())
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m detectors.data.synth OUT --seed N [--categories a,b] [--per-split N] [--scale S]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="logiscan synth", description="Write a synthetic MVTec LOCO-like dataset.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default=None, help="comma-separated subset of: " + ", ".join(CATEGORIES))
    parser.add_argument("--per-split", type=int, default=10)
    parser.add_argument("--scale", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(args.out, seed=args.seed, categories=args.categories,
                                   per_split=args.per_split, scale=args.scale)
    except SynthError as exc:
        parser.error(str(exc))
    print(json.dumps(summary, indent=2))
    return 0

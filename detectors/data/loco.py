"""Reader for the MVTec LOCO AD layout (and the synthetic generator's copy of it).

One category folder looks like::

    <category>/
      train/good/*.png
      validation/good/*.png                      (optional)
      test/good/*.png
      test/logical_anomalies/*.png
      test/structural_anomalies/*.png
      ground_truth/logical_anomalies/<id>/*.png  (one or several masks per image)
      ground_truth/structural_anomalies/<id>/*.png
      labels.jsonl, rules.yaml | rules.json      (optional)

Masks stored flat, ``ground_truth/<defect>/<id>.png``, are accepted too (the real
slice in ``shared/loco/juice_bottle`` is stored that way).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
#: test sub-folder -> label
DEFECT_LABELS: dict[str, str] = {"good": "good", "logical_anomalies": "logical", "structural_anomalies": "structural"}
Label = Literal["good", "logical", "structural"]

__all__ = ["LocoDataset", "LocoItem", "LocoLayoutError", "SPLITS"]


class LocoLayoutError(ValueError):
    """A folder does not follow the MVTec LOCO AD layout. The message names what is missing."""


class LocoItem(BaseModel):
    """One image of the dataset and what is known about it."""

    model_config = ConfigDict(frozen=True)

    path: Path
    split: Literal["train", "validation", "test"]
    label: Label
    defect_type: str
    image_id: str
    mask_paths: list[Path] = []
    anomaly_type: Optional[str] = None
    reason: Optional[str] = None

    @property
    def is_anomalous(self) -> bool:
        return self.label != "good"


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class LocoDataset:
    """One category of MVTec LOCO AD: its items, masks, optional labels and rules."""

    def __init__(self, root: str | Path, *, require_masks: bool = True) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise LocoLayoutError(f"Dataset folder '{self.root}' does not exist.")
        if not self.root.is_dir():
            raise LocoLayoutError(f"Dataset path '{self.root}' is a file, not a category folder.")
        self.category = self.root.name
        self.require_masks = require_masks
        self.labels: dict[str, dict] = self._read_labels()
        self._items: list[LocoItem] = self._scan()
        self._rules = None

    # -- discovery -------------------------------------------------------------
    @classmethod
    def discover(cls, root: str | Path, **kwargs) -> list["LocoDataset"]:
        """Every category under a dataset root (or ``root`` itself if it is one category).

        Sub-folders that hold no images at all are skipped; a folder that looks like a
        category but breaks the layout raises :class:`LocoLayoutError`.
        """
        root = Path(root)
        if not root.is_dir():
            raise LocoLayoutError(f"Dataset root '{root}' does not exist or is not a folder.")
        if cls._looks_like_category(root):
            return [cls(root, **kwargs)]
        found = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if cls._looks_like_category(sub):
                found.append(cls(sub, **kwargs))
        if not found:
            raise LocoLayoutError(
                f"No MVTec LOCO categories found under '{root}': expected category folders with "
                "'train/good' and 'test/' sub-folders holding images."
            )
        return found

    @staticmethod
    def _looks_like_category(folder: Path) -> bool:
        if not any((folder / s).is_dir() for s in SPLITS):
            return False
        return any(p.suffix.lower() in IMAGE_SUFFIXES for s in SPLITS for p in (folder / s).rglob("*") if p.is_file())

    # -- scanning -------------------------------------------------------------
    def _read_labels(self) -> dict[str, dict]:
        path = self.root / "labels.jsonl"
        if not path.is_file():
            return {}
        out: dict[str, dict] = {}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LocoLayoutError(f"'{path}' line {n} is not valid JSON: {exc.msg}.") from exc
            if not isinstance(row, dict) or "file" not in row:
                raise LocoLayoutError(f"'{path}' line {n} must be an object with a 'file' key.")
            out[str(row["file"]).replace("\\", "/")] = row
        return out

    def _scan(self) -> list[LocoItem]:
        problems: list[str] = []
        train = self.root / "train" / "good"
        if not train.is_dir():
            problems.append("folder 'train/good' is missing")
        elif not _images(train):
            problems.append("folder 'train/good' holds no images")
        test = self.root / "test"
        if test.is_dir():
            unknown = sorted(p.name for p in test.iterdir() if p.is_dir() and p.name not in DEFECT_LABELS)
            if unknown:
                problems.append(f"folder 'test' has unknown sub-folders {unknown} (expected {list(DEFECT_LABELS)})")
        items: list[LocoItem] = []
        for split in SPLITS:
            for defect, label in DEFECT_LABELS.items():
                if split != "test" and defect != "good":
                    continue
                for path in _images(self.root / split / defect):
                    image_id = path.stem
                    masks: list[Path] = []
                    if label != "good":
                        masks = self._masks_for(defect, image_id)
                        if not masks and self.require_masks:
                            problems.append(
                                f"no ground-truth mask for '{split}/{defect}/{path.name}' "
                                f"(looked for 'ground_truth/{defect}/{image_id}/*.png' and "
                                f"'ground_truth/{defect}/{image_id}.png')"
                            )
                    rel = f"{split}/{defect}/{path.name}"
                    meta = self.labels.get(rel, {})
                    items.append(LocoItem(
                        path=path, split=split, label=label, defect_type=defect, image_id=image_id,
                        mask_paths=masks, anomaly_type=meta.get("anomaly_type"), reason=meta.get("reason"),
                    ))
        if problems:
            shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
            hint = ""
            inner = [p.name for p in sorted(self.root.iterdir()) if p.is_dir() and self._looks_like_category(p)]
            if inner and not train.is_dir():
                hint = (f" It looks like a dataset root holding the categories {inner}: "
                        "use LocoDataset.discover() for it, or pass one category folder.")
            raise LocoLayoutError(
                f"'{self.root}' is not a valid MVTec LOCO category folder: " + "; ".join(shown) + "." + hint
            )
        return items

    def _masks_for(self, defect: str, image_id: str) -> list[Path]:
        gt = self.root / "ground_truth" / defect
        nested = _images(gt / image_id)
        if nested:
            return nested
        flat = [gt / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
        return [p for p in flat if p.is_file()][:1]

    # -- access ---------------------------------------------------------------
    def items(self, split: str | None = None, label: str | None = None) -> list[LocoItem]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"Unknown split '{split}': use one of {', '.join(SPLITS)}.")
        if label is not None and label not in ("good", "logical", "structural"):
            raise ValueError(f"Unknown label '{label}': use 'good', 'logical' or 'structural'.")
        return [it for it in self._items if (split is None or it.split == split) and (label is None or it.label == label)]

    def train_good(self) -> list[LocoItem]:
        return self.items("train")

    def validation_good(self) -> list[LocoItem]:
        return self.items("validation")

    def test(self) -> list[LocoItem]:
        return self.items("test")

    def __iter__(self) -> Iterator[LocoItem]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        counts = {s: len(self.items(s)) for s in SPLITS}
        return f"LocoDataset(category={self.category!r}, root='{self.root}', {counts})"

    def image(self, item: LocoItem) -> np.ndarray:
        """The item's image as an ``(H, W, 3)`` uint8 array (through :func:`detectors.images.load_image`)."""
        from detectors.images import to_array

        return to_array(item.path, max_side=None)

    def mask(self, item: LocoItem, size: tuple[int, int] | None = None) -> np.ndarray:
        """Union of the item's masks as an ``(H, W)`` bool array at the image's size (or ``size`` = (W, H)).

        Empty (all False) for good items.
        """
        from PIL import Image, ImageOps

        if size is None:
            with Image.open(item.path) as im:
                size = im.size
                # the image is read upright (EXIF orientation), so its mask is at the upright size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                    size = size[::-1]
        w, h = size
        out = np.zeros((h, w), dtype=bool)
        for mpath in item.mask_paths:
            try:
                with Image.open(mpath) as m:
                    m = ImageOps.exif_transpose(m).convert("L")
                    if m.size != (w, h):
                        m = m.resize((w, h), Image.Resampling.NEAREST)
                    out |= np.asarray(m) > 0
            except OSError as exc:
                raise LocoLayoutError(f"Cannot read mask '{mpath}': {exc}.") from exc
        return out

    @property
    def rules(self):
        """The category's :class:`prompts.rules.NormalityRules` from ``rules.yaml``/``rules.json``, or None."""
        if self._rules is None:
            from prompts.rules import NormalityRules

            for name in ("rules.yaml", "rules.yml", "rules.json"):
                path = self.root / name
                if path.is_file():
                    self._rules = NormalityRules.from_file(path)
                    break
        return self._rules

    def summary(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in self._items:
            key = f"{it.split}/{it.defect_type}"
            out[key] = out.get(key, 0) + 1
        return out

"""Naming parsed scene parts with CLIP's text side.

The scene parser finds parts without knowing what they are; the rules speak of "an orange",
"a washer", "a blue cable". :class:`CLIPPartLabeler` crops each part's components from the
image (optionally blanking pixels of other parts), scores the crops against prompts built
from the candidate labels, and aggregates the probabilities per part, weighted by area.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..images import ImageInput, load_image
from ..schema import Component, Scene
from .loading import ClipModel, load_clip

#: templates for naming an object crop; averaged per label like CLIP's zero-shot classifier
LABEL_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a close-up photo of {}.",
    "a cropped photo of {}.",
    "an industrial photo of {}.",
)


def _with_article(label: str) -> str:
    label = " ".join(label.split())
    first = label.split(" ", 1)[0].lower()
    if first in {"a", "an", "the", "some", "two", "one"} or label.endswith("s") and not label.endswith("ss"):
        return label
    return ("an " if label[0].lower() in "aeiou" else "a ") + label


def _checked_labels(labels) -> list[str]:
    labels = [str(l).strip() for l in labels]
    if not labels or any(not l for l in labels):
        raise ValueError(f"labels must be a non-empty list of non-empty strings, got {labels!r}")
    return labels


def labels_from_rules(rules) -> list[str]:
    """Candidate part names from a rule pack: the subjects of its structured checks."""
    subjects = [r.check.subject for r in rules.rules if r.check is not None and r.check.subject]
    return list(dict.fromkeys(" ".join(s.split()) for s in subjects))


class CLIPPartLabeler:
    """``label(image, scene, labels) -> {part_id: (label, probability)}`` for the scene parser."""

    def __init__(self, clip: Optional[ClipModel] = None, *, model_name: str = "ViT-B-16-plus-240",
                 pretrained: Optional[str] = "laion400m_e32", margin: float = 0.15, min_crop: int = 16,
                 use_masks: bool = True, batch_size: int = 32, labels: Optional[Sequence[str]] = None,
                 **load_kwargs) -> None:
        self.labels = _checked_labels(labels) if labels is not None else None
        self.clip = clip if clip is not None else load_clip(model_name, pretrained, **load_kwargs)
        if not isinstance(self.clip, ClipModel):
            raise TypeError(f"clip must be a ClipModel from load_clip(), not {type(self.clip).__name__}")
        self.margin = margin
        self.min_crop = min_crop
        self.use_masks = use_masks
        self.batch_size = batch_size

    def label_embeddings(self, labels: Sequence[str]) -> torch.Tensor:
        """(n_labels, D) normalised, each the mean over :data:`LABEL_TEMPLATES`."""
        rows = []
        for label in labels:
            sentences = [t.format(_with_article(label)) for t in LABEL_TEMPLATES]
            rows.append(torch.nn.functional.normalize(self.clip.encode_text(sentences).mean(0), dim=-1))
        return torch.stack(rows)

    def _crop(self, pixels: np.ndarray, component: Component, part_index: int,
              segmentation: Optional[np.ndarray]) -> np.ndarray:
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = component.bbox
        pad_x = max(int((x1 - x0) * self.margin), (self.min_crop - (x1 - x0)) // 2, 0)
        pad_y = max(int((y1 - y0) * self.margin), (self.min_crop - (y1 - y0)) // 2, 0)
        x0, x1 = max(0, x0 - pad_x), min(width, x1 + pad_x)
        y0, y1 = max(0, y0 - pad_y), min(height, y1 + pad_y)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"component {component.id} of part {component.part!r} has an empty bbox {component.bbox}")
        crop = pixels[y0:y1, x0:x1].copy()
        if self.use_masks and segmentation is not None:
            # grey out pixels of other parts so that a neighbour does not name this part
            keep = segmentation[y0:y1, x0:x1]
            other = (keep != part_index) & (keep != 0)
            crop[other] = 127
        return crop

    @torch.no_grad()
    def crop_probabilities(self, crops: Sequence[ImageInput], labels: Sequence[str]) -> np.ndarray:
        """(n_crops, n_labels) softmax probabilities of each crop against the label prompts."""
        text = self.label_embeddings(labels)
        probabilities = []
        for start in range(0, len(crops), self.batch_size):
            batch, _ = self.clip.to_tensor(crops[start : start + self.batch_size])
            emb = torch.nn.functional.normalize(self.clip.model.encode_image(batch).float(), dim=-1)
            probabilities.append((self.clip.logit_scale * emb @ text.T).softmax(dim=-1))
        return torch.cat(probabilities).cpu().numpy()

    @classmethod
    def from_rules(cls, rules, clip: Optional[ClipModel] = None, **kwargs) -> "CLIPPartLabeler":
        """A labeller whose candidate names are the subjects of the rules' checks."""
        labels = labels_from_rules(rules)
        if not labels:
            raise ValueError(f"the rules of {rules.category!r} have no structured checks to take part names from")
        return cls(clip, labels=labels, **kwargs)

    def name_parts(self, crops: dict[str, Sequence[ImageInput]],
                   labels: Optional[Sequence[str]] = None) -> dict[str, str]:
        """{part_id: name} from crops of each part (the hook ``SceneParser`` calls after fitting).

        Each part takes the label with the highest mean probability over its crops; the
        candidates are ``labels`` or those given to the constructor.
        """
        candidates = labels if labels is not None else self.labels
        if candidates is None:
            raise ValueError("no candidate labels: pass labels= to CLIPPartLabeler(...) or use from_rules(rules)")
        candidates = _checked_labels(candidates)
        names = {}
        for part, part_crops in crops.items():
            if len(part_crops) == 0:
                continue
            mean = self.crop_probabilities(list(part_crops), candidates).mean(axis=0)
            names[part] = candidates[int(np.argmax(mean))]
        return names

    @torch.no_grad()
    def scores(self, image: ImageInput, scene: Scene, labels: Sequence[str]) -> dict[str, np.ndarray]:
        """Per part, the area-weighted mean probability of each label (parts without components are absent)."""
        labels = _checked_labels(labels)
        pil = load_image(image)
        if tuple(pil.size) != tuple(scene.image_size):
            raise ValueError(f"the image is {pil.size[0]}x{pil.size[1]} but the scene was parsed at "
                             f"{scene.image_size[0]}x{scene.image_size[1]}")
        pixels = np.asarray(pil)
        part_index = {part.id: i + 1 for i, part in enumerate(scene.parts)}
        unknown = sorted({c.part for c in scene.components} - set(part_index))
        if unknown:
            raise ValueError(f"components refer to parts {unknown} that the scene does not list")
        components = [c for c in scene.components if c.area > 0]
        if not components:
            return {}
        crops = [self._crop(pixels, c, part_index[c.part], _at_size(scene.segmentation, pixels.shape[:2]))
                 for c in components]
        probs = self.crop_probabilities(crops, labels)
        totals: dict[str, np.ndarray] = {}
        weights: dict[str, float] = {}
        for component, prob in zip(components, probs):
            totals[component.part] = totals.get(component.part, 0) + component.area * prob
            weights[component.part] = weights.get(component.part, 0.0) + component.area
        return {part: totals[part] / weights[part] for part in totals}

    def label(self, image: ImageInput, scene: Scene, labels: list[str]) -> dict[str, tuple[str, float]]:
        """The most probable label of each part with components, and its probability."""
        labels = list(labels)
        return {
            part: (labels[int(np.argmax(p))], float(np.max(p)))
            for part, p in self.scores(image, scene, labels).items()
        }


def _at_size(segmentation: Optional[np.ndarray], shape: tuple[int, int]) -> Optional[np.ndarray]:
    """The parser keeps its label map at its working size; bboxes are in image pixels."""
    if segmentation is None or segmentation.shape[:2] == tuple(shape):
        return segmentation
    rows = (np.arange(shape[0]) * segmentation.shape[0] // shape[0]).clip(0, segmentation.shape[0] - 1)
    cols = (np.arange(shape[1]) * segmentation.shape[1] // shape[1]).clip(0, segmentation.shape[1] - 1)
    return segmentation[rows[:, None], cols[None, :]]

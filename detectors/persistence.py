"""Shared glue of the fitted, backbone-based detectors (PatchCore, LayoutDetector): the checks
on a reference list, the leave-one-out calibration map, and saving to / loading from a folder of
``config.json`` plus ``state.pt`` (tensors only, read back without unpickling objects)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import logistic_calibration

CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"


def reference_count(who: str, references: Any, features: Sequence | None, max_references: int) -> int:
    """How many references ``who.fit`` got, or a clear error for a non-list, none or too many."""
    if isinstance(references, (str, bytes, np.ndarray)) or not isinstance(references, Sequence):
        raise TypeError(f"{who}.fit expects a list of reference images (paths, PIL images, arrays or bytes), "
                        f"got {type(references).__name__}.")
    n = len(references) if features is None else len(features)
    if n < 1:
        raise ValueError(f"{who}.fit needs at least 1 normal reference image; got none.")
    if n > max_references:
        raise ValueError(f"{who}.fit got {n} references; at most {max_references} are used "
                         f"(pass a subset, or raise max_references).")
    if features is not None and len(references) not in (0, n):
        raise ValueError(f"{who}.fit: references and features must have the same length.")
    return n


def calibrate(raw: torch.Tensor | float, loo_scores: torch.Tensor, sigmas: float) -> torch.Tensor:
    """Raw distances into [0, 1]: the logistic of :func:`detectors.base.logistic_calibration`."""
    cal = logistic_calibration(loo_scores.tolist(), sigmas)
    return torch.sigmoid((torch.as_tensor(raw, dtype=torch.float32) - cal["center"]) / cal["scale"])


def save_folder(who: str, path: str | Path, *, fmt: str, version: int, config: dict, state: dict) -> None:
    """Write ``config`` (with its format and version) and the tensors of ``state`` into ``path``."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{who}.save: {folder} exists and is not a folder.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": fmt, "version": version, **config}, indent=2))
    torch.save(state, folder / STATE_FILE)


def load_folder(who: str, path: str | Path, *, fmt: str, version: int) -> tuple[dict, dict]:
    """``(config, state)`` written by :func:`save_folder`, or a clear error."""
    folder = Path(path)
    config_file, state_file = folder / CONFIG_FILE, folder / STATE_FILE
    if not config_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"{who}.load: {folder} is not a saved {who} (expected {CONFIG_FILE} and {STATE_FILE}).")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{who}.load: {config_file} is not valid JSON ({exc}).") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{who}.load: {config_file} holds a JSON {type(config).__name__}, not a saved {who}'s "
                         "configuration.")
    if config.get("format") != fmt or config.get("version") != version:
        raise ValueError(f"{who}.load: {config_file} has format {config.get('format')!r} version "
                         f"{config.get('version')!r}; expected {fmt!r} version {version}.")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file: torch raises OSError, RuntimeError, pickle errors
        raise ValueError(f"{who}.load: {state_file} cannot be read ({type(exc).__name__}: {exc}); "
                         "it may be truncated. Fit the detector again and save it.") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{who}.load: {state_file} does not hold a saved {who}'s tensors.")
    return config, state

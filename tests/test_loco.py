"""The MVTec LOCO AD reader: the real juice-bottle slice, the generator's output, and bad layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors.data.loco import LocoDataset, LocoItem, LocoLayoutError
from detectors.data.synth import generate_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_SLICE = SHARED / "loco" / "juice_bottle"


def _png(path: Path, value: int = 0, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(path)
    return path


def _category(root: Path, *, flat_masks: bool = False) -> Path:
    """A minimal, valid category: 2 train, 1 good test, 1 logical with mask."""
    _png(root / "train/good/000.png", 10)
    _png(root / "train/good/001.png", 20)
    _png(root / "test/good/000.png", 30)
    _png(root / "test/logical_anomalies/000.png", 40)
    if flat_masks:
        _png(root / "ground_truth/logical_anomalies/000.png", 255)
    else:
        _png(root / "ground_truth/logical_anomalies/000/000.png", 255)
    return root


# -- the real slice ----------------------------------------------------------------
@pytest.fixture(scope="module")
def real():
    if not REAL_SLICE.is_dir():
        pytest.skip(f"real MVTec LOCO slice not found at {REAL_SLICE} (the ../shared folder is absent)")
    return LocoDataset(REAL_SLICE)


def test_real_slice_items(real):
    assert real.category == "juice_bottle"
    assert len(real.train_good()) == 20 and all(it.label == "good" for it in real.train_good())
    assert real.validation_good() == []
    test = real.test()
    assert len(test) == 11 and {it.label for it in test} == {"logical"}
    assert all(it.defect_type == "logical_anomalies" and len(it.mask_paths) == 1 for it in test)
    assert all(it.anomaly_type and it.reason for it in test), "labels.jsonl was not attached"
    first = next(it for it in test if it.image_id == "000")
    assert first.anomaly_type == "missing_both_labels"


def test_real_slice_masks_and_rules(real):
    item = real.test()[0]
    mask = real.mask(item)
    assert mask.dtype == bool and mask.shape == (1600, 800) and 0 < mask.mean() < 0.6
    assert not real.mask(real.train_good()[0]).any()
    small = real.mask(item, size=(200, 400))
    assert small.shape == (400, 200) and small.any()
    assert real.rules is not None and len(real.rules.rules) == 4
    assert real.rules.category == "juice_bottle"
    assert real.image(item).shape == (1600, 800, 3)


def test_discover_skips_folders_without_images():
    if not REAL_SLICE.is_dir():
        pytest.skip(f"real MVTec LOCO slice not found at {REAL_SLICE} (the ../shared folder is absent)")
    found = LocoDataset.discover(REAL_SLICE.parent)  # holds 'cases/' (no LOCO layout) and 'juice_bottle/'
    assert [d.category for d in found] == ["juice_bottle"]


# -- the generator's output --------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, seed=1, categories=["screw_bag", "splicing_connectors"], per_split=2, scale=0.1)
    return root


def test_reads_generated_dataset(synthetic):
    datasets = LocoDataset.discover(synthetic)
    assert [d.category for d in datasets] == ["screw_bag", "splicing_connectors"]
    ds = datasets[0]
    assert ds.summary() == {
        "train/good": 2, "validation/good": 2, "test/good": 2,
        "test/logical_anomalies": 2, "test/structural_anomalies": 2,
    }
    logical = ds.items("test", "logical")
    assert [it.anomaly_type for it in logical] == ["missing_screw", "missing_nut"]
    assert all(it.reason.endswith(".") for it in ds.test())
    assert all(p.parent.name == it.image_id for it in logical for p in it.mask_paths)
    for it in ds.items("test", "structural"):
        mask = ds.mask(it)
        assert mask.any() and mask.shape == ds.image(it).shape[:2]
    assert ds.rules.category == "screw_bag"
    assert ds.labels["test/good/000.png"]["label"] == "good"
    assert LocoDataset(synthetic / "screw_bag").summary() == ds.summary()


def test_error_dataset_root_passed_as_category(synthetic):
    with pytest.raises(LocoLayoutError) as err:
        LocoDataset(synthetic)
    msg = str(err.value)
    assert "folder 'train/good' is missing" in msg
    assert "dataset root holding the categories ['screw_bag', 'splicing_connectors']" in msg
    assert "use LocoDataset.discover()" in msg


def test_several_masks_per_image_are_united(tmp_path):
    root = _category(tmp_path / "cat")
    left = np.zeros((12, 16), np.uint8)
    left[:, :4] = 255
    right = np.zeros((12, 16), np.uint8)
    right[:, -3:] = 255
    Image.fromarray(left).save(root / "ground_truth/logical_anomalies/000/000.png")
    Image.fromarray(right).save(root / "ground_truth/logical_anomalies/000/001.png")
    ds = LocoDataset(root)
    item = ds.items("test", "logical")[0]
    assert len(item.mask_paths) == 2
    assert ds.mask(item).sum() == 12 * 7


def test_mask_of_an_exif_rotated_image_is_at_its_upright_size(tmp_path):
    root = _category(tmp_path / "cat")
    ds = LocoDataset(root)
    item = ds.items("test", "logical")[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees
    photo = item.path.with_suffix(".jpg")
    Image.new("RGB", (20, 10)).save(photo, exif=exif)
    item = item.model_copy(update={"path": photo})
    assert ds.image(item).shape[:2] == ds.mask(item).shape == (20, 10)


def test_flat_masks_are_accepted(tmp_path):
    ds = LocoDataset(_category(tmp_path / "cat", flat_masks=True))
    item = ds.items("test", "logical")[0]
    assert item.mask_paths[0].name == "000.png" and ds.mask(item).all()
    assert isinstance(item, LocoItem) and item.is_anomalous


def test_missing_test_folder_is_allowed(tmp_path):
    root = tmp_path / "cat"
    _png(root / "train/good/000.png")
    ds = LocoDataset(root)
    assert len(ds.train_good()) == 1 and ds.test() == [] and ds.rules is None


# -- bad layouts: every error names what is wrong ------------------------------------
def test_error_missing_root(tmp_path):
    with pytest.raises(LocoLayoutError, match=r"Dataset folder '.*nowhere' does not exist"):
        LocoDataset(tmp_path / "nowhere")


def test_error_root_is_a_file(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    with pytest.raises(LocoLayoutError, match="is a file, not a category folder"):
        LocoDataset(f)


def test_error_missing_train_good(tmp_path):
    root = tmp_path / "cat"
    _png(root / "test/good/000.png")
    with pytest.raises(LocoLayoutError) as err:
        LocoDataset(root)
    assert "is not a valid MVTec LOCO category folder" in str(err.value)
    assert "folder 'train/good' is missing" in str(err.value)


def test_error_empty_train_good(tmp_path):
    root = tmp_path / "cat"
    (root / "train/good").mkdir(parents=True)
    _png(root / "test/good/000.png")
    with pytest.raises(LocoLayoutError, match="folder 'train/good' holds no images"):
        LocoDataset(root)


def test_error_missing_mask_names_the_image(tmp_path):
    root = _category(tmp_path / "cat")
    _png(root / "test/structural_anomalies/007.png")
    with pytest.raises(LocoLayoutError) as err:
        LocoDataset(root)
    msg = str(err.value)
    assert "no ground-truth mask for 'test/structural_anomalies/007.png'" in msg
    assert "ground_truth/structural_anomalies/007/*.png" in msg
    assert len(LocoDataset(root, require_masks=False).items("test", "structural")) == 1


def test_error_unknown_test_subfolder(tmp_path):
    root = _category(tmp_path / "cat")
    _png(root / "test/bad_things/000.png")
    with pytest.raises(LocoLayoutError, match=r"folder 'test' has unknown sub-folders \['bad_things'\]"):
        LocoDataset(root)


def test_error_bad_labels_file(tmp_path):
    root = _category(tmp_path / "cat")
    (root / "labels.jsonl").write_text(json.dumps({"file": "test/good/000.png"}) + "\n{oops\n")
    with pytest.raises(LocoLayoutError, match=r"labels.jsonl' line 2 is not valid JSON"):
        LocoDataset(root)
    (root / "labels.jsonl").write_text(json.dumps({"label": "good"}) + "\n")
    with pytest.raises(LocoLayoutError, match=r"line 1 must be an object with a 'file' key"):
        LocoDataset(root)


def test_error_discover_finds_nothing(tmp_path):
    (tmp_path / "empty_category" / "train" / "good").mkdir(parents=True)
    with pytest.raises(LocoLayoutError, match="No MVTec LOCO categories found under"):
        LocoDataset.discover(tmp_path)
    with pytest.raises(LocoLayoutError, match="does not exist or is not a folder"):
        LocoDataset.discover(tmp_path / "missing")


def test_error_bad_split_and_label(tmp_path):
    ds = LocoDataset(_category(tmp_path / "cat"))
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        ds.items("val")
    with pytest.raises(ValueError, match="Unknown label 'bad'"):
        ds.items(label="bad")


def test_error_unreadable_mask(tmp_path):
    root = _category(tmp_path / "cat")
    (root / "ground_truth/logical_anomalies/000/000.png").write_bytes(b"not a png")
    ds = LocoDataset(root)
    with pytest.raises(LocoLayoutError, match="Cannot read mask"):
        ds.mask(ds.items("test", "logical")[0])

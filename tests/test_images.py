"""Image input edge cases: every failure asserts its message."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from detectors.images import MAX_PIXELS, ImageInputError, load_image, to_array


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # fully transparent red -> black background
    assert load_image(rgba).mode == "RGB"
    assert np.asarray(load_image(rgba)).max() == 0
    gray = Image.new("L", (8, 6), 128)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [128, 128, 128]
    pal = Image.new("P", (8, 6))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    assert np.asarray(load_image(pal))[0, 0].tolist() == [10, 200, 30]
    sixteen = Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16))
    path = tmp_path / "16bit.png"
    sixteen.save(path)
    assert np.asarray(load_image(path)).max() == 255


def test_arrays_of_various_dtypes():
    assert load_image(np.zeros((4, 5), dtype=np.uint8)).size == (5, 4)
    assert np.asarray(load_image(np.ones((4, 5, 3), dtype=np.float32)))[0, 0, 0] == 255
    assert np.asarray(load_image(np.full((4, 5), 65535, dtype=np.uint16))).max() == 255
    assert load_image(np.zeros((4, 5, 4), dtype=np.uint8)).mode == "RGB"
    assert load_image(np.zeros((4, 5), dtype=bool)).mode == "RGB"
    assert to_array(np.zeros((4, 5, 1), dtype=np.uint8)).shape == (4, 5, 3)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = load_image(path)
    assert out.size == (10, 20)


def test_large_image_is_downscaled_with_warning():
    big = Image.new("RGB", (5000, 100))
    with pytest.warns(UserWarning, match="downscaling to 4096x82"):
        out = load_image(big)
    assert out.size == (4096, 82)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(big, max_side=None).size == (5000, 100)


def test_decompression_bomb_is_refused(tmp_path):
    # A tiny PNG header that claims a gigantic canvas.
    side = int(MAX_PIXELS ** 0.5) + 100
    img = Image.new("1", (side, side))
    path = tmp_path / "bomb.png"
    img.save(path, optimize=True)
    with pytest.raises(ImageInputError, match="possible decompression bomb") as err:
        load_image(path)
    assert "bomb.png" in str(err.value)


def test_our_pixel_limit_applies_not_pillows_lower_one(tmp_path, monkeypatch):
    import detectors.images as images

    # the same relation as the real limits (Pillow warns at 89.5 MP, ours is 120 MP), scaled down
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(images, "MAX_PIXELS", 1400)
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)  # 1200 pixels: over Pillow's warning, under ours
    assert load_image(path).size == (40, 30)
    Image.new("RGB", (40, 40)).save(path)
    with pytest.raises(ImageInputError, match="exceeds the limit of 1400"):
        load_image(path)


def test_sixteen_bit_images_get_one_fixed_scale(tmp_path):
    twelve_bit = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 80)  # 0..3760: 12-bit data
    path = tmp_path / "12bit.png"
    Image.fromarray(twelve_bit).save(path)
    from_file, from_array = np.asarray(load_image(path)), np.asarray(load_image(twelve_bit))
    assert np.array_equal(from_file, from_array) and from_file.max() == 3760 >> 8
    brighter = twelve_bit.copy()
    brighter[0, 0] = 65535  # one saturated pixel must not darken the rest
    path2 = tmp_path / "12bit_hot.png"
    Image.fromarray(brighter).save(path2)
    assert np.array_equal(np.asarray(load_image(path2))[1:], from_file[1:])


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageInputError, match=r"Cannot read image '.*broken\.png': not a recognised image format"):
        load_image(bad)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with pytest.raises(ImageInputError, match=r"truncated\.png"):
        load_image(truncated)
    with pytest.raises(ImageInputError, match=r"'.*missing\.png': the file does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageInputError, match="it is a directory"):
        load_image(tmp_path)


def test_bad_arrays_and_types_are_refused():
    with pytest.raises(ImageInputError, match=r"expected an array of shape \(H, W\)"):
        load_image(np.zeros((2, 3, 5), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="the array is empty"):
        load_image(np.zeros((0, 3), dtype=np.uint8))
    with pytest.raises(ImageInputError, match="NaN or infinite"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(ImageInputError, match="outside 0..255"):
        load_image(np.full((2, 2), 1000, dtype=np.int32))
    with pytest.raises(ImageInputError, match="pass a path, bytes, a PIL image or a numpy array"):
        load_image(3.14)


def test_bytes_input():
    data = _png_bytes(Image.new("RGB", (3, 2), (9, 8, 7)))
    assert np.asarray(load_image(data))[0, 0].tolist() == [9, 8, 7]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_multi_frame_file_gives_its_first_frame_and_is_closed(tmp_path):
    """An animated GIF keeps its file open for seeking, and the conversion to RGB dropped it
    unclosed (a ResourceWarning per image, an error under ``-W error``)."""
    frames = [Image.new("RGB", (40, 30), (200 if i == 0 else 0, 0, 120 * i % 256)) for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        img = load_image(path)
    arr = np.asarray(img)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert arr[..., 0].mean() > 150  # the first frame, not a later one

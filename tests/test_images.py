"""psp.io.images: every PIL mode and format to RGB, upright; bad files give one-line ImageLoadErrors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from psp.io.images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_rgb, to_image, to_tensor

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def two_halves(size=(40, 20), left=RED, right=BLUE) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half ``right``."""
    img = Image.new("RGB", size, left)
    img.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return img


def close(pixel, expected, tol=6):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# ----------------------------------------------------------------------------------------------
# Finding files


def test_list_images_recursive_sorted_case_insensitive(tmp_path):
    for rel in ["b/2.PNG", "a/1.jpg", "a/0.JpEg", "c.webp", "d.bmp", "e.tif", "f.TIFF", "z/y/x.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    for rel in ["notes.txt", "a/model.pt", ".hidden.png", "._a.jpg", ".cache/in_hidden.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["a/0.JpEg", "a/1.jpg", "b/2.PNG", "c.webp", "d.bmp", "e.tif", "f.TIFF", "z/y/x.png"]
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


def test_list_images_follows_symlinked_folder_without_looping(tmp_path):
    (tmp_path / "real").mkdir()
    two_halves().save(tmp_path / "real" / "a.png")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert found == ["link/a.png"]  # one route per folder, the same one on every run


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        list_images(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------
# Modes and formats


@pytest.mark.parametrize("ext,kwargs", [(".png", {}), (".bmp", {}), (".tif", {}),
                                        (".tiff", {"compression": "tiff_lzw"}),
                                        (".webp", {"lossless": True}), (".jpg", {"quality": 95})])
def test_formats_round_trip(tmp_path, ext, kwargs):
    path = tmp_path / f"img{ext}"
    two_halves().save(path, **kwargs)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (40, 20)
    assert close(img.getpixel((2, 10)), RED) and close(img.getpixel((37, 10)), BLUE)


def test_grayscale_and_bilevel(tmp_path):
    Image.new("L", (20, 20), 77).save(tmp_path / "g.png")
    Image.new("1", (20, 20), 1).save(tmp_path / "b.png")
    assert load_rgb(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)
    assert load_rgb(tmp_path / "b.png").getpixel((0, 0)) == WHITE


def test_palette_with_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0] + list(BLUE) + [0] * (254 * 3))  # index 0 black (transparent), 1 blue
    img.paste(1, (10, 0, 20, 20))
    img.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_rgb(tmp_path / "p.png")
    assert out.getpixel((2, 2)) == WHITE and out.getpixel((15, 2)) == BLUE


def test_grey_with_transparency_key(tmp_path):
    img = Image.new("L", (20, 20), 0)
    img.paste(200, (10, 0, 20, 20))
    img.save(tmp_path / "l.png", transparency=0)
    out = load_rgb(tmp_path / "l.png")
    assert out.getpixel((2, 2)) == WHITE and out.getpixel((15, 2)) == (200, 200, 200)


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 10, 20))
    rgba.paste((0, 0, 0, 128), (10, 0, 20, 20))
    rgba.save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.getpixel((2, 2)) == RED
    assert close(out.getpixel((15, 2)), (127, 127, 127), tol=1)  # 255 * (1 - 128/255)
    Image.new("LA", (20, 20), (0, 0)).save(tmp_path / "la.png")
    assert load_rgb(tmp_path / "la.png").getpixel((0, 0)) == WHITE


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (20, 20), (0, 255, 0, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert close(load_rgb(tmp_path / "c.jpg").getpixel((5, 5)), (255, 0, 255))


def test_sixteen_bit_png_scaled_not_clipped(tmp_path):
    levels = np.zeros((20, 20), np.uint16)
    levels[:, 5:10], levels[:, 10:15], levels[:, 15:] = 257 * 10, 32768, 65535
    Image.fromarray(levels).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_rgb(tmp_path / "g16.png")
    assert [out.getpixel((x, 0))[0] for x in (0, 7, 12, 17)] == [0, 10, 128, 255]


def test_float_tiff_in_unit_range(tmp_path):
    plane = np.full((20, 20), 0.5, np.float32)
    Image.fromarray(plane).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert load_rgb(tmp_path / "f.tif").getpixel((0, 0)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x20, shown rotated 90 degrees clockwise: the left half goes on top
    two_halves().save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    assert close(out.getpixel((10, 3)), RED, tol=12) and close(out.getpixel((10, 36)), BLUE, tol=12)


# ----------------------------------------------------------------------------------------------
# Bad files


def reason_of(path, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return info.value.reason


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated(tmp_path, ext):
    full = tmp_path / f"full{ext}"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    (tmp_path / f"cut{ext}").write_bytes(data[: len(data) // 2])
    assert reason_of(tmp_path / f"cut{ext}") == "truncated image"


def test_empty_not_image_missing(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not a jpeg")
    assert reason_of(tmp_path / "empty.png") == "empty file"
    assert reason_of(tmp_path / "text.jpg").startswith("not an image")
    assert reason_of(tmp_path / "gone.png") == "file not found"


def test_corrupt_png_data(tmp_path):
    two_halves((64, 64)).save(tmp_path / "ok.png")
    data = bytearray((tmp_path / "ok.png").read_bytes())
    data[60:90] = b"\xff" * 30  # inside the image data chunk: the CRC / zlib stream breaks
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert reason_of(tmp_path / "bad.png").startswith(("corrupt image", "truncated image"))


def test_unreadable(tmp_path):
    path = tmp_path / "locked.png"
    two_halves().save(path)
    path.chmod(0)
    try:
        if os.geteuid() == 0 or os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        assert reason_of(path) == "cannot read: permission denied"
    finally:
        path.chmod(0o644)


def test_too_small_is_configurable(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    assert reason_of(tmp_path / "tiny.png") == "too small: 8x8 < 16 px minimum"
    assert load_rgb(tmp_path / "tiny.png", min_size=8).size == (8, 8)


# ----------------------------------------------------------------------------------------------
# Tensors


def test_to_tensor_matches_psp_transform(tmp_path):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    x = to_tensor(img, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = np.asarray(img.resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255.0
    torch.testing.assert_close(x, torch.from_numpy((expected - 0.5) / 0.5).permute(2, 0, 1))
    transforms = pytest.importorskip("torchvision.transforms")
    psp_transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                        transforms.Normalize([0.5] * 3, [0.5] * 3)])
    torch.testing.assert_close(x, psp_transform(img))


def test_to_tensor_range_and_round_trip():
    img = two_halves((16, 16), left=(0, 0, 0), right=WHITE)
    x = to_tensor(img, 16)
    assert x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(np.asarray(to_image(x)), np.asarray(img))
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(img.convert("L"), 16)

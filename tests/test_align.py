"""FFHQ alignment: the quad recipe, the warp's pixel conventions, and MTCNN on a real photo."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psp.inference.align import AlignError, align_face, detect_faces, face_detector, ffhq_quad, warp_quad

skimage_data = pytest.importorskip("skimage.data")
ASTRONAUT = Path(skimage_data.__file__).parent / "astronaut.png"  # NASA, public domain
COFFEE = Path(skimage_data.__file__).parent / "coffee.png"  # CC0, a photo with no face

# An upright face: eyes 40 px apart, mouth 44 px below the eyes.
UPRIGHT = np.array([[80.0, 100.0], [120.0, 100.0], [100.0, 120.0], [84.0, 144.0], [116.0, 144.0]])


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    t = np.deg2rad(degrees)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (points - centre) @ r.T + centre


def _have_detector() -> bool:
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


needs_detector = pytest.mark.skipif(not _have_detector(), reason="facenet-pytorch not installed")


def test_quad_of_upright_face_follows_the_ffhq_constants():
    quad = ffhq_quad(UPRIGHT)
    # eye_to_eye = (40, 0), eye_to_mouth = (0, 44): half side = max(40*2, 44*1.8) = 80,
    # centre = eye_avg + 0.1 * eye_to_mouth = (100, 104.4).
    c, h = np.array([100.0, 104.4]), 80.0
    expected = np.array([c + [-h, -h], c + [-h, h], c + [h, h], c + [h, -h]])
    np.testing.assert_allclose(quad, expected, atol=1e-9)


def test_quad_rotates_and_scales_with_the_face():
    centre = np.array([100.0, 100.0])
    quad = ffhq_quad(_rotate(UPRIGHT * 1.5, 30.0, centre))
    expected = _rotate(ffhq_quad(UPRIGHT) * 1.5, 30.0, centre)
    np.testing.assert_allclose(quad, expected, atol=1e-9)


def test_quad_rejects_wrong_landmark_count():
    with pytest.raises(ValueError, match=r"5 landmarks"):
        ffhq_quad(UPRIGHT[:4])


def test_warp_of_the_image_frame_is_the_identity():
    image = torch.rand(3, 24, 24)
    frame = np.array([[-0.5, -0.5], [-0.5, 23.5], [23.5, 23.5], [23.5, -0.5]])
    torch.testing.assert_close(warp_quad(image, frame, 24), image, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [320, 64])  # 64: the quad is 5x the output, so it is shrunk first
def test_warp_puts_the_eyes_where_the_recipe_says(size):
    # A blob at the eye midpoint (200, 200). Quad: centre (200, 208.8), half side 160, so the
    # top-left corner (40, 48.8) maps to the output's outer edge (-0.5, -0.5).
    yy, xx = torch.meshgrid(torch.arange(440.0), torch.arange(440.0), indexing="ij")
    image = torch.exp(-((xx - 200) ** 2 + (yy - 200) ** 2) / (2 * 3.0**2))[None]
    out = warp_quad(image, ffhq_quad(UPRIGHT * 2.0), size)[0]
    grid = torch.arange(size, dtype=out.dtype)
    centroid = ((out.sum(0) * grid).sum() / out.sum(), (out.sum(1) * grid).sum() / out.sum())
    scale = size / 320
    expected = ((200 - 40) * scale - 0.5, (200 - 48.8) * scale - 0.5)
    np.testing.assert_allclose(centroid, expected, atol=0.1)


@needs_detector
def test_astronaut_face_landmarks_are_plausible():
    faces = detect_faces(Image.open(ASTRONAUT))
    assert len(faces) >= 1
    left_eye, right_eye, nose, mouth_left, mouth_right = faces[0].landmarks
    assert faces[0].score > 0.9
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    left, top, right, bottom = faces[0].box
    assert all(left < x < right and top < y < bottom for x, y in faces[0].landmarks)


@needs_detector
def test_aligned_astronaut_has_eyes_at_the_ffhq_positions():
    size = 256
    aligned = align_face(Image.open(ASTRONAUT), output_size=size)
    assert aligned.size == (size, size) and aligned.mode == "RGB"
    faces = detect_faces(aligned)
    assert faces, "the detector must find the face again in the aligned crop"
    left_eye, right_eye = faces[0].landmarks[:2] / size
    # FFHQ crops: eyes level, centred, a quarter of the side apart (less when the face is long),
    # and just above the middle (eye_avg = centre - 0.1 * eye_to_mouth).
    assert abs(left_eye[1] - right_eye[1]) < 0.03
    assert abs((left_eye[0] + right_eye[0]) / 2 - 0.5) < 0.04
    assert 0.18 < right_eye[0] - left_eye[0] < 0.29
    assert 0.40 < (left_eye[1] + right_eye[1]) / 2 < 0.50


@needs_detector
def test_photo_without_face_raises_align_error_naming_the_file():
    with pytest.raises(AlignError, match=r"^no face found in .*coffee\.png$"):
        align_face(Image.open(COFFEE))
    with pytest.raises(AlignError, match=r"^no face found in gray\.jpg$"):
        align_face(Image.new("RGB", (200, 160), (128, 128, 128)), source="gray.jpg")


@needs_detector
def test_align_accepts_any_mode():
    gray = Image.open(ASTRONAUT).convert("L")
    assert align_face(gray, output_size=64).size == (64, 64)


def test_missing_detector_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes the import fail
    face_detector.cache_clear()
    with pytest.raises(ImportError, match=r"pip install --no-deps facenet-pytorch==2\.6\.0"):
        align_face(Image.open(ASTRONAUT))
    face_detector.cache_clear()

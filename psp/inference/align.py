"""FFHQ-style face alignment: detect five landmarks, build the FFHQ crop quad, warp it to a square.

The encoders are trained on FFHQ / CelebA-HQ crops, which are all cut by one recipe (the FFHQ
``recreate_aligned_images`` procedure): the eyes and mouth fix a rotated square around the face.
An in-the-wild photo must be cut the same way before encoding, or the codes describe a face the
generator never saw at that position and scale.

Landmarks come from MTCNN (the pretrained P/R/O-nets shipped inside the ``facenet-pytorch`` wheel,
so detection runs offline). FFHQ used dlib's 68 points; only the eye centres and the mouth corners
enter the recipe, and MTCNN gives exactly those five points (plus the nose, unused), so the crops
agree with FFHQ's up to the landmark detectors' own differences.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

INSTALL_HINT = "face alignment needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0"

# MTCNN's image pyramid grows with the photo; faces worth encoding are far above its 20 px minimum
# even after shrinking a large photo to this side, and detection stays well under a second.
DETECT_MAX_SIDE = 1024


class AlignError(ValueError):
    """An image that cannot be aligned (no face found); the engine reports it and skips the image."""


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the image it was found in.

    ``box``: [4] (left, top, right, bottom); ``score``: detector confidence in [0, 1];
    ``landmarks``: [5, 2] (x, y) of the left eye, right eye, nose, left and right mouth corner,
    "left" meaning the image's left. Pixel centres sit at integer coordinates.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


@functools.lru_cache(maxsize=1)
def face_detector():
    """The MTCNN detector (built once; CPU, eval mode). Raises ImportError naming the install line.

    The engine may call this once before a run with ``--align`` to fail early rather than per image.
    """
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    # select_largest orders faces by box area: the subject of a portrait is its largest face.
    return MTCNN(select_largest=True, keep_all=True, device=torch.device("cpu")).eval()


def detect_faces(img: Image.Image) -> list[Face]:
    """All faces MTCNN finds in ``img`` (any PIL mode), largest first; [] when there is none."""
    rgb = img.convert("RGB")
    scale = min(1.0, DETECT_MAX_SIDE / max(rgb.size))
    if scale < 1.0:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.BILINEAR, reducing_gap=2.0)
    boxes, scores, points = face_detector().detect(rgb, landmarks=True)  # runs under no_grad itself
    if boxes is None:
        return []

    def back(a) -> np.ndarray:
        # To the original image's pixels: coordinates scale about the image edge (-0.5), not 0.
        return (np.asarray(a, dtype=np.float64) + 0.5) / scale - 0.5

    return [Face(box=back(b), score=float(s), landmarks=back(p)) for b, s, p in zip(boxes, scores, points)]


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop quad from five landmarks [5, 2] -> [4, 2] corners (x, y).

    Corner order: top-left, bottom-left, bottom-right, top-right of the aligned square (PIL QUAD
    order). The recipe, with the constants of the FFHQ dataset script:
      1. eye_avg = mean of the eyes, mouth_avg = mean of the mouth corners;
         eye_to_eye = right eye - left eye, eye_to_mouth = mouth_avg - eye_avg;
      2. x = eye_to_eye - flipud(eye_to_mouth) * [-1, 1], the face's horizontal axis, blending
         the eye line with the perpendicular of the eye-mouth line; x /= |x|;
      3. x *= max(|eye_to_eye| * 2.0, |eye_to_mouth| * 1.8): half the square's side;
      4. y = flipud(x) * [-1, 1] (x turned 90 degrees, pointing down the face);
      5. c = eye_avg + eye_to_mouth * 0.1; quad = [c - x - y, c - x + y, c + x + y, c + x - y].
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks of shape [5, 2], got {list(lm.shape)}")
    eye_left, eye_right, _, mouth_left, mouth_right = lm
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (mouth_left + mouth_right) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def warp_quad(image: torch.Tensor, quad: np.ndarray, output_size: int) -> torch.Tensor:
    """Cut the quadrilateral ``quad`` [4, 2] (PIL QUAD order) out of ``image`` [C, H, W] (float)
    and warp it to [C, output_size, output_size].

    Bilinear sampling with reflection where the quad leaves the photo (FFHQ pads by reflection
    too, then blurs and fades that band; we keep the plain reflection). The quad's corners are the
    outer edges of the output's corner pixels. A quad much larger than the output is first shrunk
    with an antialiased resize, as FFHQ does, because bilinear sampling alone would alias.
    """
    from kornia.geometry.transform import get_perspective_transform, warp_perspective

    quad = np.asarray(quad, dtype=np.float64)
    side = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(side / output_size * 0.5))
    if shrink > 1:
        h, w = image.shape[-2:]
        small = (max(1, round(h / shrink)), max(1, round(w / shrink)))
        image = F.interpolate(image[None], size=small, mode="bilinear", antialias=True,
                              align_corners=False)[0]
        quad = (quad + 0.5) * [small[1] / w, small[0] / h] - 0.5
    edge = output_size - 0.5
    corners = [[-0.5, -0.5], [-0.5, edge], [edge, edge], [edge, -0.5]]
    src = torch.tensor(quad, dtype=torch.float64)[None]
    dst = torch.tensor(corners, dtype=torch.float64)[None]
    # The homography is solved in float64: corners hundreds of pixels apart make float32 lose
    # sub-pixel accuracy.
    matrix = get_perspective_transform(src, dst).to(image.dtype)
    # align_corners=True: kornia's pixel coordinates put pixel centres at integers, as ours do.
    return warp_perspective(image[None], matrix, (output_size, output_size), mode="bilinear",
                            padding_mode="reflection", align_corners=True)[0]


def align_face(img: Image.Image, output_size: int = 256, source: Optional[str] = None) -> Image.Image:
    """FFHQ-align the largest face in ``img`` into an ``output_size`` square RGB image.

    ``source`` names the image in the error message (default: the PIL image's ``filename``).
    Raises :class:`AlignError` ("no face found in <source>") when the detector finds no face.
    """
    faces = detect_faces(img)
    if not faces:
        name = source or getattr(img, "filename", "") or "the image"
        raise AlignError(f"no face found in {name}")
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    aligned = warp_quad(image, ffhq_quad(faces[0].landmarks), output_size)
    pixels = (aligned.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels)

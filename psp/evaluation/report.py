"""The evaluation report image: best and worst reconstructions with their scores, and histograms.

Drawn with PIL alone (no plotting library in the pinned environment). Memory stays bounded for any
number of images: :class:`Extremes` keeps only the ``k`` best and ``k`` worst examples' thumbnails,
and the histograms need only the scores.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from psp.io.images import to_image
from psp.evaluation.metrics import HIGHER_IS_BETTER

LABELS = {"l2": "L2", "lpips": "LPIPS", "ms_ssim": "MS-SSIM", "id_similarity": "ID sim.", "latent_mse": "W+ MSE"}

THUMB = 128        # side of each shown image
GAP = 8
MARGIN = 24
CAPTION_LINES = 2
MAX_BINS = 30
HIST_SIZE = (300, 150)  # plotting area of one histogram

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
BEST = (30, 130, 60)
WORST = (190, 40, 40)
BAR = (70, 110, 170)


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def format_score(metric: str, value: Optional[float]) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.2e}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"


@dataclass(order=True)
class Example:
    """One image for the report: ``target`` and ``output`` thumbnails (PIL RGB) and its scores."""

    sort_key: float
    order: int
    path: str = field(compare=False)
    target: Image.Image = field(compare=False)
    output: Image.Image = field(compare=False)
    scores: dict = field(compare=False)


class Extremes:
    """The ``k`` best and ``k`` worst examples by ``metric`` seen so far (thumbnails only).

    ``add`` takes [3, H, W] tensors in [-1, 1]; images are thumbnailed only when they enter one of
    the two heaps, so a long run costs O(k) images of memory.
    """

    def __init__(self, metric: str, k: int = 5, thumb: int = THUMB):
        self.metric, self.k, self.thumb = metric, k, thumb
        # "badness": larger is worse whatever the metric's direction.
        self.sign = -1.0 if HIGHER_IS_BETTER.get(metric, False) else 1.0
        self._best: list[Example] = []   # max-heap on badness (keys negated): root = worst of the best
        self._worst: list[Example] = []  # min-heap on badness: root = best of the worst
        self._count = itertools.count()

    def add(self, path: str, target: torch.Tensor, output: torch.Tensor, scores: dict) -> None:
        value = scores.get(self.metric)
        if self.k <= 0 or value is None or not math.isfinite(value):
            return
        badness = self.sign * value
        order = next(self._count)
        if len(self._best) < self.k or -self._best[0].sort_key > badness:
            self._push(self._best, Example(-badness, order, path, *self._thumbs(target, output), scores))
        if len(self._worst) < self.k or self._worst[0].sort_key < badness:
            self._push(self._worst, Example(badness, order, path, *self._thumbs(target, output), scores))

    def _push(self, heap: list[Example], example: Example) -> None:
        if len(heap) < self.k:
            heapq.heappush(heap, example)
        else:
            heapq.heapreplace(heap, example)

    def _thumbs(self, target: torch.Tensor, output: torch.Tensor) -> tuple[Image.Image, Image.Image]:
        return _thumbnail(to_image(target), self.thumb), _thumbnail(to_image(output), self.thumb)

    @property
    def best(self) -> list[Example]:
        """Best first."""
        return sorted(self._best, key=lambda e: (-e.sort_key, e.order))

    @property
    def worst(self) -> list[Example]:
        """Worst first."""
        return sorted(self._worst, key=lambda e: (-e.sort_key, e.order))


def _thumbnail(img: Image.Image, side: int) -> Image.Image:
    # Small test images are enlarged with NEAREST so their pixels stay visible, not blurred.
    resample = Image.Resampling.NEAREST if max(img.size) < side else Image.Resampling.LANCZOS
    return img.resize((side, side), resample)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _elide(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened from the left with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def draw_report(title: str, summary_lines: Sequence[str], extremes: Extremes,
                values: dict[str, Sequence[float]], means: dict[str, Optional[float]]) -> Image.Image:
    """The whole report: a header, the best and worst rows, and one histogram per metric.

    ``values``: every image's score per metric (histograms); ``means``: the mean per metric (the
    red line on each histogram).
    """
    title_font, text_font, small_font = _font(22), _font(15), _font(12)
    k = max(len(extremes.best), len(extremes.worst), 1)
    pair_w = 2 * extremes.thumb + 2
    cell_w = pair_w + 3 * GAP
    caption_h = 18 * CAPTION_LINES + 4
    row_h = 26 + extremes.thumb + caption_h
    metrics = [m for m in values if len(values[m])]
    hist_w, hist_h = HIST_SIZE
    hist_cell = (hist_w + 40, hist_h + 70)
    hist_cols = max(1, min(len(metrics), (max(k * cell_w, 4 * hist_cell[0])) // hist_cell[0]))
    hist_rows = math.ceil(len(metrics) / hist_cols) if metrics else 0

    width = 2 * MARGIN + max(k * cell_w, hist_cols * hist_cell[0], 640)
    header_h = 40 + 22 * len(summary_lines) + 10
    height = header_h + 2 * row_h + hist_rows * hist_cell[1] + 2 * MARGIN + 30
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    y = MARGIN
    draw.text((MARGIN, y), _elide(draw, title, title_font, width - 2 * MARGIN), fill=TEXT, font=title_font)
    y += 36
    for line in summary_lines:
        draw.text((MARGIN, y), _elide(draw, line, text_font, width - 2 * MARGIN), fill=MUTED, font=text_font)
        y += 22
    y += 10

    direction = "highest" if HIGHER_IS_BETTER.get(extremes.metric) else "lowest"
    opposite = "lowest" if direction == "highest" else "highest"
    rows = ((f"Best {len(extremes.best)} ({direction} {label(extremes.metric)})", extremes.best, BEST),
            (f"Worst {len(extremes.worst)} ({opposite} {label(extremes.metric)})", extremes.worst, WORST))
    for heading, examples, colour in rows:
        draw.text((MARGIN, y), heading + ":  each pair is target | reconstruction", fill=colour, font=text_font)
        top = y + 24
        for i, ex in enumerate(examples):
            x = MARGIN + i * cell_w
            draw.rectangle((x - 2, top - 2, x + pair_w + 1, top + extremes.thumb + 1), outline=colour, width=2)
            canvas.paste(ex.target, (x, top))
            canvas.paste(ex.output, (x + extremes.thumb + 2, top))
            cy = top + extremes.thumb + 4
            draw.text((x, cy), _elide(draw, ex.path, small_font, pair_w), fill=TEXT, font=small_font)
            scores = "  ".join(f"{label(m)} {format_score(m, v)}" for m, v in ex.scores.items()
                               if m in LABELS and v is not None)
            draw.text((x, cy + 16), _elide(draw, scores, small_font, pair_w), fill=MUTED, font=small_font)
        y += row_h

    for i, metric in enumerate(metrics):
        x = MARGIN + (i % hist_cols) * hist_cell[0]
        hy = y + 10 + (i // hist_cols) * hist_cell[1]
        _histogram(draw, (x, hy), metric, values[metric], means.get(metric), text_font, small_font)
    return canvas


def _histogram(draw: ImageDraw.ImageDraw, origin: tuple[int, int], metric: str, data: Sequence[float],
               mean: Optional[float], text_font, small_font) -> None:
    """One metric's histogram at ``origin``: title, bars, x-axis range, mean as a red line."""
    x0, y0 = origin
    hist_w, hist_h = HIST_SIZE
    better = "higher" if HIGHER_IS_BETTER.get(metric) else "lower"
    draw.text((x0, y0), f"{label(metric)} ({better} is better)", fill=TEXT, font=text_font)
    finite = [v for v in data if math.isfinite(v)]
    top = y0 + 24
    bottom = top + hist_h
    draw.line((x0, bottom, x0 + hist_w, bottom), fill=MUTED, width=1)
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    span = hi - lo if hi > lo else 1.0  # all equal: one bar at the left
    bins = min(MAX_BINS, max(8, round(2 * math.sqrt(len(finite)))))
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, int((v - lo) / span * bins))] += 1
    peak = max(counts)
    bar_w = hist_w / bins
    for b, count in enumerate(counts):
        if count:
            height = max(1, round(count / peak * (hist_h - 4)))
            draw.rectangle((x0 + b * bar_w + 1, bottom - height, x0 + (b + 1) * bar_w - 1, bottom - 1), fill=BAR)
    if mean is not None and math.isfinite(mean):
        mx = x0 + (mean - lo) / span * hist_w
        for dash in range(top, bottom, 8):
            draw.line((mx, dash, mx, min(dash + 4, bottom)), fill=WORST, width=2)
    draw.text((x0, bottom + 4), format_score(metric, lo), fill=MUTED, font=small_font)
    right = format_score(metric, hi)
    draw.text((x0 + hist_w - draw.textlength(right, font=small_font), bottom + 4), right, fill=MUTED,
              font=small_font)
    note = f"n = {len(finite)}, tallest bar {peak}"
    draw.text((x0, bottom + 20), note, fill=MUTED, font=small_font)
    if mean is not None and math.isfinite(mean):
        draw.text((x0 + draw.textlength(note + "   ", font=small_font), bottom + 20),
                  f"dashed: mean {format_score(metric, mean)}", fill=WORST, font=small_font)

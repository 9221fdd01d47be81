"""The one inversion engine: images -> W+ codes (encode, then optionally refine) -> images (decode).

``infer.py``, ``infer.py render``, ``psp evaluate`` and the benchmarks all encode and decode
through :class:`Engine`, so they run the same code with the same settings: the model's inference
form (``psp.models.inference``), channels-last input, ``torch.inference_mode``, the autocast of
``infer.precision``, and code refinement (``psp.inference.refine``) in float32 with autograd.
"""
from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional

import torch

from psp.config import LPIPSConfig, RefineConfig
from psp.errors import InputError
from psp.models.inference import InferenceModel


def resolve_device(name: str) -> torch.device:
    """``infer.device`` (auto, cpu, cuda, cuda:N) as a torch.device; InputError if unavailable."""
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise InputError(f"infer.device is {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise InputError(f"infer.device is {name!r} but no CUDA device is available; use cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"infer.device is {name!r} but only {torch.cuda.device_count()} CUDA "
                         f"device(s) exist (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def autocast_for(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A factory of autocast contexts for ``infer.precision`` on ``device``.

    fp32: no autocast. bf16: CUDA (where supported) and CPU (fast on CPUs with AMX/AVX512-BF16).
    fp16: CUDA only; CPU float16 kernels are slow and not worth offering.
    """
    if precision == "fp32":
        return nullcontext
    if precision == "fp16" and device.type != "cuda":
        raise InputError("infer.precision=fp16 needs a CUDA device; on CPU use fp32 or bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"infer.precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                         "use fp16 or fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device.type, dtype=dtype)



def load_inference_model(path: Path, device: torch.device) -> InferenceModel:
    """The model file at ``path`` (official pSp file or our psp.pt) in its inference form on ``device``.

    A missing file is an InputError naming the fix; a file that is not a usable model raises the
    loader's CheckpointError (one line, naming the file and the problem).
    """
    if not path.is_file():
        raise InputError(f"checkpoint '{path}' does not exist; pass --checkpoint PATH (the released "
                         "FFHQ model: psp fetch psp_ffhq_encode.pt)")
    return InferenceModel.from_checkpoint(path, device=device)


@dataclass
class Engine:
    """Encode, refine and decode with one model on one device at one precision.

    ``refine``: the refinement settings (``refine.steps = 0``: off). ``lpips``: the distance the
    refinement uses (built by :meth:`prepare` when ``refine.lpips > 0``, or given). ``iterations``:
    the encoder passes of a ReStyle model (None: the model's default); after construction it holds
    the number every encode runs (1 for the single-pass families).
    """

    model: InferenceModel
    device: torch.device
    precision: str = "fp32"
    refine: RefineConfig = field(default_factory=RefineConfig)
    lpips: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
    iterations: Optional[int] = None

    def __post_init__(self) -> None:
        self.autocast = autocast_for(self.device, self.precision)
        try:
            self.iterations = self.model.resolve_iterations(self.iterations)
        except ValueError as exc:
            raise InputError(f"--iterations / infer.iterations: {exc}") from None

    def prepare(self, lpips_cfg: LPIPSConfig) -> "Engine":
        """Build the refinement's LPIPS now (when refinement uses it), so a missing backbone file is
        a one-line error before any work; returns self."""
        if self.refine.steps > 0 and self.refine.lpips > 0 and self.lpips is None:
            from psp.models.lpips import LPIPSLoss

            self.lpips = LPIPSLoss(lpips_cfg.net, lpips_cfg.weights).to(self.device)
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] in [-1, 1] on the device -> the encoder's W+ codes [B, n_styles, 512] float32
        (ReStyle: after ``iterations`` passes)."""
        return self.encode_iterations(x)[-1]

    def encode_iterations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The codes after each encoder pass, ``iterations`` of them (one for pSp and e4e), each
        [B, n_styles, 512] float32."""
        x = x.contiguous(memory_format=torch.channels_last)  # the layout of the encoder's weights
        with torch.inference_mode(), self.autocast():
            return [codes.float() for codes in self.model.encode_iterations(x, self.iterations)]

    def refine_codes(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` [B, n_styles, 512] optimised for ``refine.steps`` Adam steps towards ``x`` (float32)."""
        if self.refine.steps == 0:
            return codes
        from psp.inference.refine import refine_codes  # only refinement needs the optimiser

        # fp32, outside inference mode: refine_codes runs autograd on its own clones.
        return refine_codes(self.model, x.float(), codes.float(), self.refine.steps, lr=self.refine.lr,
                            l2_weight=self.refine.l2, lpips_weight=self.refine.lpips, lpips=self.lpips)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, S, S] -> final W+ codes [B, n_styles, 512] float32 on the device: encode, then refine."""
        return self.refine_codes(x, self.encode(x))

    def decode(self, codes: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """W+ codes [B, n_styles, 512] -> images [B, 3, S, S] float32 on the device (resize=False:
        the generator's size); deterministic noise."""
        with torch.inference_mode(), self.autocast():
            return self.model.decode(codes.to(self.device), resize=resize).float()

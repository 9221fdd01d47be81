"""Training-step benchmark of the ffhq recipe: median step time and peak memory, JSON out.

One step is what PSPSystem trains with: encode, decode (generator at full size, pooled to the
encoder input), L2 + LPIPS (0.8) + identity (0.1) losses, backward, Ranger step. Weights are random
(no downloads): LPIPS with a random AlexNet trunk and a random IR-SE-50 recogniser cost the same
as the released ones. Images are random too, so data loading is not measured.

    python bench/bench_train.py --batch 8 --steps 20 --json bench/train_gpu.json       # GPU, full recipe
    python bench/bench_train.py --batch 2 --steps 5 --size 256 --device cpu            # CPU, smaller G

Modes (``--mode``, default ``both``: each in its own process, then the ratios):

- ``ours``: the training step as ``train.py`` runs it, at ``--precision``;
- ``psp_like``: the original pSp loop's way in our code, always fp32, with the generator's
  per-sample grouped convolutions (``fused_modconv=True``, as rosinality's model); the rest of the
  step is the same as ``ours``.
  The same-machine baseline for the training target (docs/benchmarks.md: 1.5x faster per step at batch 8, with
  equal or lower peak memory).

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak resident set size
on the CPU (which includes the Python runtime and the models); a process per mode keeps both clean.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import figure  # noqa: E402
from psp.config import load_config  # noqa: E402
from psp.training.losses import PSPLoss  # noqa: E402
from psp.models.arcface import ArcFace  # noqa: E402
from psp.training.system import PSPSystem  # noqa: E402

PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step (ffhq recipe: 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--size", type=int, default=1024, help="generator side (ffhq: 1024)")
    parser.add_argument("--channel-max", type=int, default=512, help="generator channel cap (512 = config-f)")
    parser.add_argument("--input-size", type=int, default=256, help="encoder input side (ffhq: 256)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="32")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--mode", choices=("ours", "psp_like", "both"), default="both",
                        help="both (default) runs ours and psp_like in separate processes and compares")
    parser.add_argument("--json", type=Path, help="also write the result here")
    return parser.parse_args(argv)


def build_system(args: argparse.Namespace, device: torch.device) -> PSPSystem:
    """The ffhq recipe with random weights at the requested sizes (``psp_like``: grouped convs)."""
    config = load_config(["ffhq"], [
        f"model.generator.size={args.size}", f"model.generator.channel_max={args.channel_max}",
        "model.generator.checkpoint=null", "model.encoder.init=null",
        f"model.encoder.input_size={args.input_size}",
        "model.w_avg.source=estimate", "model.w_avg.n_samples=1000", "loss.id=0", "loss.id_weights=null",
        "data.kind=synthetic",  # images are random tensors here; no dataset folders needed
    ])
    system = PSPSystem(config, lpips_pretrained=False)
    # The recipe's identity term, with a random recogniser (the config needs the weights file).
    recipe_loss = dataclasses.replace(config.loss, id=0.1)
    system.loss = PSPLoss.from_config(recipe_loss, arcface=ArcFace(), lpips_pretrained=False,
                                      start_from_latent_avg=config.model.start_from_latent_avg)
    if args.mode == "psp_like":
        system.model.generator.fused_modconv = True
    return system.to(device).train()


def measure(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of one mode in this process."""
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    torch.manual_seed(0)
    system = build_system(args, device)
    optimizer = system.configure_optimizers()
    dtype = PRECISIONS[args.precision] if args.mode == "ours" else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    x = torch.rand(args.batch, 3, args.input_size, args.input_size, device=device) * 2 - 1
    batch = {"source": x, "target": x}

    def step() -> None:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            _, loss, _ = system.reconstruct(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)

    if device.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    else:
        peak_mb, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"
    median = statistics.median(times)
    return {
        "benchmark": "train_step", "recipe": "ffhq", "mode": args.mode, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, "
                                     f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "batch": args.batch, "generator_size": args.size,
        "channel_max": args.channel_max, "input_size": args.input_size,
        "precision": args.precision if args.mode == "ours" else "32",
        "steps": args.steps, "step_time_s_median": round(median, 4),
        "step_time_s": [round(t, 4) for t in times], "images_per_s": round(args.batch / median, 3),
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": peak_kind,
    }


def measure_in_subprocess(args: argparse.Namespace, mode: str) -> dict:
    """:func:`measure` for ``mode`` in a fresh interpreter (a clean peak-memory counter)."""
    settings = ["--batch", args.batch, "--steps", args.steps, "--warmup", args.warmup, "--size", args.size,
                "--channel-max", args.channel_max, "--input-size", args.input_size,
                "--precision", args.precision, "--device", args.device, "--mode", mode]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *map(str, settings), "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def compare_modes(args: argparse.Namespace) -> dict:
    """Both modes, each in its own process, and ours against psp_like."""
    ours, baseline = (measure_in_subprocess(args, mode) for mode in ("ours", "psp_like"))
    speedup = baseline["step_time_s_median"] / ours["step_time_s_median"]
    memory_ratio = ours["peak_memory_mb"] / baseline["peak_memory_mb"]
    tag = f"batch{args.batch}/{ours['precision']}"
    return {
        "benchmark": "train_step", "recipe": "ffhq", "results": [ours, baseline],
        "speedup_vs_psp_like": round(speedup, 3), "peak_memory_ratio_vs_psp_like": round(memory_ratio, 3),
        "target": {"speedup": 1.5, "peak_memory_ratio": 1.0, "applies_to": "one CUDA GPU at batch 8"},
        "figures": [
            figure(f"train/{tag}/ours/step_time_s_median", ours["step_time_s_median"], "s"),
            figure(f"train/{tag}/psp_like/step_time_s_median", baseline["step_time_s_median"], "s"),
            figure(f"train/{tag}/ours/peak_memory_mb", ours["peak_memory_mb"], "MB"),
            figure(f"train/{tag}/speedup_vs_psp_like", speedup, "x", "higher"),
            figure(f"train/{tag}/peak_memory_ratio_vs_psp_like", memory_ratio, "x", "lower"),
        ],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = compare_modes(args) if args.mode == "both" else measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()

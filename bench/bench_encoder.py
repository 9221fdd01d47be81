"""Speed of the pSp encoder (IR-SE-50 pyramid, 256 input, 18 styles) and its inference rewrites.

    python bench/bench_encoder.py --batch 1 4 --repeats 5 --json bench/results/encoder_cpu.json
    python bench/bench_encoder.py --device cuda --batch 1 8 64 --repeats 5

Random weights (speed does not depend on their values; BN statistics are randomised so that the
BN folding is not a no-op). Modes, each a rewrite on top of the previous one:

- ``plain``: ``torch.no_grad``, NCHW tensors: what the original pSp inference script does;
- ``inference_mode``: ``torch.inference_mode`` instead (no version counters or view tracking);
- ``channels_last``: encoder weights and input in NHWC (oneDNN's native layout on CPU);
- ``fused_bn``: BatchNorm folded into the preceding convolutions (`psp.models.nets.fuse`);
- ``merged_styles``: the style blocks of each pyramid level run as one network
  (`psp.models.nets.fuse.optimize_for_inference`: all rewrites together).

Modes are interleaved within each repeat (a busy machine slows them alike), after ``--warmup``
untimed runs; the report gives the median and every wall time, the median process CPU time, the
max abs difference of the codes from ``plain``'s, and the load average before and after.
On CUDA the modes are fp32 as is, and fp32 and bf16 (autocast) with all rewrites.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import describe_machine, figure, sync, write_json  # noqa: E402
from psp.config import EncoderConfig  # noqa: E402
from psp.models.model import build_encoder  # noqa: E402
from psp.models.nets.fuse import fuse_bn_for_inference, optimize_for_inference  # noqa: E402

N_STYLES = 18  # a 1024 px generator, as the released FFHQ model


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per setting (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per setting first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def build(device: torch.device) -> nn.Module:
    """The FFHQ recipe's encoder with random weights and randomised BN statistics, in eval mode."""
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(), N_STYLES, 512, load_init=False)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return encoder.to(device).eval()


def cpu_modes(base: nn.Module) -> dict[str, tuple[nn.Module, Callable, bool]]:
    """mode -> (model, grad context, channels_last input)."""
    channels_last = copy.deepcopy(base).to(memory_format=torch.channels_last)
    fused = fuse_bn_for_inference(copy.deepcopy(base)).to(memory_format=torch.channels_last)
    return {
        "plain": (base, torch.no_grad, False),
        "inference_mode": (base, torch.inference_mode, False),
        "channels_last": (channels_last, torch.inference_mode, True),
        "fused_bn": (fused, torch.inference_mode, True),
        "merged_styles": (optimize_for_inference(copy.deepcopy(base)), torch.inference_mode, True),
    }


def cuda_modes(base: nn.Module) -> dict[str, tuple[nn.Module, Callable, bool]]:
    optimized = optimize_for_inference(copy.deepcopy(base))
    return {
        "fp32": (base, torch.inference_mode, False),
        "fp32_optimized": (optimized, torch.inference_mode, True),
        "bf16_optimized": (optimized, _bf16, True),
    }


class _bf16:
    """inference_mode + bf16 autocast, as one context."""

    def __enter__(self):
        self._stack = [torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16)]
        for ctx in self._stack:
            ctx.__enter__()

    def __exit__(self, *exc):
        for ctx in reversed(self._stack):
            ctx.__exit__(*exc)


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    base = build(device)
    modes = cuda_modes(base) if device.type == "cuda" else cpu_modes(base)
    reference = next(iter(modes))
    results = []
    for batch in args.batch:
        x = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch)).mul_(2).sub_(1).to(device)
        inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}

        def encode(mode: str) -> torch.Tensor:
            model, context, nhwc = modes[mode]
            with context():
                return model(inputs[nhwc])

        codes = {mode: encode(mode).float() for mode in modes}  # also the first warm-up run
        for _ in range(args.warmup - 1):
            for mode in modes:
                encode(mode)
        times = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                sync(device)
                wall, cpu = time.perf_counter(), time.process_time()
                encode(mode)
                sync(device)
                times[mode].append((time.perf_counter() - wall, time.process_time() - cpu))
        for mode in modes:
            walls = [w for w, _ in times[mode]]
            results.append({
                "device": device.type, "batch": batch, "mode": mode,
                "median_s": statistics.median(walls), "min_s": min(walls), "wall_s": walls,
                "median_cpu_s": statistics.median(c for _, c in times[mode]),
                "max_abs_diff": float((codes[mode] - codes[reference]).abs().max()),
                "codes_std": float(codes[reference].std()),
            })
            r = results[-1]
            print(f"batch {batch:3d}  {mode:18s}  median {r['median_s']:7.3f} s  cpu {r['median_cpu_s']:7.3f} s  "
                  f"(runs {', '.join(f'{w:.2f}' for w in walls)})  max|diff| {r['max_abs_diff']:.2e}", flush=True)
    return results


def speedups(results: list[dict]) -> list[dict]:
    """Each mode's speed-up over the first (reference) mode, per batch."""
    out = []
    for batch in sorted({r["batch"] for r in results}):
        rows = [r for r in results if r["batch"] == batch]
        for r in rows[1:]:
            out.append({"batch": batch, "mode": r["mode"], "baseline": rows[0]["mode"],
                        "speedup": rows[0]["median_s"] / r["median_s"]})
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = run_benchmark(args)
    gains = speedups(results)
    for g in gains:
        print(f"batch {g['batch']:3d}  {g['mode']:18s} {g['speedup']:.2f}x faster than {g['baseline']}")
    report = {
        "benchmark": "encoder", "args": {k: str(v) for k, v in vars(args).items()},
        "machine": describe_machine(), "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results, "speedups": gains,
        "figures": [figure(f"encoder/{r['device']}/batch{r['batch']}/{r['mode']}/median_s", r["median_s"], "s")
                    for r in results]
                   + [figure(f"encoder/batch{g['batch']}/{g['mode']}/speedup", g["speedup"], "x", "higher")
                      for g in gains],
    }
    if args.json is not None:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Speed of the StyleGAN2 generator: the form inference uses against the original's way, same machine.

    python bench/bench_generator.py --size 1024 --channel-multiplier 2 --batch 1 4 --repeats 3 \\
        --json bench/results/generator_cpu.json
    python bench/bench_generator.py --reference /tmp/reference     # also time rosinality's model.py
    python bench/bench_generator.py --device cuda --json bench/results/generator_cuda.json

CPU: the config-f generator (random weights; speed does not depend on their values) renders W+
codes with ``randomize_noise=False`` under ``torch.inference_mode``, at each ``--batch``, in modes

- ``default``: what inference runs, `stylegan2.optimize_generator_for_inference` of the generator
  (``fused_modconv=None``: per-layer form; channels-last, depthwise blur, in-place tails);
- ``fused``: the same with ``fused_modconv=True``, the original's per-sample grouped convolutions
  (so it isolates the modulated-conv form; it is not the original's speed);
- ``nonfused``: the same with ``fused_modconv=False``;
- ``specification``: the plain `stylegan2.Generator` (no inference rewrite), what training runs;
- ``reference`` (with ``--reference DIR``): ``DIR/model.py``, rosinality/stylegan2-pytorch's
  ``model.py`` next to an ``op`` package that runs on CPU, loaded with the same weights.

Modes are interleaved within each repeat (so a busy machine slows them alike), after ``--warmup``
untimed runs; the report gives the median and every wall time, the median process CPU time, the
max abs difference of each mode's images from ``default``'s, and the load average.

CUDA (``--device cuda``): ``bias_act`` and ``upfirdn2d`` cuda vs ref on 1024-scale tensors
(forward + backward), and the whole generator forward in fp32 and bf16 (autocast).
Targets for CPU inference (2 cores, 1024): ``default`` at least 1.3x faster than the original at
batch 1 and 3x at batch 4.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

# Transparent huge pages for PyTorch's large CPU buffers: a fresh 128 MB activation otherwise
# costs ~32k page faults, often more than the arithmetic that fills it. PyTorch reads this once,
# at import, so it is set before `import torch`; it helps every mode alike (--no-thp to compare).
if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import load_reference, sync  # noqa: E402
from stylegan2 import Generator, optimize_generator_for_inference  # noqa: E402
from stylegan2.ops import active_impl, bias_act, setup_filter, upfirdn2d  # noqa: E402

TARGET_SPEEDUP = {1: 1.3, 4: 3.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--channel-multiplier", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per setting first")
    parser.add_argument("--modes", nargs="+", default=["default", "fused"],
                        choices=["default", "fused", "nonfused", "specification"])
    parser.add_argument("--reference", type=Path, default=None,
                        help="directory holding rosinality's model.py (with a CPU-capable op package)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--no-thp", action="store_true",
                        help="leave THP_MEM_ALLOC_ENABLE unset (default: set to 1 before importing torch)")
    return parser.parse_args(argv)


def time_runs(run: Callable[[], object], device: torch.device) -> Dict[str, float]:
    """Wall and process-CPU seconds of ``run()``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    sync(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def bench_cpu(args: argparse.Namespace) -> List[dict]:
    device = torch.device("cpu")
    torch.manual_seed(0)
    ours = Generator(args.size, 512, 8, channel_multiplier=args.channel_multiplier).eval()
    inference = optimize_generator_for_inference(ours)
    models = {mode: ours if mode == "specification" else inference for mode in args.modes}
    if args.reference is not None:
        reference = load_reference(args.reference, args.size, args.channel_multiplier).eval()
        reference.load_state_dict(ours.state_dict(), strict=True)
        models["reference"] = reference
    fused_setting = {"default": None, "fused": True, "nonfused": False}

    results = []
    for batch in args.batch:
        w_plus = torch.randn(batch, ours.n_latent, 512, generator=torch.Generator().manual_seed(batch))

        def render(mode: str) -> torch.Tensor:
            if mode in fused_setting:
                inference.fused_modconv = fused_setting[mode]
            with torch.inference_mode():
                return models[mode]([w_plus], input_is_latent=True, randomize_noise=False)[0]

        images = {mode: render(mode) for mode in models}  # also the first warm-up run
        for _ in range(args.warmup - 1):
            for mode in models:
                render(mode)
        times: Dict[str, List[Dict[str, float]]] = {mode: [] for mode in models}
        for _ in range(args.repeats):
            for mode in models:
                times[mode].append(time_runs(lambda: render(mode), device))
        base = images.get("default", next(iter(images.values())))
        for mode in models:
            walls = [t["wall"] for t in times[mode]]
            results.append({
                "device": "cpu", "batch": batch, "mode": mode,
                "median_s": statistics.median(walls), "min_s": min(walls), "wall_s": walls,
                "median_cpu_s": statistics.median(t["cpu"] for t in times[mode]),
                "max_abs_diff_vs_default": float((images[mode] - base).abs().max()),
                "image_std": float(base.std()),
            })
            print(f"batch {batch:3d}  {mode:13s}  median {results[-1]['median_s']:7.3f} s  "
                  f"min {results[-1]['min_s']:7.3f} s  cpu {results[-1]['median_cpu_s']:7.3f} s  "
                  f"(runs {', '.join(f'{x:.2f}' for x in walls)})  "
                  f"max|diff| {results[-1]['max_abs_diff_vs_default']:.2e}", flush=True)
        inference.fused_modconv = None
    return results


def speedups(results: List[dict]) -> List[dict]:
    """default's speed-up over each baseline mode, per batch."""
    table = {(r["batch"], r["mode"]): r["median_s"] for r in results}
    out = []
    for (batch, mode), seconds in table.items():
        if mode in ("fused", "specification", "reference") and (batch, "default") in table:
            ratio = seconds / table[batch, "default"]
            target = TARGET_SPEEDUP.get(batch) if mode == "reference" else None  # vs the original
            out.append({"batch": batch, "baseline": mode, "speedup": ratio, "target": target})
            print(f"batch {batch:3d}  default is {ratio:.2f}x faster than {mode}"
                  + (f" (target {target}x)" if target else ""))
    return out


def bench_cuda(args: argparse.Namespace) -> List[dict]:
    device = torch.device("cuda")
    results = []

    def timed(name: str, run: Callable[[], object]) -> float:
        for _ in range(max(1, args.warmup)):
            run()
        walls = sorted(time_runs(run, device)["wall"] for _ in range(max(3, args.repeats)))
        seconds = statistics.median(walls)
        results.append({"device": "cuda", "name": name, "median_s": seconds})
        print(f"{name:48s} {seconds * 1e3:9.3f} ms", flush=True)
        return seconds

    # 1024-scale tensors: the last level of the 1024 generator at batch 4.
    x = torch.randn(4, 32, 1024, 1024, device=device, requires_grad=True)
    bias = torch.randn(32, device=device, requires_grad=True)
    kernel = setup_filter([1, 3, 3, 1], gain=4).to(device)
    small = torch.randn(4, 32, 512, 512, device=device, requires_grad=True)
    for impl in ("cuda", "ref"):
        timed(f"bias_act lrelu fwd+bwd [4,32,1024,1024] {impl}",
              lambda: bias_act(x, bias, act="lrelu", impl=impl).sum().backward())
        timed(f"upfirdn2d up2 pad(2,1) fwd+bwd [4,32,512,512] {impl}",
              lambda: upfirdn2d(small, kernel, up=2, pad=(2, 1), impl=impl).sum().backward())
        timed(f"upfirdn2d blur pad 1 fwd+bwd [4,32,1025,1025] {impl}",
              lambda: upfirdn2d(x, kernel, pad=1, impl=impl).sum().backward())

    generator = optimize_generator_for_inference(
        Generator(args.size, 512, 8, channel_multiplier=args.channel_multiplier).to(device))
    for batch in args.batch:
        w_plus = torch.randn(batch, generator.n_latent, 512, device=device)
        for dtype in (torch.float32, torch.bfloat16):
            def run():
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype,
                                                            enabled=dtype != torch.float32):
                    generator([w_plus], input_is_latent=True, randomize_noise=False)
            timed(f"generator {args.size} fwd batch {batch} {str(dtype)[6:]}", run)
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    load_before = os.getloadavg()
    results = bench_cpu(args) if args.device == "cpu" else bench_cuda(args)
    report = {
        "benchmark": "generator",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "ops": active_impl(),
                    "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "results": results,
        "speedups": speedups(results) if args.device == "cpu" else [],
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

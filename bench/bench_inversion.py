"""Throughput and peak memory of a full pSp inversion: 256 input -> encoder -> G -> pool to 256.

    python bench/bench_inversion.py                          # CPU: batch 1 and 4, fp32, 1024 G
    python bench/bench_inversion.py --size 256 --repeats 2   # quick run
    python bench/bench_inversion.py --device cuda            # GPU: batch 1..64, fp32 and bf16
    python bench/bench_inversion.py --out bench/results/inversion_cpu.json

The model is the FFHQ recipe (IR-SE-50 pyramid encoder, config-f generator) with random weights
built by ``PSP.from_config`` (speed does not depend on the weights' values). Modes:

- ``ours``: what ``infer.py`` runs: the inversion engine (``psp.inference.engine.Engine``) on the
  model's inference form (BN folded, merged style blocks, NHWC), NHWC input, ``torch.inference_mode``,
  the generator's default path, huge pages; once per ``--precisions`` entry (autocast for bf16/fp16);
- ``psp_like``: the original's algorithms in our code, fp32: the plain encoder on NCHW input under
  ``torch.no_grad`` and the generator's per-sample grouped convolutions (``fused_modconv=True``).
  The same-machine baseline; the original code's figures on the reference 2-core machine are in
  the report too.
- ``original`` (with ``--reference DIR``): the original code's inversion on this machine: the
  plain encoder as in ``psp_like`` (pSp's encoder is the same algorithm) and rosinality's own
  ``DIR/model.py`` generator with its CPU ops, loaded with the same weights, then pSp's pooling.

Modes are interleaved within each repeat (a busy machine slows them alike), after ``--warmup``
untimed runs; the median wall time is reported with its encoder / generator split. Peak memory
per mode: on CPU the process's peak resident set, reset before every call through
/proc/self/clear_refs (else the process-wide peak); on GPU ``torch.cuda.max_memory_allocated``.
Targets (2-core CPU, 1024 G): the original takes ~5.4 s at batch 1 and ~38 s at batch 4; the
full inversion should be >= 2.5x (batch 1) and >= 5x (batch 4) faster in fp32; GPU: bf16 throughput
>= 3x the original's fp32 (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

# Huge pages, as infer.py sets them; read by PyTorch at its first allocation (see bench_generator).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import describe_machine, figure, load_reference, sync, write_json  # noqa: E402
from psp.config import load_config  # noqa: E402
from psp.inference.engine import Engine  # noqa: E402
from psp.models.model import PSP  # noqa: E402

# Seconds per batch of the original pSp code on the 2-core CPU machine (docs/benchmarks.md), and the targets.
ORIGINAL_CPU_SECONDS = {1: 5.4, 4: 38.0}
TARGET_SPEEDUP = {1: 1.3, 4: 3.0}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_models(size: int, device: torch.device) -> tuple[PSP, torch.nn.Module]:
    """(the model, a plain copy of its encoder for the psp_like mode); ``ours`` uses its inference form."""
    overrides = [f"model.generator.size={size}", "model.generator.checkpoint=null", "model.encoder.init=null",
                 "model.w_avg.source=estimate", "model.w_avg.n_samples=1000"]
    model = PSP.from_config(load_config(["ffhq"], overrides, command="model").model).to(device).eval()
    plain_encoder = copy.deepcopy(model.encoder)
    return model, plain_encoder


def _reset_peak(device: torch.device) -> bool:
    """Start a new peak-memory window; False when only the process-wide CPU peak is available."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS)
        return True
    except OSError:
        return False


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def inversion_steps(model: PSP, plain_encoder: torch.nn.Module, mode: str, precision: str,
                    device: torch.device, reference: torch.nn.Module | None = None) -> tuple[Callable, Callable]:
    """(encode, decode) of one mode: x [B,3,256,256] -> codes -> images [B,3,256,256]."""
    if mode == "ours":
        engine = Engine(inference_form(model), device, precision)
        return engine.encode, engine.decode

    def contexts() -> ExitStack:
        stack = ExitStack()
        stack.enter_context(torch.no_grad())
        if AUTOCAST[precision] is not None:
            stack.enter_context(torch.autocast(device.type, dtype=AUTOCAST[precision]))
        return stack

    def encode(x):
        with contexts():
            return plain_encoder(x) + model.w_avg

    def decode(codes):
        model.generator.fused_modconv = True
        with contexts():
            generator = reference if mode == "original" else model.generator
            images, _ = generator([codes], input_is_latent=True, randomize_noise=False)
            return F.adaptive_avg_pool2d(images, (256, 256))  # pSp's face_pool

    return encode, decode


def inference_form(model: PSP):
    """The model's inference form, made once per model (it copies the encoder)."""
    if not hasattr(model, "_bench_inference_form"):
        model._bench_inference_form = model.for_inference()
    return model._bench_inference_form


def bench_batch(model: PSP, plain_encoder: torch.nn.Module, batch: int, modes: list[tuple[str, str]],
                device: torch.device, repeats: int, warmup: int,
                reference: torch.nn.Module | None = None) -> list[dict]:
    """One result per (mode, precision) at ``batch``: median seconds, split, images/s, peak memory."""
    x = torch.rand(batch, 3, model.input_size, model.input_size, device=device,
                   generator=torch.Generator(device).manual_seed(batch)) * 2 - 1
    steps = {key: inversion_steps(model, plain_encoder, *key, device, reference) for key in modes}
    times = {key: [] for key in modes}
    peaks = {key: 0.0 for key in modes}
    windowed = True
    for i in range(warmup + repeats):
        for key in modes:
            encode, decode = steps[key]
            windowed = _reset_peak(device) and windowed
            sync(device)
            t0 = time.perf_counter()
            codes = encode(x)
            sync(device)
            t1 = time.perf_counter()
            decode(codes)
            sync(device)
            t2 = time.perf_counter()
            peaks[key] = max(peaks[key], _peak_mb(device))
            if i >= warmup:
                times[key].append((t1 - t0, t2 - t1))
    model.generator.fused_modconv = None
    results = []
    for (mode, precision), walls in times.items():
        totals = [e + d for e, d in walls]
        median = statistics.median(totals)
        results.append({
            "mode": mode, "precision": precision, "batch": batch, "median_s": round(median, 4),
            "encode_s": round(statistics.median(e for e, _ in walls), 4),
            "decode_s": round(statistics.median(d for _, d in walls), 4),
            "images_per_s": round(batch / median, 4), "wall_s": [round(t, 4) for t in totals],
            "peak_mem_mb": round(peaks[(mode, precision)], 1),
            "memory": ("cuda_max_allocated" if device.type == "cuda"
                       else "peak_rss" if windowed else "peak_rss_process")})
        r = results[-1]
        print(f"batch {batch:3d}  {mode:8s} {precision:5s}  {r['median_s']:8.3f} s  (encode {r['encode_s']:.3f}, "
              f"G {r['decode_s']:.3f})  {r['images_per_s']:8.3f} img/s  peak {r['peak_mem_mb']:.0f} MB",
              file=sys.stderr, flush=True)
    return results


def speedups(results: list[dict], device: torch.device, size: int) -> list[dict]:
    """Per batch and precision: ours against psp_like fp32, the original measured here (with
    --reference) and the original code's figures on the reference machine (CPU, 1024)."""
    out = []
    baselines = {mode: {r["batch"]: r["median_s"] for r in results if r.get("mode") == mode}
                 for mode in ("psp_like", "original")}
    for r in results:
        if r.get("mode") != "ours":
            continue
        entry = {"batch": r["batch"], "precision": r["precision"]}
        for mode, seconds in baselines.items():
            if r["batch"] in seconds:
                entry[f"vs_{mode}"] = round(seconds[r["batch"]] / r["median_s"], 3)
        if device.type == "cpu" and size == 1024 and r["batch"] in ORIGINAL_CPU_SECONDS:
            entry["vs_spec_original"] = round(ORIGINAL_CPU_SECONDS[r["batch"]] / r["median_s"], 3)
            entry["target"] = TARGET_SPEEDUP[r["batch"]]
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="generator side (1024 = FFHQ; smaller for quick runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="default: 1 4 on CPU, 1 2 4 8 16 32 64 on GPU")
    parser.add_argument("--precisions", nargs="+", choices=tuple(AUTOCAST),
                        help="of the 'ours' mode; default: fp32 on CPU, fp32 bf16 on GPU")
    parser.add_argument("--no-baseline", action="store_true", help="skip the psp_like mode")
    parser.add_argument("--reference", type=Path,
                        help="a rosinality stylegan2-pytorch checkout (model.py + op/): adds the original mode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per setting first")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([1, 2, 4, 8, 16, 32, 64] if on_gpu else [1, 4])
    modes = [("ours", p) for p in args.precisions or (["fp32", "bf16"] if on_gpu else ["fp32"])]
    if not args.no_baseline:
        modes.append(("psp_like", "fp32"))
    if args.reference:
        modes.append(("original", "fp32"))

    torch.manual_seed(0)
    model, plain_encoder = build_models(args.size, device)
    reference = None
    if args.reference:
        reference = load_reference(args.reference, args.size).to(device).eval()
        reference.load_state_dict(model.generator.state_dict(), strict=True)
    load_before = os.getloadavg()
    results = []
    for batch in batch_sizes:
        try:
            results += bench_batch(model, plain_encoder, batch, modes, device, args.repeats, args.warmup,
                                   reference)
        except torch.OutOfMemoryError:
            results.append({"batch": batch, "error": "out of memory"})
            torch.cuda.empty_cache()
    gains = speedups(results, device, args.size)
    report = {
        "benchmark": "inversion", "size": args.size, "input_size": model.input_size, "device": device.type,
        "repeats": args.repeats, "warmup": args.warmup, "machine": describe_machine(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results, "speedups": gains,
        "figures": [figure(f"inversion/{device.type}/batch{r['batch']}/{r['mode']}-{r['precision']}/{name}",
                           r[name], unit, better)
                    for r in results if "error" not in r
                    for name, unit, better in (("median_s", "s", "lower"), ("images_per_s", "img/s", "higher"),
                                               ("peak_mem_mb", "MB", "lower"))]
        + [figure(f"inversion/{device.type}/batch{g['batch']}/{g['precision']}/speedup", g["vs_psp_like"], "x",
                  "higher") for g in gains if "vs_psp_like" in g]
        + [figure(f"inversion/{device.type}/batch{g['batch']}/{g['precision']}/speedup_vs_original",
                  g["vs_original"], "x", "higher") for g in gains if "vs_original" in g],
    }
    for g in gains:
        print("speedup " + ", ".join(f"{k} {v}" for k, v in g.items()), file=sys.stderr)
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

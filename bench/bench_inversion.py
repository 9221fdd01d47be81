"""Throughput and peak memory of a full pSp inversion: 256 input -> encoder -> G -> pool to 256.

    python bench/bench_inversion.py                          # CPU: batch 1 and 4, fp32, 1024 G
    python bench/bench_inversion.py --size 256 --repeats 2   # quick run
    python bench/bench_inversion.py --device cuda            # GPU: batch 1..64, fp32 and bf16
    python bench/bench_inversion.py --out bench/results/inversion_cpu.json

The model is the FFHQ recipe (IR-SE-50 pyramid encoder, config-f generator) with random weights,
built by ``PSP.from_config``: the speed does not depend on the weights' values. Each setting is
timed ``--repeats`` times after ``--warmup`` untimed runs; the median is reported, split into the
encoder and the generator (+ pooling). Peak memory: on CPU the process's peak resident set (reset
before each setting through /proc/self/clear_refs where the kernel allows it, else the
process-wide peak so far); on GPU ``torch.cuda.max_memory_allocated``.

SPEC §10 targets on the 2-core CPU machine: the original pSp code takes ~5.4 s at batch 1 and
~38 s at batch 4 (1024 G); we need >= 1.3x and >= 3x faster.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from psp.config import load_config  # noqa: E402
from psp.model import PSP  # noqa: E402

# Seconds per batch of the original pSp code on the 2-core CPU machine (SPEC §10), batch -> s.
ORIGINAL_CPU_SECONDS = {1: 5.4, 4: 38.0}
TARGET_SPEEDUP = {1: 1.3, 4: 3.0}


def build_model(size: int, device: torch.device) -> PSP:
    """The ffhq recipe's model with random weights and a generator of side ``size``."""
    overrides = [f"model.generator.size={size}", "model.generator.checkpoint=null", "model.encoder.init=null",
                 "model.w_avg.source=estimate", "model.w_avg.n_samples=1000"]
    config = load_config(["ffhq"], overrides, purpose="infer")
    return PSP.from_config(config.model).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def time_setting(model: PSP, batch: int, precision: str, device: torch.device, repeats: int,
                 warmup: int) -> dict:
    """Median seconds of encode and decode for one batch size and precision, and the peak memory."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    x = torch.rand(batch, 3, model.input_size, model.input_size, device=device) * 2 - 1
    windowed = _reset_peak(device)
    encode_s, decode_s = [], []
    for i in range(warmup + repeats):
        with torch.inference_mode(), autocast():
            _sync(device)
            t0 = time.perf_counter()
            codes = model.encode(x)
            _sync(device)
            t1 = time.perf_counter()
            model.decode(codes, resize=True)
            _sync(device)
            t2 = time.perf_counter()
        if i >= warmup:
            encode_s.append(t1 - t0)
            decode_s.append(t2 - t1)
    total = [e + d for e, d in zip(encode_s, decode_s)]
    seconds = statistics.median(total)
    result = {"batch": batch, "precision": precision, "seconds_per_batch": round(seconds, 4),
              "encode_s": round(statistics.median(encode_s), 4),
              "decode_s": round(statistics.median(decode_s), 4),
              "images_per_s": round(batch / seconds, 3), "peak_mem_mb": round(_peak_mb(device), 1),
              "memory": ("cuda_max_allocated" if device.type == "cuda"
                         else "peak_rss" if windowed else "peak_rss_process")}
    if device.type == "cpu" and model.config.generator.size == 1024 and batch in ORIGINAL_CPU_SECONDS:
        speedup = ORIGINAL_CPU_SECONDS[batch] / seconds
        result.update(original_pSp_s=ORIGINAL_CPU_SECONDS[batch], speedup=round(speedup, 2),
                      target_speedup=TARGET_SPEEDUP[batch], meets_target=speedup >= TARGET_SPEEDUP[batch])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="generator side (1024 = FFHQ; smaller for quick runs)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="default: 1 4 on CPU, 1 2 4 8 16 32 64 on GPU")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"),
                        help="default: fp32 on CPU, fp32 bf16 on GPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per setting")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    batch_sizes = args.batch_sizes or ([1, 2, 4, 8, 16, 32, 64] if on_gpu else [1, 4])
    precisions = args.precisions or (["fp32", "bf16"] if on_gpu else ["fp32"])

    torch.manual_seed(0)
    model = build_model(args.size, device)
    report = {"benchmark": "inversion", "size": args.size, "input_size": model.input_size,
              "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "repeats": args.repeats, "warmup": args.warmup, "results": []}
    for precision in precisions:
        for batch in batch_sizes:
            try:
                result = time_setting(model, batch, precision, device, args.repeats, args.warmup)
            except torch.OutOfMemoryError:
                result = {"batch": batch, "precision": precision, "error": "out of memory"}
                torch.cuda.empty_cache()
            report["results"].append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

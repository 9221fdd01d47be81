"""Throughput of ``infer.py`` end to end with 1, 2, ... processes (ranks from the environment, as
torchrun sets them), and where the time goes in each (``--profile``).

    python bench/bench_shards.py                                   # CPU: 1 and 2 processes
    python bench/bench_shards.py --size 1024 --images 16           # the FFHQ generator
    python bench/bench_shards.py --device cuda --processes 1       # images/s per GPU
    python bench/bench_shards.py --device cuda:0 --processes 1 2   # two ranks sharing one GPU
    python bench/bench_shards.py --out bench/results/shards_cpu.json

The model is the FFHQ recipe (IR-SE-50 pyramid encoder, a ``--size`` generator) with random
weights saved as a checkpoint; the inputs are ``--images`` random 256 px JPEG photos. Each setting
runs ``infer.py`` as a real user does (own processes, decoding workers, writer threads, manifest
parts merged at the end). On the CPU the cores are split between the processes
(``OMP_NUM_THREADS`` = cores / processes), so the comparison is the same machine used two ways.

Reported per setting: ``run_s`` (the slowest rank's inversion time, from its first batch to its
last manifest line: model loading and interpreter start excluded), ``images_per_s`` = images /
``run_s``, ``wall_s`` (launch to the last exit, everything included), ``scaling`` against one
process, and each rank's ``--profile`` stages (busy seconds and the images/s each would sustain).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import describe_machine, figure, write_json  # noqa: E402
from psp.config import load_config  # noqa: E402
from psp.evaluation.machine import usable_cores  # noqa: E402
from psp.inference.profile import STAGES  # noqa: E402
from psp.models.model import PSP  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"inverted (\d+), failed (\d+), skipped (\d+) in ([\d.]+) s")
STAGE = re.compile(r"^\s+(\w+)\s+([\d.]+) s busy .*?:\s+([\d.]+|inf) images/s", re.M)


def make_inputs(folder: Path, size: int, n_images: int) -> tuple[Path, Path]:
    """(a checkpoint with random FFHQ-recipe weights and a ``size`` generator, a folder of photos)."""
    torch.manual_seed(0)
    overrides = [f"model.generator.size={size}", "model.generator.checkpoint=null", "model.encoder.init=null",
                 "model.w_avg.source=estimate", "model.w_avg.n_samples=1000"]
    checkpoint = folder / "model.pt"
    PSP.from_config(load_config(["ffhq"], overrides, command="model").model).save(checkpoint)
    photos = folder / "photos"
    rng = np.random.default_rng(0)
    for i in range(n_images):
        # Smooth random pictures (noise upsampled): JPEG decoding costs what it costs on photos.
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = photos / f"{i % 4}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(path, quality=90)
    return checkpoint, photos


def run_setting(processes: int, args: argparse.Namespace, checkpoint: Path, photos: Path, out: Path) -> dict:
    """One ``infer.py`` launch with ``processes`` ranks; its timings and each rank's profile."""
    threads = max(1, args.cores // processes) if args.device.startswith("cpu") else 1
    command = [sys.executable, str(ROOT / "infer.py"), str(photos), "--out", str(out), "--checkpoint",
               str(checkpoint), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--device", args.device, "--precision", args.precision, "--quiet", "--profile"]
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    base.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=os.pathsep.join([str(ROOT), base.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    procs = []
    for rank in range(processes):
        env = dict(base, RANK=str(rank), WORLD_SIZE=str(processes), LOCAL_RANK=str(rank)) if processes > 1 else base
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True))
    logs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - start
    ranks = []
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        summary = SUMMARY.search(log)
        if proc.returncode != 0 or summary is None:
            raise SystemExit(f"rank {rank} of {processes} failed (exit {proc.returncode}):\n{log}")
        ranks.append({"rank": rank, "images": int(summary.group(1)), "run_s": float(summary.group(4)),
                      "stages": {m.group(1): {"busy_s": float(m.group(2)), "images_per_s": float(m.group(3))}
                                 for m in STAGE.finditer(log) if m.group(1) in STAGES}})
    latents = len(list(out.rglob("*.pt")))
    if latents != args.images or not (out / "manifest.jsonl").is_file():
        raise SystemExit(f"{processes} processes: {latents} latents of {args.images}, or no merged manifest")
    run_s = max(r["run_s"] for r in ranks)
    result = {"processes": processes, "threads_per_process": threads, "run_s": round(run_s, 3),
              "images_per_s": round(args.images / run_s, 3), "wall_s": round(wall, 3),
              "images_per_s_wall": round(args.images / wall, 3), "ranks": ranks}
    print(f"{processes} process(es) x {threads} thread(s): {result['images_per_s']:.2f} images/s "
          f"(run {run_s:.1f} s, wall {wall:.1f} s)", file=sys.stderr, flush=True)
    for r in ranks:
        print("   rank {}: ".format(r["rank"]) + ", ".join(
            f"{k} {v['busy_s']:.1f} s ({v['images_per_s']:.1f}/s)" for k, v in r["stages"].items()),
            file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="generator side (1024 = FFHQ)")
    parser.add_argument("--images", type=int, default=48, help="input photos")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="rank counts to run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (rank r on cuda:r) or cuda:N (all ranks on N)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes per rank")
    parser.add_argument("--cores", type=int, default=usable_cores(), help="CPU cores split between the ranks")
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        checkpoint, photos = make_inputs(Path(tmp), args.size, args.images)
        results = [run_setting(p, args, checkpoint, photos, Path(tmp) / f"out-{p}") for p in args.processes]
    single = next((r["images_per_s"] for r in results if r["processes"] == 1), None)
    for r in results:
        if single:
            r["scaling"] = round(r["images_per_s"] / single, 3)
    device = args.device.split(":")[0]
    report = {
        "benchmark": "shards", "size": args.size, "images": args.images, "device": args.device,
        "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers,
        "machine": describe_machine(), "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results,
        "figures": [figure(f"shards/{device}/p{r['processes']}/images_per_s", r["images_per_s"], "img/s", "higher")
                    for r in results]
        + [figure(f"shards/{device}/p{r['processes']}/scaling", r["scaling"], "x", "higher")
           for r in results if "scaling" in r],
    }
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One command for a lent GPU (``make gpu-check``): build the ops, run the CUDA tests, run the GPU
benchmarks, write one JSON report and a short markdown table.

    python bench/gpu_check.py                                   # on the GPU machine (< 8 min on one H100)
    python bench/gpu_check.py --out bench/results/gpu_check     # -> gpu_check.json + gpu_check.md
    python bench/gpu_check.py --smoke --out /tmp/check          # CPU: the machinery, tiny shapes, seconds

Stages, in order, each with its own time limit inside the overall ``--budget`` (seconds):

1. ``build``: ``python -m stylegan2.ops build`` (for the visible GPU), timed.
2. ``test_cuda``: ``pytest -m cuda`` (what ``make test-cuda`` runs), pass/fail counts.
3. ``ops``: our kernels against the reference ops at 1024-px generator shapes (bias_act on
   [4, 32, 1024, 1024], the 2x upsampling, the blur after the transposed conv, 2x downsampling),
   forward and forward+backward, fp32 and bf16, median milliseconds.
4. ``inversion``: ``bench/bench_inversion.py`` at 1024 px, batch 8, ours in fp32 and bf16 against
   the original-style ``psp_like`` path.
5. ``train``: ``bench/bench_train.py`` at batch 8: fp32 (ours and psp_like) and bf16-mixed (ours),
   step time and peak memory.

Progress goes to stderr. The JSON (and the markdown) is rewritten after every stage, so a run cut
short keeps what it finished: SIGTERM or Ctrl-C stops the running stage (its child process is
killed), marks it ``interrupted`` and the rest ``not run``, and writes the report. A stage that
fails is recorded with its error and the next one runs. ``--smoke`` runs the ``ops`` stage on the
CPU at tiny shapes (reference ops only) and ``python -m stylegan2.ops info`` as its one command
stage, for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import describe_machine, sync, write_json  # noqa: E402
from psp.io.atomic import atomic_write_text  # noqa: E402
from stylegan2.ops import bias_act, downsample2d, setup_filter, upfirdn2d, upsample2d  # noqa: E402


class Interrupted(Exception):
    """SIGTERM / SIGINT arrived while a stage ran."""


@dataclass
class Stage:
    """``run(time_limit_s) -> dict`` produces the stage's result; ``limit_s`` caps its wall time."""

    name: str
    run: Callable[[float], dict]
    limit_s: float


@dataclass
class Report:
    path_json: Path
    path_md: Path
    data: dict = field(default_factory=dict)

    def write(self) -> None:
        write_json(self.path_json, self.data)
        atomic_write_text(self.path_md, markdown(self.data))


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- command stages ----------------------------------------------------------------------------------

def run_command(command: list[str], limit_s: float) -> dict:
    """Run `command` (output echoed), killed after `limit_s` or on Interrupted; returns rc and tail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    kill = lambda: os.killpg(proc.pid, signal.SIGKILL)
    watchdog = threading.Timer(limit_s, kill)
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            sys.stderr.write("    " + line)
        proc.wait()
    except BaseException:
        kill()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
    if proc.returncode == -signal.SIGKILL:
        raise TimeoutError(f"{' '.join(command[1:3])} killed at its {limit_s:.0f} s limit: {''.join(lines[-3:])}")
    return {"command": " ".join(command), "returncode": proc.returncode, "tail": "".join(lines[-15:])}


def pytest_counts(tail: str) -> dict:
    """{"passed": n, "failed": n, ...} from pytest's summary line."""
    import re
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}


def json_command(command: list[str], out: Path, limit_s: float) -> dict:
    result = run_command(command, limit_s)
    if result["returncode"] != 0:
        raise RuntimeError(f"exit {result['returncode']}: {result['tail'][-500:]}")
    return json.loads(out.read_text())


# --- the ops micro-benchmark -----------------------------------------------------------------------

def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def ops_cases(scale: int, device: torch.device) -> dict:
    """name -> (input shape, op(x, impl)) at the generator's 1024-px shapes divided by `scale`."""
    f = setup_filter([1, 3, 3, 1], device=device)
    b = torch.zeros(32, device=device)
    side = 1024 // scale
    return {
        "bias_act_lrelu": ((4, 32, side, side), lambda x, i: bias_act(x, b.to(x.dtype), act="lrelu", impl=i)),
        "upsample2d": ((4, 64, side // 2, side // 2), lambda x, i: upsample2d(x, f, impl=i)),
        "blur_after_transposed_conv": ((4, 32, side + 3, side + 3),
                                       lambda x, i: upfirdn2d(x, f * 4, pad=(1, 1), impl=i)),
        "downsample2d": ((4, 32, side, side), lambda x, i: downsample2d(x, f, impl=i)),
    }


def bench_ops(device: torch.device, impls: list[str], dtypes: list[torch.dtype], scale: int = 1,
              repeats: int = 10) -> dict:
    rows = []
    for name, (shape, op) in ops_cases(scale, device).items():
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(True)
            for impl in impls:
                def forward():
                    with torch.no_grad():
                        op(x, impl)

                def forward_backward():
                    y = op(x, impl)
                    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
                    return g

                rows.append({"op": name, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
                             "impl": impl, "forward_ms": round(time_ms(forward, device, repeats), 3),
                             "forward_backward_ms": round(time_ms(forward_backward, device, repeats), 3)})
                log(f"ops {name} {rows[-1]['dtype']} {impl}: {rows[-1]['forward_ms']} ms fwd, "
                    f"{rows[-1]['forward_backward_ms']} ms fwd+bwd")
            del x
    return {"rows": rows}


# --- the run -----------------------------------------------------------------------------------------

def gpu_stages(tmp: Path) -> list[Stage]:
    py = sys.executable
    device = torch.device("cuda")
    inversion_json, train32_json, train16_json = tmp / "inversion.json", tmp / "train32.json", tmp / "train16.json"

    def test_cuda(limit):
        result = run_command([py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], limit)
        return {**result, "counts": pytest_counts(result["tail"])}

    def build(limit):
        result = run_command([py, "-m", "stylegan2.ops", "build", "--quiet"], limit)
        if result["returncode"] != 0:
            raise RuntimeError(result["tail"][-500:])
        return result

    def train(limit):
        common = ["--batch", "8", "--steps", "5", "--warmup", "2", "--device", "cuda"]
        fp32 = json_command([py, "bench/bench_train.py", *common, "--precision", "32", "--mode", "both",
                             "--json", str(train32_json)], train32_json, limit * 0.65)
        bf16 = json_command([py, "bench/bench_train.py", *common, "--precision", "bf16-mixed", "--mode", "ours",
                             "--json", str(train16_json)], train16_json, limit * 0.35)
        return {"fp32": fp32, "bf16_mixed": bf16}

    return [
        Stage("build", build, 150),
        Stage("test_cuda", test_cuda, 220),
        Stage("ops", lambda limit: bench_ops(device, ["cuda", "ref"], [torch.float32, torch.bfloat16]), 40),
        Stage("inversion", lambda limit: json_command(
            [py, "bench/bench_inversion.py", "--device", "cuda", "--batch-sizes", "8", "--precisions", "fp32",
             "bf16", "--repeats", "3", "--out", str(inversion_json)], inversion_json, limit), 90),
        Stage("train", train, 120),
    ]


def smoke_stages() -> list[Stage]:
    return [
        Stage("ops", lambda limit: bench_ops(torch.device("cpu"), ["ref"], [torch.float32], scale=64,
                                             repeats=2), 60),
        Stage("info", lambda limit: run_command([sys.executable, "-m", "stylegan2.ops", "info"], limit), 60),
    ]


def run_stages(stages: list[Stage], report: Report, budget_s: float) -> dict:
    """Run `stages` in order within `budget_s`, rewriting the report after each one."""
    deadline = time.monotonic() + budget_s
    results = report.data.setdefault("stages", {})
    for stage in stages:
        results[stage.name] = {"status": "not run"}

    def stop(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for stage in stages:
            left = deadline - time.monotonic()
            if left < 5:
                results[stage.name] = {"status": "skipped", "error": "time budget used up"}
                continue
            log(f"stage {stage.name} (limit {min(stage.limit_s, left):.0f} s)")
            start = time.monotonic()
            try:
                entry = {"status": "ok", "result": stage.run(min(stage.limit_s, left))}
            except Interrupted as err:
                results[stage.name] = {"status": "interrupted", "error": str(err),
                                       "seconds": round(time.monotonic() - start, 1)}
                report.data["interrupted"] = True
                log(f"interrupted by {err}: partial report in {report.path_json}")
                break
            except Exception as err:  # a failed stage is a result; the next stage still runs
                entry = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]}
            entry["seconds"] = round(time.monotonic() - start, 1)
            results[stage.name] = entry
            log(f"stage {stage.name}: {entry['status']} in {entry['seconds']} s")
            report.write()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        report.write()
    return report.data


# --- the markdown summary ----------------------------------------------------------------------------

def markdown(data: dict) -> str:
    lines = [f"# GPU check ({data.get('device', '?')})", "", "| stage | status | seconds | summary |",
             "|---|---|---|---|"]
    for name, entry in data.get("stages", {}).items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {_summary(name, entry)} |")
    ops = data.get("stages", {}).get("ops", {}).get("result", {}).get("rows", [])
    if ops:
        lines += ["", "| op | dtype | impl | forward ms | forward+backward ms |", "|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['dtype']} | {r['impl']} | {r['forward_ms']} | {r['forward_backward_ms']} |"
                  for r in ops]
    return "\n".join(lines) + "\n"


def _summary(name: str, entry: dict) -> str:
    if entry["status"] != "ok":
        return entry.get("error", "").splitlines()[0][:120] if entry.get("error") else ""
    result = entry["result"]
    if name == "test_cuda":
        return ", ".join(f"{n} {k}" for k, n in result["counts"].items())
    if name == "inversion":
        return ", ".join(f"{r['mode']} {r['precision']}: {r['images_per_s']} img/s"
                         for r in result.get("results", []) if "error" not in r)
    if name == "train":
        parts = []
        for key in ("fp32", "bf16_mixed"):
            for r in result[key].get("results", [result[key]]):
                parts.append(f"{r['mode']} {r['precision']}: {r['step_time_s_median']} s/step, "
                             f"{r['peak_memory_mb']:.0f} MB")
        return "; ".join(parts)
    return ""


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check",
                        help="report path without suffix: writes OUT.json and OUT.md")
    parser.add_argument("--budget", type=float, default=450, help="overall wall-time limit in seconds")
    parser.add_argument("--smoke", action="store_true", help="CPU smoke run of the machinery (tiny shapes)")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run it on a GPU machine (or --smoke to test the "
              "machinery on the CPU)", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = Report(args.out.with_suffix(".json"), args.out.with_suffix(".md"), {
        "benchmark": "gpu_check", "smoke": args.smoke, "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu",
        "machine": describe_machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with tempfile.TemporaryDirectory() as tmp:
        data = run_stages(smoke_stages() if args.smoke else gpu_stages(Path(tmp)), report, args.budget)
    log(f"report: {report.path_json} and {report.path_md}")
    print(report.path_md.read_text())
    return 1 if data.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())

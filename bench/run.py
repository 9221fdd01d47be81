"""``python -m bench``: run the benchmark scripts with one preset's sizes and collect ONE JSON.

    python -m bench --preset cpu-small                       # a few minutes on a 2-core machine
    python -m bench --preset gpu-full --json bench/results/h100.json
    python -m bench --preset cpu-small --compare bench/results/cpu-small.json --only generator,inversion

Each benchmark script (``bench/bench_<name>.py``) runs in its own process (a fresh interpreter:
no warm caches or thread settings leak between benchmarks) with the preset's arguments and a
JSON output path. Its report is kept verbatim under ``benchmarks.<name>.runs[i].report`` and
reduced to *figures*: comparable numbers with a stable name, a unit and a direction
(``bench.common.figure``). A script may list its own ``figures``; otherwise :func:`extract_figures`
derives them. The schema is documented in docs/benchmarks.md.

``--compare OLD.json`` prints, per figure present in both runs, the ratio new/old and flags a
regression when the figure got worse by more than ``--threshold`` (default 10 %).
Exit codes: 0 all ran, 1 a benchmark failed (the others still run), 2 usage error,
3 all ran but ``--compare`` found a regression.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

from bench.common import describe_machine, machine_line, write_json

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
FORMAT = "psp-toolkit/bench"
FORMAT_VERSION = 1
BENCHMARKS = ("generator", "encoder", "inversion", "train")
# The flag each script takes for its JSON output path.
OUTPUT_FLAG = {"generator": "--json", "encoder": "--json", "inversion": "--out", "train": "--json"}


@dataclass(frozen=True)
class Run:
    """One invocation of ``bench/bench_<benchmark>.py``; ``tag`` names it inside figure names."""

    benchmark: str
    tag: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Preset:
    description: str
    runs: tuple[Run, ...]
    timeout_s: int = 1800  # per run


PRESETS = {
    "cpu-small": Preset(
        "CPU, small sizes: about 4 minutes on an idle 2-core machine (trends, not the targets of docs/benchmarks.md)",
        (Run("generator", "cpu-128", ("--size", "128", "--batch", "1", "4", "--repeats", "2")),
         Run("encoder", "cpu", ("--device", "cpu", "--batch", "1", "4", "--repeats", "2")),
         Run("inversion", "cpu-128", ("--device", "cpu", "--size", "128", "--batch-sizes", "1", "4",
                                      "--repeats", "2")),
         Run("train", "cpu-64", ("--device", "cpu", "--batch", "2", "--steps", "3", "--warmup", "1",
                                 "--size", "64", "--channel-max", "64", "--input-size", "64"))),
        timeout_s=900),
    "cpu-full": Preset(
        "CPU, the setting of the targets in docs/benchmarks.md: 1024 generator, batch 1 and 4 (tens of minutes on 2 cores)",
        (Run("generator", "cpu-1024", ("--size", "1024", "--batch", "1", "4", "--repeats", "3")),
         Run("inversion", "cpu-1024", ("--device", "cpu", "--size", "1024", "--batch-sizes", "1", "4",
                                       "--repeats", "3"))),
        timeout_s=3600),
    "gpu-full": Preset(
        "one CUDA GPU, real sizes: ops cuda vs ref, 1024 generator and inversion at batch 1..64, "
        "fp32 and bf16, a training step at batch 8",
        (Run("generator", "cuda-1024", ("--device", "cuda", "--size", "1024",
                                        "--batch", "1", "2", "4", "8", "16", "32", "64", "--repeats", "5")),
         Run("encoder", "cuda", ("--device", "cuda", "--batch", "1", "8", "64", "--repeats", "5")),
         Run("inversion", "cuda-1024", ("--device", "cuda", "--size", "1024", "--repeats", "5")),
         Run("train", "cuda-1024-fp32", ("--device", "cuda", "--batch", "8", "--steps", "20")),
         Run("train", "cuda-1024-bf16", ("--device", "cuda", "--batch", "8", "--steps", "20",
                                         "--precision", "bf16-mixed"))),
        timeout_s=1800),
    "ci": Preset(
        "tests only: tiny sizes, seconds per benchmark, numbers meaningless",
        (Run("generator", "cpu-32", ("--size", "32", "--channel-multiplier", "1", "--batch", "1",
                                     "--repeats", "1", "--warmup", "1", "--threads", "1")),
         Run("encoder", "cpu", ("--device", "cpu", "--batch", "1", "--repeats", "1", "--warmup", "1",
                                "--threads", "1")),
         Run("inversion", "cpu-32", ("--device", "cpu", "--size", "32", "--batch-sizes", "1",
                                     "--repeats", "1", "--warmup", "0", "--threads", "1")),
         Run("train", "cpu-32", ("--device", "cpu", "--batch", "1", "--steps", "1", "--warmup", "1",
                                 "--size", "32", "--channel-max", "32", "--input-size", "64"))),
        timeout_s=300),
}


class InputError(ValueError):
    """A command-line mistake: one line on stderr, exit code 2."""


# ----------------------------------------------------------------------------------------------
# Figures


# Key fragments of numbers where larger is better; every other number counts as a cost.
HIGHER_IS_BETTER = ("per_s", "speedup", "throughput", "ssim", "similarity")
# Fields that say which setting a list item measured (they name its figures), in naming order.
IDENTITY_KEYS = ("device", "name", "op", "impl", "size", "batch", "mode", "precision", "dtype", "baseline", "steps")
# Top-level sections that describe the run rather than measure it.
SKIPPED_KEYS = ("config", "machine", "args", "settings", "figures")


def _unit(key: str) -> str:
    if "per_s" in key:
        return "1/s"
    if key.endswith("_s") or "_s_" in key or key.startswith("seconds"):
        return "s"
    if key.endswith("_ms"):
        return "ms"
    if key.endswith("_mb"):
        return "MiB"
    return "x" if "speedup" in key else ""


def _identity(item: dict) -> str:
    """``batch=4,mode=default``: the item's :data:`IDENTITY_KEYS`, else all its ints and strings."""
    keys = [k for k in IDENTITY_KEYS if k in item] or [
        k for k, v in item.items() if isinstance(v, (int, str)) and not isinstance(v, bool)]
    return ",".join(f"{k}={item[k]}" for k in keys) or "item"


def _is_measure(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def extract_figures(report: dict, prefix: str) -> list[dict]:
    """Figures of a script's report, each named ``prefix/...``.

    A report's own ``figures`` list (``bench.common.figure``) is used as is (a leading
    ``<benchmark>/`` in its names is not repeated). Otherwise every
    finite float becomes a figure named by its path: dict keys joined by ``/`` (a ``results`` key
    left out), and a list item of dicts named by its identifying fields (:func:`_identity`, e.g.
    ``batch=4,mode=default``), so names stay stable when the list's order changes. Lists of
    plain numbers (raw repeats) and the ``config``/``machine`` sections are skipped. Direction:
    higher is better when the key contains one of :data:`HIGHER_IS_BETTER`.
    """
    if isinstance(report.get("figures"), list) and report["figures"]:
        # Scripts often start their names with the benchmark's own: keep it once.
        benchmark = prefix.split("/")[0] + "/"
        return [{**f, "name": f"{prefix}/{f['name'].removeprefix(benchmark)}"} for f in report["figures"]]
    figures: list[dict] = []

    def walk(node, path: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not path and key in SKIPPED_KEYS:
                    continue
                if _is_measure(value):
                    better = "higher" if any(h in key for h in HIGHER_IS_BETTER) else "lower"
                    figures.append({"name": "/".join([prefix, *path, key]), "value": value,
                                    "unit": _unit(key), "better": better})
                elif isinstance(value, (dict, list)):
                    walk(value, path if key == "results" else [*path, key])
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, dict):
                    walk(item, [*path, _identity(item)])

    walk(report, [])
    return figures


# ----------------------------------------------------------------------------------------------
# Running


def run_one(run: Run, timeout_s: int, quiet: bool = False) -> dict:
    """Run one script in a subprocess: ``{"tag", "status", "command", "seconds", "report",
    "figures", "error"}`` with status ``ok``, ``failed``, ``timeout`` or ``missing``.

    The script's output (stdout and stderr) is echoed to stderr as it comes unless ``quiet``; its
    last line becomes ``error`` when it fails.
    """
    script = BENCH_DIR / f"bench_{run.benchmark}.py"
    entry = {"tag": run.tag, "status": "ok", "command": None, "seconds": None, "report": None,
             "figures": [], "error": None}
    if not script.is_file():
        return {**entry, "status": "missing", "error": f"{os.path.relpath(script, ROOT)} does not exist"}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "report.json"
        command = [sys.executable, str(script), *run.args, OUTPUT_FLAG[run.benchmark], str(out)]
        entry["command"] = [Path(command[0]).name, os.path.relpath(script, ROOT), *command[2:-1], "<json>"]
        start = time.perf_counter()
        returncode, last_line, timed_out = _run_echoing(command, timeout_s, quiet)
        entry["seconds"] = round(time.perf_counter() - start, 2)
        if timed_out:
            return {**entry, "status": "timeout", "error": f"killed after {timeout_s} s (preset limit)"}
        if returncode != 0:
            return {**entry, "status": "failed", "error": f"exit code {returncode}: {last_line or 'no output'}"}
        try:
            report = json.loads(out.read_text())
        except FileNotFoundError:
            return {**entry, "status": "failed", "error": f"wrote no JSON (does it take {OUTPUT_FLAG[run.benchmark]}?)"}
        except (OSError, json.JSONDecodeError) as exc:
            return {**entry, "status": "failed", "error": f"unreadable JSON report ({exc})"}
    return {**entry, "report": report, "figures": extract_figures(report, f"{run.benchmark}/{run.tag}")}


def _run_echoing(command: list[str], timeout_s: int, quiet: bool) -> tuple[int, str, bool]:
    """(exit code, last non-empty output line, timed out) of ``command`` run from the repository root."""
    killed = threading.Event()
    last_line = ""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
        def kill() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            for line in process.stdout:
                if not quiet:
                    sys.stderr.write(line)
                last_line = line.strip() or last_line
            returncode = process.wait()
        finally:
            timer.cancel()
    return returncode, last_line, killed.is_set()


def git_commit() -> Optional[str]:
    """The checkout's commit (with ``+dirty`` for local changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def run_preset(name: str, only: Sequence[str], quiet: bool = False,
               save: Optional[Callable[[dict], None]] = None) -> dict:
    """Every selected run of preset ``name``: the whole results document (module docstring).

    ``save`` gets the document so far after each run, so an interrupted run keeps what finished.
    """
    preset = PRESETS[name]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = describe_machine()
    benchmarks: dict[str, dict] = {}

    def document() -> dict:
        figures = {f["name"]: {k: f[k] for k in ("value", "unit", "better")}
                   for entry in benchmarks.values() for result in entry["runs"] for f in result["figures"]}
        return {"format": FORMAT, "version": FORMAT_VERSION, "preset": name,
                "description": preset.description, "started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "git_commit": git_commit(), "machine": machine, "benchmarks": benchmarks, "figures": figures}

    for run in preset.runs:
        if run.benchmark not in only:
            continue
        print(f"[bench] {run.benchmark} ({run.tag}) ...", file=sys.stderr, flush=True)
        result = run_one(run, preset.timeout_s, quiet)
        line = f"{result['status']}" + (f" in {result['seconds']} s" if result["seconds"] else "")
        print(f"[bench] {run.benchmark} ({run.tag}): {line}"
              + (f": {result['error']}" if result["error"] else ""), file=sys.stderr, flush=True)
        benchmarks.setdefault(run.benchmark, {"runs": []})["runs"].append(result)
        if save is not None:
            save(document())
    return document()


# ----------------------------------------------------------------------------------------------
# Comparing


def compare(old: dict, new: dict, threshold: float = 0.10) -> tuple[list[dict], list[str]]:
    """Per-figure comparison of two results documents -> (rows, notes).

    Row: ``{"name", "old", "new", "ratio", "unit", "verdict"}`` with ``ratio = new / old`` and
    verdict ``regression`` when the figure got worse by more than ``threshold`` (a cost grew
    beyond ``old * (1 + threshold)``, a gain fell below ``old / (1 + threshold)``), ``improved``
    when it got better by as much, else ``same``. Notes: figures present in only one run, and
    machine differences (timings compare only on the same machine).
    """
    old_figures, new_figures = old.get("figures", {}), new.get("figures", {})
    rows = []
    for name, now in new_figures.items():
        before = old_figures.get(name)
        if before is None:
            continue
        if before["value"]:
            ratio = now["value"] / before["value"]
        else:  # a zero before (an exact error, say): unchanged, or infinitely larger
            ratio = 1.0 if now["value"] == 0 else math.inf
        worse = ratio if now.get("better", "lower") == "lower" else (1 / ratio if ratio else math.inf)
        verdict = ("regression" if worse > 1 + threshold else "improved" if worse < 1 / (1 + threshold)
                   else "same")
        rows.append({"name": name, "old": before["value"], "new": now["value"], "ratio": ratio,
                     "unit": now.get("unit", ""), "verdict": verdict})
    notes = []
    only_old = sorted(set(old_figures) - set(new_figures))
    only_new = sorted(set(new_figures) - set(old_figures))
    if only_old:
        notes.append(f"{len(only_old)} figure(s) only in the previous run, e.g. {only_old[0]}")
    if only_new:
        notes.append(f"{len(only_new)} figure(s) only in this run, e.g. {only_new[0]}")
    for key in ("cpu", "usable_cores", "torch_threads", "torch", "cuda_devices"):
        a, b = old.get("machine", {}).get(key), new.get("machine", {}).get(key)
        if a != b:
            notes.append(f"machine differs: {key} was {a!r}, now {b!r} (timings may not be comparable)")
    return rows, notes


def format_comparison(rows: list[dict], notes: list[str], threshold: float) -> str:
    """A plain-text table of :func:`compare`'s rows, regressions marked ``<<``."""
    width = max([len(r["name"]) for r in rows] + [6])
    lines = [f"{'figure':<{width}}  {'previous':>12}  {'now':>12}  {'now/prev':>8}  verdict",
             "-" * (width + 50)]
    for r in rows:
        mark = "  <<" if r["verdict"] == "regression" else ""
        lines.append(f"{r['name']:<{width}}  {r['old']:>12.5g}  {r['new']:>12.5g}  {r['ratio']:>8.3f}  "
                     f"{r['verdict']}{mark}")
    regressions = sum(r["verdict"] == "regression" for r in rows)
    lines.append(f"{len(rows)} figures compared, {regressions} regression(s) beyond {threshold:.0%}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Entry point


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise InputError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                     epilog="presets: " + "; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()))
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--json", type=Path, help="results file (default bench/results/<preset>.json)")
    parser.add_argument("--compare", type=Path, metavar="PREVIOUS", help="a previous results file to compare with")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--threshold", type=float, default=0.10,
                        help="relative change counted as a regression (default 0.10)")
    parser.add_argument("--quiet", action="store_true", help="hide the scripts' own progress output")
    return parser


def _parse_only(text: Optional[str]) -> tuple[str, ...]:
    if text is None:
        return BENCHMARKS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise InputError(f"--only '{text}': unknown benchmark {unknown[0] if unknown else '(none)'}; "
                         f"choose from {','.join(BENCHMARKS)}")
    return names


def _read_results(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--compare file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--compare file '{path}' is not readable JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"--compare file '{path}' is not a `python -m bench` results file "
                         f"(format {data.get('format') if isinstance(data, dict) else None!r})")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        only = _parse_only(args.only)
        previous = _read_results(args.compare) if args.compare is not None else None
        if args.threshold <= 0:
            raise InputError(f"--threshold must be positive, got {args.threshold}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = args.json or BENCH_DIR / "results" / f"{args.preset}.json"
    results = run_preset(args.preset, only, args.quiet, save=lambda document: write_json(path, document))
    write_json(path, results)
    statuses = [r["status"] for entry in results["benchmarks"].values() for r in entry["runs"]]
    print(f"{len(results['figures'])} figures from {len(statuses)} run(s) on {machine_line(results['machine'])}; "
          f"wrote {path}")
    code = 0 if all(s == "ok" for s in statuses) else 1
    if previous is not None:
        rows, notes = compare(previous, results, args.threshold)
        print(format_comparison(rows, notes, args.threshold))
        if code == 0 and any(r["verdict"] == "regression" for r in rows):
            code = 3
    return code

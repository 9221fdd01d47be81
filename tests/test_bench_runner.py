"""The benchmark runner (python -m bench): one JSON with the machine and every figure, and --compare."""
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.run import compare, extract_figures, format_comparison, main

MACHINE_KEYS = {"cpu", "cpu_count", "usable_cores", "torch", "torch_threads", "cuda_devices", "platform"}
ROOT = Path(__file__).resolve().parent.parent


def _check_schema(results: dict) -> None:
    assert results["format"] == "psp-toolkit/bench" and results["version"] == 1
    assert MACHINE_KEYS <= set(results["machine"])
    assert isinstance(results["machine"]["cpu"], str) and results["machine"]["usable_cores"] >= 1
    for name, figure in results["figures"].items():
        assert set(figure) == {"value", "unit", "better"}
        assert isinstance(figure["value"], float) and figure["better"] in ("lower", "higher")
        assert name.split("/")[0] in results["benchmarks"]
    for benchmark in results["benchmarks"].values():
        for entry in benchmark["runs"]:
            assert {"tag", "status", "command", "seconds", "report", "figures", "error"} <= set(entry)


def test_ci_preset_runs_every_benchmark_into_one_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["--preset", "ci", "--json", str(out), "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    results = json.loads(out.read_text())
    _check_schema(results)
    assert results["preset"] == "ci" and list(results["benchmarks"]) == list(bench_run.BENCHMARKS)
    for name, benchmark in results["benchmarks"].items():
        run = benchmark["runs"][0]
        assert run["status"] == "ok", run["error"]
        assert run["command"][1] == f"bench/bench_{name}.py" and run["seconds"] > 0 and run["report"]
        assert any(figure.startswith(f"{name}/") for figure in results["figures"]), name
    train = results["figures"]
    assert train["train/cpu-32/batch1/32/ours/step_time_s_median"]["unit"] == "s"
    assert train["train/cpu-32/batch1/32/ours/peak_memory_mb"]["better"] == "lower"
    assert train["train/cpu-32/batch1/32/speedup_vs_psp_like"]["better"] == "higher"
    modes = [r["mode"] for r in results["benchmarks"]["train"]["runs"][0]["report"]["results"]]
    assert modes == ["ours", "psp_like"]
    times = [name for name, f in results["figures"].items() if f["unit"] == "s" and f["better"] == "lower"]
    assert times
    # the same run, 30 % slower on one figure, is a regression on exactly that one
    slower = json.loads(out.read_text())
    slower["figures"][times[0]]["value"] *= 1.3
    rows, _ = compare(results, slower)
    assert [r["name"] for r in rows if r["verdict"] != "same"] == [times[0]]


def test_compare_prints_ratios_and_exits_3_on_a_regression(tmp_path, monkeypatch, capsys):
    _fake_bench_dir(tmp_path, monkeypatch, """
        import json, sys
        path = sys.argv[sys.argv.index("--json") + 1]
        json.dump({"results": [{"batch": 1, "median_s": 2.0}, {"batch": 4, "median_s": 1.0}]}, open(path, "w"))
    """)
    previous = tmp_path / "previous.json"
    previous.write_text(json.dumps({
        "format": "psp-toolkit/bench", "version": 1, "machine": {"cpu": "another CPU"},
        "figures": {"generator/t/batch=1/median_s": {"value": 1.0, "unit": "s", "better": "lower"},
                    "generator/t/batch=4/median_s": {"value": 1.0, "unit": "s", "better": "lower"},
                    "generator/gone/median_s": {"value": 1.0, "unit": "s", "better": "lower"}}}))
    code = main(["--preset", "fake", "--only", "generator", "--json", str(tmp_path / "r.json"),
                 "--compare", str(previous), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 3
    lines = printed.splitlines()
    assert next(x for x in lines if x.startswith("generator/t/batch=1/median_s")).split()[1:] == [
        "1", "2", "2.000", "regression", "<<"]
    assert next(x for x in lines if x.startswith("generator/t/batch=4/median_s")).split()[1:] == [
        "1", "1", "1.000", "same"]
    assert "2 figures compared, 1 regression(s) beyond 10%" in printed
    assert "1 figure(s) only in the previous run, e.g. generator/gone/median_s" in printed
    assert "machine differs: cpu was 'another CPU'" in printed


def _fake_bench_dir(tmp_path: Path, monkeypatch, generator_source: str) -> Path:
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "bench_generator.py").write_text(textwrap.dedent(generator_source))
    monkeypatch.setattr(bench_run, "BENCH_DIR", folder)
    monkeypatch.setitem(bench_run.PRESETS, "fake", bench_run.Preset(
        "test", (bench_run.Run("generator", "t", ("--size", "8")), bench_run.Run("train", "t", ())), timeout_s=60))
    return folder


def test_failed_and_missing_scripts_are_recorded_and_the_rest_runs(tmp_path, monkeypatch, capsys):
    _fake_bench_dir(tmp_path, monkeypatch, """
        import sys
        print("boom: no such size", file=sys.stderr)
        sys.exit(4)
    """)
    out = tmp_path / "r.json"
    assert main(["--preset", "fake", "--json", str(out), "--quiet"]) == 1
    results = json.loads(out.read_text())
    generator = results["benchmarks"]["generator"]["runs"][0]
    assert generator["status"] == "failed" and generator["error"] == "exit code 4: boom: no such size"
    train = results["benchmarks"]["train"]["runs"][0]
    assert train["status"] == "missing" and "bench_train.py does not exist" in train["error"]
    assert results["figures"] == {}


def test_a_script_past_the_preset_s_time_limit_is_killed(tmp_path, monkeypatch):
    _fake_bench_dir(tmp_path, monkeypatch, """
        import time
        print("working", flush=True)
        time.sleep(60)
    """)
    result = bench_run.run_one(bench_run.Run("generator", "t", ()), timeout_s=1, quiet=True)
    assert result["status"] == "timeout" and result["seconds"] < 30
    assert result["error"] == "killed after 1 s (preset limit)"


def test_a_script_s_own_figures_are_used_as_given(tmp_path, monkeypatch):
    _fake_bench_dir(tmp_path, monkeypatch, """
        import json, sys
        path = sys.argv[sys.argv.index("--json") + 1]
        figures = [{"name": "generator/fwd/b1", "value": 2.0, "unit": "ms", "better": "lower"}]
        json.dump({"figures": figures, "results": [{"batch": 1, "median_s": 9.0}]}, open(path, "w"))
    """)
    out = tmp_path / "r.json"
    assert main(["--preset", "fake", "--only", "generator", "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["figures"] == {"generator/t/fwd/b1": {"value": 2.0, "unit": "ms",
                                                                             "better": "lower"}}


def test_extract_figures_names_items_by_their_setting():
    report = {
        "config": {"size": 256, "seconds": 1.5},   # settings, not measurements
        "machine": {"loadavg": 3.0},
        "size": 256,
        "results": [{"batch": 4, "precision": "bf16", "memory": "peak_rss", "seconds_per_batch": 0.5,
                     "images_per_s": 8.0, "peak_mem_mb": 100.0, "wall_s": [0.4, 0.6], "meets_target": True},
                    {"batch": 1, "precision": "bf16", "error": "out of memory"}],
        "before": {"l2": 0.2, "ssim": 0.5},
        "curve": {"10": 0.1},
        "refine_seconds_per_image": float("nan"),
    }
    figures = {f["name"]: (f["value"], f["unit"], f["better"]) for f in extract_figures(report, "inv/cpu")}
    assert figures == {
        "inv/cpu/batch=4,precision=bf16/seconds_per_batch": (0.5, "s", "lower"),
        "inv/cpu/batch=4,precision=bf16/images_per_s": (8.0, "1/s", "higher"),
        "inv/cpu/batch=4,precision=bf16/peak_mem_mb": (100.0, "MiB", "lower"),
        "inv/cpu/before/l2": (0.2, "", "lower"),
        "inv/cpu/before/ssim": (0.5, "", "higher"),
        "inv/cpu/curve/10": (0.1, "", "lower"),
    }


def _results(figures: dict, cpu="x") -> dict:
    return {"format": "psp-toolkit/bench", "machine": {"cpu": cpu},
            "figures": {k: {"value": v, "unit": "s", "better": b} for k, (v, b) in figures.items()}}


def test_compare_verdicts_follow_each_figure_s_direction():
    old = _results({"t1": (1.0, "lower"), "t2": (1.0, "lower"), "t3": (1.0, "lower"),
                    "q1": (10.0, "higher"), "q2": (10.0, "higher"), "old_only": (1.0, "lower"),
                    "err0": (0.0, "lower"), "err1": (0.0, "lower")})
    new = _results({"t1": (1.05, "lower"), "t2": (1.2, "lower"), "t3": (0.5, "lower"),
                    "q1": (8.0, "higher"), "q2": (20.0, "higher"), "new_only": (1.0, "lower"),
                    "err0": (0.0, "lower"), "err1": (1e-5, "lower")})
    rows, notes = compare(old, new, threshold=0.10)
    verdicts = {r["name"]: (r["verdict"], round(r["ratio"], 3)) for r in rows}
    assert verdicts == {"t1": ("same", 1.05), "t2": ("regression", 1.2), "t3": ("improved", 0.5),
                        "q1": ("regression", 0.8), "q2": ("improved", 2.0),
                        "err0": ("same", 1.0), "err1": ("regression", math.inf)}
    assert notes == ["1 figure(s) only in the previous run, e.g. old_only",
                     "1 figure(s) only in this run, e.g. new_only"]
    text = format_comparison(rows, notes, 0.10)
    assert "7 figures compared, 3 regression(s) beyond 10%" in text
    assert sum(line.endswith("<<") for line in text.splitlines()) == 3


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "invalid choice: 'nope'"),
    (["--preset", "ci", "--only", "generator,warp"], "unknown benchmark warp"),
    (["--preset", "ci", "--compare", "/no/such.json"], "does not exist"),
    (["--preset", "ci", "--threshold", "0"], "--threshold must be positive"),
    ([], "the following arguments are required: --preset"),
])
def test_usage_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_compare_refuses_a_file_that_is_not_results(tmp_path, capsys):
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps({"format": "psp-toolkit/evaluate"}))
    assert main(["--preset", "ci", "--compare", str(other)]) == 2
    assert "not a `python -m bench` results file" in capsys.readouterr().err


def test_python_dash_m_bench_is_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "bench", "--preset", "ci", "--only", "nothing"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown benchmark nothing" in done.stderr

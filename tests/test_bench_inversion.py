"""bench/bench_inversion.py's modes, including ``original`` through ``--reference DIR``."""
import json
import textwrap

from bench import bench_inversion


def test_reference_mode_times_the_given_generator_against_ours(tmp_path, capsys):
    # A stand-in for a rosinality checkout: model.py whose Generator has our state-dict layout.
    reference = tmp_path / "stylegan2-pytorch"
    reference.mkdir()
    (reference / "model.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from stylegan2 import Generator as _Ours

        class Generator(_Ours):
            def forward(self, *args, **kwargs):
                with open(Path(__file__).with_name("calls.txt"), "a") as calls:
                    calls.write("forward\\n")
                return super().forward(*args, **kwargs)
    """))
    out = tmp_path / "inversion.json"
    assert bench_inversion.main(["--device", "cpu", "--size", "32", "--batch-sizes", "1", "--repeats", "1",
                                 "--warmup", "0", "--threads", "1", "--reference", str(reference),
                                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    modes = {(r["mode"], r["precision"]) for r in report["results"]}
    assert modes == {("ours", "fp32"), ("psp_like", "fp32"), ("original", "fp32")}
    assert all(r["median_s"] > 0 and r["peak_mem_mb"] > 0 for r in report["results"])
    (gain,) = report["speedups"]
    original = next(r for r in report["results"] if r["mode"] == "original")
    ours = next(r for r in report["results"] if r["mode"] == "ours")
    assert gain["vs_original"] == round(original["median_s"] / ours["median_s"], 3)
    assert "inversion/cpu/batch1/fp32/speedup_vs_original" in {f["name"] for f in report["figures"]}
    # the original mode, and only it, ran the reference generator: once (no warm-up, one repeat)
    assert (reference / "calls.txt").read_text() == "forward\n"
    capsys.readouterr()

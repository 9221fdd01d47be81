"""The lazy CUDA build and implementation choice, without compiling anything (the compiler is
replaced by fakes). A real build: STYLEGAN2_OPS_TEST_BUILD=1 (minutes; `make build-ops` runs it
too)."""
import json
import os
import shutil
import subprocess
import sys
import types
import warnings

import pytest
import torch

import stylegan2.ops as ops
from stylegan2.ops import __main__ as cli
from stylegan2.ops import build, impl


class FakeCudaTensor:
    """Enough of a CUDA tensor for the dispatcher (this machine may have no GPU)."""

    is_cuda = True
    device = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_STATE", build._State())
    monkeypatch.setattr(impl, "_warned_fallback", False)
    monkeypatch.setattr(impl, "_default_impl", "auto")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv(build.ARCH_ENV, raising=False)
    monkeypatch.setattr(build, "visible_capabilities", lambda: [])


@pytest.fixture
def failing_compile(monkeypatch):
    calls = []

    def compile_(name, sources, out, verbose):
        calls.append(name)
        raise RuntimeError("Error building extension 'x'\nnvcc fatal: bad things")

    monkeypatch.setattr(build, "_compile", compile_)
    return calls


@pytest.fixture
def fake_compile(monkeypatch):
    """A compile that 'succeeds', recording TORCH_CUDA_ARCH_LIST as the compiler would see it."""
    seen = []

    def compile_(name, sources, out, verbose):
        seen.append(os.environ.get(build.ARCH_ENV))
        library = out / f"{name}.so"
        library.write_bytes(b"")
        return types.SimpleNamespace(__file__=str(library), name=name)

    monkeypatch.setattr(build, "_compile", compile_)
    return seen


def test_source_hash_changes_with_any_source(tmp_path):
    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    files = build.source_files(csrc)
    assert {p.name for p in files} >= {"ops.cpp", "bias_act.cu", "upfirdn2d.cu", "ops.h"}
    before = build.source_hash(files)
    assert before == build.source_hash(build.source_files(csrc)) == build.source_hash()
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        assert build.source_hash(files) != before, path.name
        path.write_bytes(original)
    (csrc / "extra.cuh").write_text("// new header\n")
    assert build.source_hash(build.source_files(csrc)) != before


def test_build_dir_follows_env(monkeypatch, tmp_path):
    first = build.build_dir()
    assert first.parent == tmp_path / "ext" and first.name.startswith("stylegan2_ops_")
    monkeypatch.setenv(build.ARCH_ENV, "8.6")
    assert build.build_dir() != first  # a different arch list never reuses a stale library


def test_nothing_built_by_import_or_cpu_ops(failing_compile):
    ops.bias_act(torch.randn(2, 3), torch.randn(3), act="lrelu")
    ops.upsample2d(torch.randn(1, 1, 4, 4), ops.setup_filter([1, 3, 3, 1]))
    assert failing_compile == [] and build.status()["state"] == "not attempted"
    assert ops.active_impl()["cuda"] == "cuda (not built yet)"


def test_failed_build_attempted_once(failing_compile):
    for _ in range(3):
        with pytest.raises(RuntimeError, match="bad things") as err:
            build.load_plugin()
    assert len(failing_compile) == 1
    assert build.status()["state"] == "failed" and "nvcc fatal" in build.status()["error"]
    assert "building the CUDA extension in" in str(err.value)


def test_auto_warns_once_and_falls_back(failing_compile):
    with pytest.warns(RuntimeWarning, match="using the reference ops") as record:
        assert impl.use_cuda("bias_act", "auto", FakeCudaTensor()) is False
        assert impl.use_cuda("upfirdn2d", None, FakeCudaTensor()) is False
    assert len(record) == 1 and len(failing_compile) == 1
    assert "\n" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert impl.use_cuda("bias_act", "auto", FakeCudaTensor()) is False
    assert ops.active_impl()["cuda"] == "ref"


def test_cuda_impl_raises_clearly(failing_compile):
    with pytest.raises(RuntimeError, match="(?s)building the CUDA extension .* bad things"):
        impl.use_cuda("upfirdn2d", "cuda", FakeCudaTensor())
    with pytest.raises(RuntimeError, match="impl='cuda' needs CUDA tensors, got x on cpu"):
        impl.use_cuda("upfirdn2d", "cuda", torch.zeros(1))


def test_default_impl(failing_compile):
    assert ops.get_default_impl() == "auto"
    ops.set_default_impl("ref")
    assert impl.use_cuda("bias_act", None, FakeCudaTensor()) is False and failing_compile == []
    assert ops.active_impl() == {"default": "ref", "cpu": "ref", "cuda": "ref", "build": build.status()}
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.set_default_impl("fast")


def test_arch_list_env_left_untouched(fake_compile, monkeypatch):
    monkeypatch.setenv(build.ARCH_ENV, "7.5;8.0")
    build.load_plugin()
    assert fake_compile == ["7.5;8.0"] and os.environ[build.ARCH_ENV] == "7.5;8.0"
    info = json.loads((build.build_dir() / build.INFO_FILE).read_text())
    assert info["arch_list"] == "7.5;8.0"


def test_default_arch_list_only_while_compiling(fake_compile):
    library = build.build_ahead_of_time(verbose=False)  # no GPU visible, variable unset
    assert fake_compile == [build.DEFAULT_ARCH_LIST] and build.ARCH_ENV not in os.environ
    assert library.parent == build.build_dir() and build.status()["state"] == "loaded"


def test_visible_gpus_set_arch_list_and_covered_build_is_imported(fake_compile, monkeypatch):
    monkeypatch.setattr(build, "visible_capabilities", lambda: [(8, 6)])
    build.build_ahead_of_time(verbose=False)
    assert fake_compile == ["8.6"]
    imported = []
    monkeypatch.setattr(build, "_import_library", lambda name, path: imported.append(path) or "module")
    monkeypatch.setattr(build, "_STATE", build._State())  # a new process
    assert build.load_plugin() == "module" and len(fake_compile) == 1 and len(imported) == 1
    monkeypatch.setattr(build, "_STATE", build._State())
    monkeypatch.setattr(build, "visible_capabilities", lambda: [(7, 5)])  # not covered: rebuild
    build.load_plugin()
    assert fake_compile == ["8.6", "7.5"]


@pytest.mark.parametrize("arch_list,caps,covered", [
    ("8.0;8.6;8.9;9.0+PTX", [(8, 0), (8, 6), (9, 0)], True),
    ("8.0", [(8, 6)], True),             # sm_80 cubins run on 8.x, x >= 0
    ("8.6", [(8, 0)], False),
    ("8.0 8.6", [(9, 0)], False),
    ("9.0+PTX", [(12, 0)], True),        # PTX is JIT-compiled on newer GPUs
    ("9.0a", [(9, 0)], True),
    ("9.0a", [(10, 0)], False),
    ("Ampere", [(8, 0)], False),         # names are not parsed: costs a rebuild at worst
    ("8.0;8.6", [(8, 0), (7, 5)], False),
])
def test_arch_list_covers(arch_list, caps, covered):
    assert build.arch_list_covers(arch_list, caps) is covered


def test_cli_build_failure_is_one_line(failing_compile, capsys):
    assert cli.main(["build", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("stylegan2.ops build failed: RuntimeError:")


def test_cli_build_and_info(fake_compile, capsys):
    assert cli.main(["build", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(build.build_dir()) in out and build.DEFAULT_ARCH_LIST in out
    assert cli.main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["build"]["state"] == "loaded"


@pytest.mark.skipif(os.environ.get("STYLEGAN2_OPS_TEST_BUILD") != "1",
                    reason="compiles the CUDA kernels (minutes); set STYLEGAN2_OPS_TEST_BUILD=1")
def test_real_build(tmp_path):
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "stylegan2.ops", "build", "--quiet"], env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.glob("stylegan2_ops_*/stylegan2_ops_*.so"))


# --- regressions: arch coverage, one library per arch list, the lock on the fast path ---------------

def test_arch_list_not_covering_the_gpu_is_refused(fake_compile, monkeypatch):
    """TORCH_CUDA_ARCH_LIST=8.0 on an H100: no compile, auto falls back, cuda says the fix."""
    monkeypatch.setenv(build.ARCH_ENV, "8.0")
    monkeypatch.setattr(build, "visible_capabilities", lambda: [(9, 0)])
    with pytest.warns(RuntimeWarning, match="does not cover the visible GPU architecture"):
        assert impl.use_cuda("bias_act", "auto", FakeCudaTensor()) is False
    with pytest.raises(RuntimeError, match=r"TORCH_CUDA_ARCH_LIST='8.0' does not cover .* 9\.0.* add them"):
        impl.use_cuda("bias_act", "cuda", FakeCudaTensor())
    assert fake_compile == []


def test_each_arch_list_gets_its_own_library(fake_compile, monkeypatch):
    """Nodes with different GPUs sharing one cache (variable unset) do not rebuild each other's."""
    imported = []
    monkeypatch.setattr(build, "_import_library", lambda name, path: imported.append(path) or "module")

    def process_with(caps):
        monkeypatch.setattr(build, "_STATE", build._State())
        monkeypatch.setattr(build, "visible_capabilities", lambda: caps)
        build.load_plugin()
        return build.status()

    a100, h100 = process_with([(8, 0)]), process_with([(9, 0)])
    assert fake_compile == ["8.0", "9.0"] and a100["build_dir"] != h100["build_dir"]
    assert (a100["source"], h100["source"]) == ("compiled", "compiled")
    assert process_with([(8, 0)])["source"] == process_with([(9, 0)])["source"] == "cached"
    assert len(fake_compile) == 2 and len(imported) == 2
    for status, arch in [(a100, "8.0"), (h100, "9.0")]:
        info = json.loads((build.Path(status["build_dir"]) / build.INFO_FILE).read_text())
        assert info["arch_list"] == arch


def test_ahead_of_time_default_build_serves_covered_gpus(fake_compile, monkeypatch):
    build.build_ahead_of_time(verbose=False)  # no GPU, variable unset: DEFAULT_ARCH_LIST
    monkeypatch.setattr(build, "_STATE", build._State())
    monkeypatch.setattr(build, "visible_capabilities", lambda: [(8, 6)])
    monkeypatch.setattr(build, "_import_library", lambda name, path: "module")
    assert build.load_plugin() == "module" and build.status()["source"] == "cached"
    assert fake_compile == [build.DEFAULT_ARCH_LIST]


def test_fast_import_waits_for_the_build_lock(fake_compile, monkeypatch):
    """While another process holds the build's lock file, the cached library is not imported."""
    import threading
    import time

    from filelock import FileLock

    monkeypatch.setattr(build, "visible_capabilities", lambda: [(8, 6)])
    build.build_ahead_of_time(verbose=False)
    monkeypatch.setattr(build, "_STATE", build._State())
    released = threading.Event()
    events = []
    monkeypatch.setattr(build, "_import_library",
                        lambda name, path: events.append(released.is_set()) or "module")
    holding = threading.Event()

    def other_builder():
        with FileLock(str(build.build_dir() / "lock")):
            holding.set()
            time.sleep(0.5)
            released.set()

    thread = threading.Thread(target=other_builder)
    thread.start()
    holding.wait(5)
    assert build.load_plugin() == "module"
    thread.join()
    assert events == [True] and len(fake_compile) == 1

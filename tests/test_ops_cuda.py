"""What only a GPU can show (all skipped without one): streams, a second device, tensors past
2^31 elements, CUDA gradcheck with a clamp, and the real build shared by several processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stylegan2.ops import bias_act, filter2d, setup_filter, upfirdn2d, upsample2d

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parent.parent


def _ops(x, b, f):
    return (bias_act(x, b, act="lrelu", clamp=0.9, impl="cuda"),
            upsample2d(x, f, impl="cuda"), filter2d(x, f, impl="cuda"))


def test_kernels_run_on_the_current_stream():
    """The input is finished on a side stream after a long sleep; a kernel launched on another
    stream would read it before the final add."""
    f = setup_filter([1, 3, 3, 1], device="cuda")
    b = torch.zeros(4, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = torch.zeros(2, 4, 64, 64, device="cuda")
        torch.cuda._sleep(50_000_000)
        x.add_(0.5)
        got = _ops(x, b, f)
    side.synchronize()
    expected = tuple(op(torch.full((2, 4, 64, 64), 0.5, device="cuda"), b, f) for op in
                     (lambda x, b, f: bias_act(x, b, act="lrelu", clamp=0.9, impl="ref"),
                      lambda x, b, f: upsample2d(x, f, impl="ref"),
                      lambda x, b, f: filter2d(x, f, impl="ref")))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device_while_the_first_is_current():
    torch.cuda.set_device(0)
    x = torch.randn(2, 4, 16, 16, device="cuda:1")
    b = torch.randn(4, device="cuda:1")
    f = setup_filter([1, 3, 3, 1], device="cuda:1")
    for got, expected in zip(_ops(x, b, f), (bias_act(x, b, act="lrelu", clamp=0.9, impl="ref"),
                                             upsample2d(x, f, impl="ref"), filter2d(x, f, impl="ref"))):
        assert got.device == torch.device("cuda:1")
        torch.testing.assert_close(got, expected)


def _free_gb():
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


@pytest.mark.skipif(not torch.cuda.is_available() or _free_gb() < 20, reason="needs 20 GB free")
def test_bias_act_past_2_31_elements():
    """2^31 + 2^24 + 3 fp16 elements (4.3 GB): the 64-bit index path, checked at both ends."""
    n = 2**31 + 2**24 + 3
    x = torch.empty(n, dtype=torch.float16, device="cuda")
    x[:4096].normal_()
    x[-4096:].normal_()
    y = bias_act(x, None, act="lrelu", gain=2.0, impl="cuda")
    for part in (slice(0, 4096), slice(n - 4096, n)):
        torch.testing.assert_close(y[part], bias_act(x[part], None, act="lrelu", gain=2.0, impl="ref"))
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.skipif(not torch.cuda.is_available() or _free_gb() < 20, reason="needs 20 GB free")
def test_upfirdn2d_past_2_31_output_elements():
    x = torch.zeros(1, 1, 32770, 65540, dtype=torch.float16, device="cuda")  # 2.15e9 elements
    x[..., -8:, -8:].normal_()
    x[..., :8, :8].normal_()
    f = torch.tensor([[0.25, 0.5], [0.75, 1.0]], device="cuda")
    y = upfirdn2d(x, f, pad=(0, 1, 0, 1), impl="cuda")
    assert y.numel() > 2**31
    for rows, cols in ((slice(-9, None), slice(-9, None)), (slice(0, 9), slice(0, 9))):
        corner = x[..., rows, cols].float()
        expected = upfirdn2d(corner, f, pad=(0, 1, 0, 1), impl="ref")
        torch.testing.assert_close(y[..., rows, cols].float()[..., :-1, :-1], expected[..., :-1, :-1],
                                   rtol=2e-3, atol=2e-3)
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.parametrize("act", ["linear", "lrelu", "tanh", "swish"])
def test_gradcheck_with_clamp(act):
    x = torch.randn(2, 3, 4, device="cuda", dtype=torch.float64) * 2
    y = bias_act(x, None, act=act, gain=1.3, impl="ref")
    x[(y.abs() - 1.1).abs() < 0.05] += 0.2  # away from the clamp's kinks
    x = (x + 0.1 * x.sign()).requires_grad_(True)
    b = torch.zeros(3, device="cuda", dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=1.1, impl="cuda")
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


_USE_OPS = ("import json, torch; from stylegan2.ops import bias_act, build; "
            "x = torch.randn(4, 3, device='cuda'); "
            "y = bias_act(x, torch.zeros(3, device='cuda'), act='lrelu', impl='cuda'); "
            "torch.testing.assert_close(y, bias_act(x, torch.zeros(3, device='cuda'), act='lrelu', impl='ref')); "
            "print(json.dumps(build.status()))")


def _run(env, count):
    procs = [subprocess.Popen([sys.executable, "-c", _USE_OPS], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(count)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_concurrent_build_then_cached_reuse(tmp_path):
    """Three processes build into one fresh TORCH_EXTENSIONS_DIR at once; a fourth imports the
    library without compiling."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TORCH_CUDA_ARCH_LIST", None)
    first = _run(env, 3)
    assert {r["state"] for r in first} == {"loaded"}
    assert len({r["build_dir"] for r in first}) == 1
    (again,) = _run(env, 1)
    assert again["state"] == "loaded" and again["source"] == "cached"
    assert again["build_dir"] == first[0]["build_dir"]

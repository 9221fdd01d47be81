"""The generator on CUDA (skipped without a device): cuda ops against the CPU reference path."""
import pytest
import torch

from stylegan2 import Generator, optimize_generator_for_inference

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cpu = Generator(64, 32, 2, channel_max=32).eval()
    with torch.no_grad():
        for name, p in cpu.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
    gpu = Generator(64, 32, 2, channel_max=32, impl="cuda").cuda().eval()
    gpu.load_state_dict(cpu.state_dict(), strict=True)
    return cpu, gpu


@pytest.mark.parametrize("batch", [1, 3])
def test_cuda_matches_cpu_float32(pair, batch):
    cpu, gpu = pair
    w_plus = torch.randn(batch, cpu.n_latent, 32)
    with torch.inference_mode():
        expect, _ = cpu([w_plus], input_is_latent=True, randomize_noise=False)
        got, _ = gpu([w_plus.cuda()], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(got.cpu(), expect, rtol=1e-4, atol=1e-4 * expect.abs().max().item())


def test_cuda_bf16_autocast_and_gradient(pair):
    cpu, gpu = pair
    w_plus = torch.randn(2, cpu.n_latent, 32, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        image, _ = gpu([w_plus], input_is_latent=True, randomize_noise=False)
    assert torch.isfinite(image).all()
    (grad,) = torch.autograd.grad(image.float().square().sum(), w_plus)
    assert torch.isfinite(grad).all() and (grad.abs().sum(dim=(0, 2)) > 0).all()
    with torch.inference_mode():
        full, _ = gpu([w_plus.detach()], input_is_latent=True, randomize_noise=False)
    assert (image.float() - full).abs().max() < 0.1 * full.abs().max()


def test_inference_copy_runs_the_specification_on_cuda(pair):
    """The CPU rewrites stand aside for CUDA tensors: bitwise the specification's image."""
    _, gpu = pair
    fast = optimize_generator_for_inference(gpu)
    w_plus = torch.randn(2, gpu.n_latent, 32, device="cuda")
    with torch.inference_mode():
        expect, _ = gpu([w_plus], input_is_latent=True, randomize_noise=False)
        got, _ = fast([w_plus], input_is_latent=True, randomize_noise=False)
    assert torch.equal(got, expect)

"""NVIDIA StyleGAN2-ADA pickles -> `stylegan2.Generator`: the contract against a float64 oracle."""
import pytest
import torch

import nvidia_fakes as nv
from stylegan2 import load_generator, sha256_file
from stylegan2.convert import main as convert_main
from stylegan2.nvidia import NvidiaImportError

# (img_resolution, channel_base, channel_max, mapping layers, w_dim, conv_clamp): 256/512/1024-style
# widths (channel_base / res capped by channel_max, scaled down to stay fast on a CPU).
CONFIGS = {
    "256": (256, 1024, 16, 8, 16, None),
    "512": (512, 2048, 8, 2, 8, 256),
    "1024": (1024, 4096, 4, 4, 8, None),
    "clamp": (32, 512, 16, 3, 16, 0.7),
}


def _write(tmp_path, name="net.pkl", snapshot=True, **kwargs):
    G = nv.Generator(**kwargs)
    path = tmp_path / name
    nv.dump({"G": G, "D": None, "G_ema": G, "training_set_kwargs": {"resolution": 32}} if snapshot
            else G, path)
    return G, path


def _close(ours, ref):
    err = (ours.double() - ref).abs().max().item()
    assert err <= 1e-3 * ref.std().item(), f"max error {err} vs std {ref.std().item()}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_contract_matches_nvidia_oracle(tmp_path, name):
    res, cbase, cmax, layers, w_dim, clamp = CONFIGS[name]
    G_nv, path = _write(tmp_path, img_resolution=res, channel_base=cbase, channel_max=cmax,
                        mapping_layers=layers, w_dim=w_dim, conv_clamp=clamp, seed=len(name))
    G, w_avg = load_generator(path)
    assert G.n_latent == G_nv.num_ws and not G.training
    torch.testing.assert_close(w_avg, G_nv.mapping.w_avg)
    z = torch.randn(2, w_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _close(G.get_latent(z), nv.o_mapping(G_nv, z)[:, 0])
        ws = torch.randn(2, G_nv.num_ws, w_dim, generator=torch.Generator().manual_seed(2))
        _close(G([ws], input_is_latent=True, randomize_noise=False)[0], nv.o_synthesis(G_nv, ws))
        psi = 0.6
        ref = nv.o_synthesis(G_nv, nv.o_mapping(G_nv, z, psi))
        _close(G([z], truncation=psi, truncation_latent=w_avg, randomize_noise=False)[0], ref)


@pytest.mark.parametrize("grad", [False, True])
def test_clamp_is_active_with_and_without_grad(tmp_path, grad):
    G_nv, path = _write(tmp_path, conv_clamp=0.7, seed=3)
    G, _ = load_generator(path)
    ws = 2 * torch.randn(2, G_nv.num_ws, 16, generator=torch.Generator().manual_seed(4))
    with torch.set_grad_enabled(grad):
        out = G([ws], input_is_latent=True, randomize_noise=False)[0]
    ref = nv.o_synthesis(G_nv, ws)
    _close(out.detach(), ref)
    for module in G_nv.modules():  # the oracle without the clamp: the test must reach it
        if hasattr(module, "conv_clamp"):
            module.conv_clamp = None
    unclamped = nv.o_synthesis(G_nv, ws)
    assert (unclamped - ref).abs().max() > 0.1, "the test config never reaches the clamp"


def test_bare_generator_pickle_and_protocol_4(tmp_path):
    G_nv = nv.Generator(seed=5)
    path = tmp_path / "bare.pkl"
    nv.dump(G_nv, path, protocol=4)
    G, _ = load_generator(path)
    ws = torch.randn(1, G_nv.num_ws, 16)
    with torch.no_grad():
        _close(G([ws], input_is_latent=True, randomize_noise=False)[0], nv.o_synthesis(G_nv, ws))


def test_convert_writes_a_safe_rosinality_file(tmp_path, capsys):
    G_nv, path = _write(tmp_path, conv_clamp=0.7, seed=6)
    out = tmp_path / "out.pt"
    assert convert_main([str(path), str(out)]) == 0
    data = torch.load(out, weights_only=True)
    assert data["nvidia"]["source_sha256"] == sha256_file(path)
    assert data["nvidia"]["config"]["conv_clamp"] == 0.7 and data["conv_clamp"] == 0.7
    G, latent_avg = load_generator(out)
    torch.testing.assert_close(latent_avg, G_nv.mapping.w_avg)
    ws = 2 * torch.randn(1, G_nv.num_ws, 16)
    with torch.no_grad():
        _close(G([ws], input_is_latent=True, randomize_noise=False)[0], nv.o_synthesis(G_nv, ws))


@pytest.mark.parametrize("kwargs, words", [
    (dict(c_dim=10), "c_dim=10"),
    (dict(architecture="resnet"), "'resnet'"),
])
def test_unsupported_variants_are_named(tmp_path, kwargs, words):
    _, path = _write(tmp_path, **kwargs)
    with pytest.raises(NvidiaImportError) as err:
        load_generator(path)
    message = str(err.value)
    assert words in message and "supported:" in message and "\n" not in message


def test_stylegan3_synthesis_is_refused(tmp_path):
    G_nv = nv.Generator()
    synthesis = nv.Persistent()
    synthesis.input = nv.Persistent()  # StyleGAN3's SynthesisInput, then layers L0_36_512, ...
    G_nv.synthesis = synthesis
    path = tmp_path / "sg3.pkl"
    nv.dump(G_nv, path)
    with pytest.raises(NvidiaImportError, match="StyleGAN3"):
        load_generator(path)

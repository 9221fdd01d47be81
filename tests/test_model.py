"""psp.models.model: PSP built from config, our inference file format, w_avg sources, ArcFace init."""
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from psp.config import EncoderConfig, GeneratorConfig, ModelConfig, WAvgConfig
from psp.models.inference import InferenceModel
from psp.models.model import FORMAT, PSP, build_encoder, estimate_w_avg
from psp.models.arcface import ArcFace
from psp.models.official import to_official
from stylegan2 import Generator

TINY_GEN = GeneratorConfig(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
TINY_ENC = EncoderConfig(layers=[1, 1, 1, 1], widths=[16, 16, 32, 32], input_size=32)




def tiny_config(**changes) -> ModelConfig:
    cfg = ModelConfig(encoder=TINY_ENC, generator=TINY_GEN, w_avg=WAvgConfig(source="estimate", n_samples=64))
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def model() -> PSP:
    return PSP.from_config(tiny_config()).eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32) * 2 - 1


@pytest.fixture
def rosinality_file(tmp_path):
    """A rosinality-format generator file ({"g_ema", "latent_avg"}) matching TINY_GEN."""
    generator = Generator(32, 32, 2, channel_multiplier=1, channel_max=16)
    path = tmp_path / "stylegan2-tiny.pt"
    torch.save({"g_ema": generator.state_dict(), "latent_avg": torch.randn(32)}, path)
    return path


def test_encode_adds_w_avg_and_decode_pools_to_the_input_size(model, x):
    assert model.n_styles == 8 and model.input_size == 32 and model.w_avg.shape == (8, 32)
    with torch.no_grad():
        codes = model.encode(x)
        torch.testing.assert_close(codes, model.encoder(x) + model.w_avg)
        full, _ = model.generator([codes], input_is_latent=True, randomize_noise=False)
        torch.testing.assert_close(model.decode(codes, resize=False), full)
        images, latents = model(x, return_latents=True)
    torch.testing.assert_close(latents, codes)
    assert images.shape == (2, 3, 32, 32)


def test_start_from_latent_avg_false_returns_raw_offsets(x):
    model = PSP.from_config(tiny_config(start_from_latent_avg=False)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), model.encoder(x))


def test_decode_average_pools_a_larger_generator(x):
    model = PSP.from_config(tiny_config(generator=dataclasses.replace(TINY_GEN, size=64))).eval()
    with torch.no_grad():
        codes = model.encode(x)
        full = model.decode(codes, resize=False)
        torch.testing.assert_close(model.decode(codes), F.avg_pool2d(full, 2))


def test_save_and_load_round_trip_gives_identical_outputs(model, x, tmp_path):
    path = tmp_path / "psp.pt"
    model.save(path)
    assert os.listdir(tmp_path) == ["psp.pt"]  # the temporary file was renamed away
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["version"] == 1 and raw["generator_ref"] is None
    assert raw["config"]["encoder"]["widths"] == [16, 16, 32, 32]
    again = PSP.from_checkpoint(path, device="cpu")
    assert not again.training and again.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again(x, return_latents=True), model(x, return_latents=True), rtol=0, atol=0)


def test_generator_reference_is_verified_by_sha256(rosinality_file, x, tmp_path):
    cfg = tiny_config(generator=dataclasses.replace(TINY_GEN, checkpoint=str(rosinality_file)))
    model = PSP.from_config(cfg).eval()
    path = tmp_path / "psp_ref.pt"
    model.save(path, embed_generator=False)
    raw = torch.load(path, weights_only=True)
    assert raw["generator"] is None and raw["generator_ref"]["path"] == str(rosinality_file.resolve())
    again = PSP.from_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    again.save(tmp_path / "resaved.pt", embed_generator=False)  # keeps the reference it was loaded with
    with open(rosinality_file, "ab") as f:
        f.write(b"changed")
    with pytest.raises(ValueError, match="sha256"):
        PSP.from_checkpoint(path)


def test_embed_generator_false_needs_a_generator_file(model, tmp_path):
    with pytest.raises(ValueError, match="model.generator.checkpoint is null"):
        model.save(tmp_path / "psp.pt", embed_generator=False)


def test_w_avg_sources(rosinality_file):
    gen_cfg = dataclasses.replace(TINY_GEN, checkpoint=str(rosinality_file))
    file_avg = torch.load(rosinality_file, weights_only=True)["latent_avg"]
    from_file = PSP.from_config(tiny_config(generator=gen_cfg, w_avg=WAvgConfig(source="checkpoint")))
    torch.testing.assert_close(from_file.w_avg, file_avg.expand(8, 32))
    auto = PSP.from_config(tiny_config(generator=gen_cfg, w_avg=WAvgConfig(source="auto")))
    torch.testing.assert_close(auto.w_avg, from_file.w_avg)
    estimated = PSP.from_config(tiny_config(generator=gen_cfg, w_avg=WAvgConfig(source="estimate", n_samples=100)))
    expected = estimate_w_avg(estimated.generator, 100, seed=0)
    torch.testing.assert_close(estimated.w_avg, expected.expand(8, 32))
    z = torch.randn(100, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(expected, estimated.generator.get_latent(z).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(estimate_w_avg(estimated.generator, 100, seed=0, chunk=7), expected)


def test_w_avg_checkpoint_source_without_latent_avg_is_an_error(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"g_ema": Generator(32, 32, 2, channel_multiplier=1, channel_max=16).state_dict()}, path)
    cfg = tiny_config(generator=dataclasses.replace(TINY_GEN, checkpoint=str(path)),
                      w_avg=WAvgConfig(source="checkpoint"))
    with pytest.raises(ValueError, match="holds no latent_avg"):
        PSP.from_config(cfg)


def test_generator_file_must_match_the_config(rosinality_file):
    cfg = tiny_config(generator=dataclasses.replace(TINY_GEN, style_dim=64, checkpoint=str(rosinality_file)))
    with pytest.raises(ValueError, match="model.generator.style_dim"):
        PSP.from_config(cfg)


def test_w_avg_of_one_row_is_expanded(model):
    again = PSP(model.config, model.encoder, model.generator, torch.arange(32.0))
    assert again.w_avg.shape == (8, 32) and torch.equal(again.w_avg[5], torch.arange(32.0))
    with pytest.raises(ValueError, match=r"shape \[3, 32\]"):
        PSP(model.config, model.encoder, model.generator, torch.zeros(3, 32))


@pytest.mark.parametrize("opts, match", [
    ({"encoder_type": "BackboneEncoderUsingLastLayerIntoW"}, "'BackboneEncoderUsingLastLayerIntoW' is not supported"),
    ({"encoder_type": "GradualStyleEncoder", "learn_in_w": True}, "learn_in_w"),
])
def test_unsupported_psp_variants_are_refused(tmp_path, opts, match):
    path = tmp_path / "psp_other.pt"
    torch.save({"state_dict": {}, "opts": {**opts, "device": "cuda:0"}}, path)
    with pytest.raises(ValueError, match=match):
        PSP.from_checkpoint(path)


def test_foreign_and_future_files_are_refused(model, tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a pSp model file"):
        PSP.from_checkpoint(tmp_path / "foreign.pt")
    model.save(tmp_path / "psp.pt")
    raw = torch.load(tmp_path / "psp.pt", weights_only=True)
    torch.save({**raw, "version": 2}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version 2 is not supported"):
        PSP.from_checkpoint(tmp_path / "future.pt")
    raw["encoder"]["styles.0.linear.bias"] = torch.zeros(5)
    torch.save(raw, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"key 'styles.0.linear.bias' has shape \[5\]"):
        PSP.from_checkpoint(tmp_path / "broken.pt")


@pytest.mark.parametrize("changes", [
    dict(block="basic", depth=34, stem="deep", anti_alias=True, act="relu", attention="eca"),
    dict(block="bottleneck", expansion=2, stem="space_to_depth", act="silu", attention="se", se_reduction=4),
])
def test_build_encoder_follows_the_config(changes, x):
    enc_cfg = dataclasses.replace(TINY_ENC, **changes)
    encoder = build_encoder(enc_cfg, n_styles=8, style_dim=32)
    assert encoder(x).shape == (2, 8, 32)
    assert type(encoder.backbone.stem).__name__ == {"deep": "DeepStem", "space_to_depth": "SpaceToDepthStem"}[enc_cfg.stem]
    assert encoder.backbone.layers == [1, 1, 1, 1]


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory):
    net = ArcFace()
    path = tmp_path_factory.mktemp("arcface") / "model_ir_se50.pth"
    torch.save(to_official(net.state_dict(), net), path)
    return path, net


@pytest.mark.parametrize("input_nc", [3, 1])
def test_encoder_init_copies_the_arcface_body(arcface_file, input_nc):
    path, net = arcface_file
    enc_cfg = dataclasses.replace(TINY_ENC, layers=None, widths=[64, 128, 256, 512], input_nc=input_nc, init=str(path))
    encoder = build_encoder(enc_cfg, n_styles=4, style_dim=32)
    body = encoder.backbone.state_dict()
    source = net.backbone.state_dict()
    assert all(torch.equal(body[k], source[k]) for k in body if not k.startswith("stem."))
    # pSp keeps a random input layer for non-RGB inputs.
    assert torch.equal(body["stem.conv.weight"], source["stem.conv.weight"]) == (input_nc == 3)


def test_restyle_init_puts_the_arcface_rgb_filters_first(arcface_file):
    path, net = arcface_file
    enc_cfg = dataclasses.replace(TINY_ENC, layers=None, widths=[64, 128, 256, 512], input_nc=6, init=str(path))
    encoder = build_encoder(enc_cfg, n_styles=4, style_dim=32, family="restyle_psp")
    body, source = encoder.backbone.state_dict(), net.backbone.state_dict()
    assert torch.equal(body["stem.conv.weight"][:, :3], source["stem.conv.weight"])
    assert body["stem.conv.weight"][:, 3:].std() > 0.5  # N(0, 1), as ReStyle draws it
    assert all(torch.equal(body[k], source[k]) for k in body if k != "stem.conv.weight")


def test_inference_form_keeps_codes_and_cannot_be_saved(model, x, tmp_path):
    with torch.no_grad():
        images, codes = model(x, return_latents=True)
        fast = model.for_inference()
        fast_codes = fast.encode(x.contiguous(memory_format=torch.channels_last))
        fast_images = fast.decode(fast_codes)
    torch.testing.assert_close(fast_codes, codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_images, images, rtol=1e-4, atol=1e-5)
    assert not hasattr(fast, "save") and not hasattr(fast, "state_dict") and not hasattr(fast, "train")
    with pytest.raises(TypeError, match="cannot be saved"):
        torch.save(fast, tmp_path / "fast.pt")


def test_model_saved_after_making_its_inference_form_loads_back(model, x, tmp_path):
    # Regression: the fused encoder used to be made in place, so the model saved a file that
    # PSP.from_checkpoint refused ("unexpected key 'backbone.stem.conv.bias'").
    model.for_inference()
    model.save(tmp_path / "psp.pt")
    loaded = PSP.from_checkpoint(tmp_path / "psp.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), model.encode(x))


def test_inference_form_from_checkpoint_matches_the_model(model, x, tmp_path):
    model.save(tmp_path / "psp.pt")
    fast = InferenceModel.from_checkpoint(tmp_path / "psp.pt")
    with torch.no_grad():
        torch.testing.assert_close(fast.encode(x), model.encode(x), rtol=1e-4, atol=1e-5)
    assert all(not p.requires_grad for p in fast.generator.parameters())
    assert not fast.encoder.training and not fast.generator.training

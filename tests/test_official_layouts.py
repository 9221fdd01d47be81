"""Released-weight layouts: pSp encoder files and ArcFace `model_ir_se50.pth`.

The official state dicts are built here from the documented facts alone (docs/design.md) (names and shapes), filled with
random numbers, and pushed through an independent float64 functional forward written from the
official definition (`oracle_*`). Our modules must load them strictly, round-trip the names, and
reproduce the oracle's outputs.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from psp.models.model import PSP, estimate_w_avg
from psp.models.arcface import ArcFace
from psp.models.official import load_arcface
from psp.models.official import from_official, official_key_map, to_official
from psp.models.nets.pyramid import GradualStyleEncoder
from psp.models.nets.resnet import ResNet
from stylegan2 import Generator

# IR-SE-50 body: (in_channel, depth, units) per stage; the first unit of a stage has stride 2.
IR_SE_50 = [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)]
PSP_TAPS = {6: "c1", 20: "c2", 23: "c3"}  # pSp's hard-coded body indices
N_STYLES = 8  # a 32 px generator: enough rows to reach all three pyramid levels


# ---------------------------------------------------------------- official layouts from the documented facts


def _bn_shapes(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def official_backbone_shapes(input_nc=3):
    shapes = {"input_layer.0.weight": (64, input_nc, 3, 3), **_bn_shapes("input_layer.1", 64),
              "input_layer.2.weight": (64,)}
    i = 0
    for in_c, depth, units in IR_SE_50:
        for u in range(units):
            cin, p = (in_c if u == 0 else depth), f"body.{i}"
            shapes.update(_bn_shapes(f"{p}.res_layer.0", cin))
            shapes[f"{p}.res_layer.1.weight"] = (depth, cin, 3, 3)
            shapes[f"{p}.res_layer.2.weight"] = (depth,)
            shapes[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            shapes.update(_bn_shapes(f"{p}.res_layer.4", depth))
            shapes[f"{p}.res_layer.5.fc1.weight"] = (depth // 16, depth, 1, 1)
            shapes[f"{p}.res_layer.5.fc2.weight"] = (depth, depth // 16, 1, 1)
            if cin != depth:
                shapes[f"{p}.shortcut_layer.0.weight"] = (depth, cin, 1, 1)
                shapes.update(_bn_shapes(f"{p}.shortcut_layer.1", depth))
            i += 1
    return shapes


def official_encoder_shapes(n_styles):
    shapes = official_backbone_shapes()
    for j in range(n_styles):
        spatial = 16 if j < 3 else 32 if j < 7 else 64
        for k in range(int(math.log2(spatial))):
            shapes[f"styles.{j}.convs.{2 * k}.weight"] = (512, 512, 3, 3)
            shapes[f"styles.{j}.convs.{2 * k}.bias"] = (512,)
        shapes[f"styles.{j}.linear.weight"] = (512, 512)
        shapes[f"styles.{j}.linear.bias"] = (512,)
    shapes.update({"latlayer1.weight": (512, 256, 1, 1), "latlayer1.bias": (512,),
                   "latlayer2.weight": (512, 128, 1, 1), "latlayer2.bias": (512,)})
    return shapes


def official_arcface_shapes():
    return {**official_backbone_shapes(), **_bn_shapes("output_layer.0", 512),
            "output_layer.3.weight": (512, 512 * 7 * 7), "output_layer.3.bias": (512,),
            **_bn_shapes("output_layer.4", 512)}


def random_state(shapes, seed):
    """Plausible random values: unit-gain convs/linears, BN statistics near the identity."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN gamma, PReLU slopes
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.25
        elif ".linear." in key:  # EqualLinear stores N(0, 1) and scales at run time
            state[key] = torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)
    return state


# ---------------------------------------------------------------- float64 oracle of the official code


def _p(sd, key):
    return sd[key].double()


def _bn(sd, x, prefix):
    return F.batch_norm(x, _p(sd, f"{prefix}.running_mean"), _p(sd, f"{prefix}.running_var"),
                        _p(sd, f"{prefix}.weight"), _p(sd, f"{prefix}.bias"), False, 0.0, 1e-5)


def oracle_body(sd, x):
    """Official input_layer + body on x (float64); returns {body index: output}."""
    x = F.conv2d(x, _p(sd, "input_layer.0.weight"), padding=1)
    x = F.prelu(_bn(sd, x, "input_layer.1"), _p(sd, "input_layer.2.weight"))
    outputs, i = {}, 0
    for in_c, depth, units in IR_SE_50:
        for u in range(units):
            stride, p = (2 if u == 0 else 1), f"body.{i}"
            if f"{p}.shortcut_layer.0.weight" in sd:
                shortcut = _bn(sd, F.conv2d(x, _p(sd, f"{p}.shortcut_layer.0.weight"), stride=stride),
                               f"{p}.shortcut_layer.1")
            else:
                shortcut = x[:, :, ::stride, ::stride]  # MaxPool2d(kernel 1, stride)
            r = F.conv2d(_bn(sd, x, f"{p}.res_layer.0"), _p(sd, f"{p}.res_layer.1.weight"), padding=1)
            r = F.prelu(r, _p(sd, f"{p}.res_layer.2.weight"))
            r = _bn(sd, F.conv2d(r, _p(sd, f"{p}.res_layer.3.weight"), stride=stride, padding=1), f"{p}.res_layer.4")
            s = torch.relu(F.conv2d(r.mean((2, 3), keepdim=True), _p(sd, f"{p}.res_layer.5.fc1.weight")))
            r = r * torch.sigmoid(F.conv2d(s, _p(sd, f"{p}.res_layer.5.fc2.weight")))
            x = r + shortcut
            outputs[i] = x
            i += 1
    return outputs


def oracle_encoder(sd, x, n_styles):
    """pSp GradualStyleEncoder.forward on x [B, 3, 256, 256] (float64) -> [B, n_styles, 512]."""
    body = oracle_body(sd, x)
    c1, c2, c3 = (body[i] for i in PSP_TAPS)

    def style(j, feat):
        k = 0
        while f"styles.{j}.convs.{2 * k}.weight" in sd:
            feat = F.leaky_relu(F.conv2d(feat, _p(sd, f"styles.{j}.convs.{2 * k}.weight"),
                                         _p(sd, f"styles.{j}.convs.{2 * k}.bias"), stride=2, padding=1), 0.01)
            k += 1
        w = _p(sd, f"styles.{j}.linear.weight") / math.sqrt(512)  # EqualLinear, lr_mul 1
        return feat.reshape(-1, 512) @ w.T + _p(sd, f"styles.{j}.linear.bias")

    def up_add(top, lateral):
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    p2 = up_add(c3, F.conv2d(c2, _p(sd, "latlayer1.weight"), _p(sd, "latlayer1.bias")))
    p1 = up_add(p2, F.conv2d(c1, _p(sd, "latlayer2.weight"), _p(sd, "latlayer2.bias")))
    return torch.stack([style(j, c3 if j < 3 else p2 if j < 7 else p1) for j in range(n_styles)], dim=1)


def oracle_arcface(sd, x):
    """TreB1eN Backbone(112, 50, 'ir_se') in eval mode on x [B, 3, 112, 112] (float64)."""
    feat = _bn(sd, oracle_body(sd, x)[23], "output_layer.0")  # Dropout: identity in eval
    emb = feat.flatten(1) @ _p(sd, "output_layer.3.weight").T + _p(sd, "output_layer.3.bias")
    emb = F.batch_norm(emb, _p(sd, "output_layer.4.running_mean"), _p(sd, "output_layer.4.running_var"),
                       _p(sd, "output_layer.4.weight"), _p(sd, "output_layer.4.bias"), False, 0.0, 1e-5)
    return emb / torch.norm(emb, 2, 1, True)


def assert_matches_oracle(ours, oracle):
    """Parity target: max abs error <= 1e-3 x std of the reference (float32 vs float64)."""
    err = (ours.double() - oracle).abs().max().item()
    assert err <= 1e-3 * oracle.std().item(), f"max error {err:.3g} vs std {oracle.std().item():.3g}"


# ---------------------------------------------------------------- pSp encoder


@pytest.fixture(scope="module")
def official_encoder_state():
    return random_state(official_encoder_shapes(N_STYLES), seed=1)


@pytest.fixture(scope="module")
def encoder_layout():
    """The encoder on the meta device: names and shapes without memory or initialisation time."""
    with torch.device("meta"):
        return GradualStyleEncoder(ResNet(), n_styles=N_STYLES)


def test_key_map_covers_the_official_layout_exactly(encoder_layout):
    key_map = official_key_map(encoder_layout)
    assert set(key_map) == set(official_encoder_shapes(N_STYLES))
    assert set(key_map.values()) == set(encoder_layout.state_dict())


def test_encoder_names_round_trip_both_ways(encoder_layout, official_encoder_state):
    ours = from_official(official_encoder_state, encoder_layout)
    assert list(ours) == list(encoder_layout.state_dict())
    back = to_official(ours, encoder_layout)
    assert back.keys() == official_encoder_state.keys()
    assert all(back[k] is official_encoder_state[k] for k in official_encoder_state)
    again = from_official(back, encoder_layout)
    assert list(again) == list(ours) and all(again[k] is ours[k] for k in ours)
    assert set(to_official(ours, encoder_layout, prefix="encoder.")) == {f"encoder.{k}" for k in official_encoder_state}


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("body.5.res_layer.3.weight"), "missing key 'body.5.res_layer.3.weight'"),
    (lambda sd: sd.update({"styles.8.linear.weight": torch.zeros(512, 512)}), "unexpected key 'styles.8.linear.weight'"),
    (lambda sd: sd.update({"latlayer1.weight": torch.zeros(512, 128, 1, 1)}), r"key 'latlayer1.weight' has shape \[512, 128, 1, 1\]"),
])
def test_bad_official_encoder_keys_are_named(encoder_layout, official_encoder_state, edit, match):
    state = dict(official_encoder_state)
    edit(state)
    with pytest.raises(ValueError, match=match):
        from_official(state, encoder_layout, source="psp_test.pt")


def test_to_official_names_a_key_without_official_name(encoder_layout):
    ours = {**encoder_layout.state_dict(), "backbone.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="'backbone.extra.weight' has no official name"):
        to_official(ours, encoder_layout)


def test_unused_official_laterals_are_dropped():
    """pSp always saves latlayer1/2; with n_styles <= 7 our encoder has no lateral2."""
    with torch.device("meta"):
        small = GradualStyleEncoder(ResNet(), n_styles=6)
    state = {k: torch.empty(v, device="meta") for k, v in official_encoder_shapes(8).items()
             if not k.startswith(("styles.6.", "styles.7."))}
    assert "lateral2.weight" not in from_official(state, small)


def test_models_without_official_layout_are_refused():
    for kwargs, match in [({"block": "basic"}, "'ir' or 'ir_se'"), ({"stem": "deep"}, "stem"),
                          ({"anti_alias": True}, "anti_alias"), ({"act": "relu"}, "prelu")]:
        backbone = ResNet(layers=[1, 1, 1, 1], widths=[16, 16, 32, 32], **kwargs)
        with pytest.raises(ValueError, match=match):
            official_key_map(backbone)


# ---------------------------------------------------------------- a whole pSp file


@pytest.fixture(scope="module")
def psp_file(tmp_path_factory, official_encoder_state):
    with torch.random.fork_rng():
        torch.manual_seed(5)
        decoder = Generator(32, 512, 8)
    state = {f"encoder.{k}": v for k, v in official_encoder_state.items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    latent_avg = torch.randn(N_STYLES, 512, generator=torch.Generator().manual_seed(6))
    # opts as pSp saves them, including the training device, which must never be used.
    opts = {"encoder_type": "GradualStyleEncoder", "input_nc": 3, "output_size": 32, "device": "cuda:0",
            "start_from_latent_avg": True, "learn_in_w": False, "label_nc": 0, "exp_dir": "/tmp/x"}
    path = tmp_path_factory.mktemp("psp") / "psp_test.pt"
    ckpt = {"state_dict": state, "opts": opts, "latent_avg": latent_avg}
    torch.save(ckpt, path)
    return path, ckpt, decoder, latent_avg


def test_official_psp_file_loads_on_cpu_and_matches_the_oracle(psp_file, official_encoder_state):
    """One IR-SE-50 forward at 256 px (the expensive part of this file), checked end to end."""
    path, _, decoder, latent_avg = psp_file
    model = PSP.from_checkpoint(path, device="cpu")
    assert not model.training and model.n_styles == N_STYLES and model.input_size == 256
    assert model.w_avg.shape == (N_STYLES, 512) and model.w_avg.device.type == "cpu"
    assert model.config.generator.size == 32 and model.start_from_latent_avg
    face = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        codes = model.encode(face)
        expected_codes = oracle_encoder(official_encoder_state, face.double(), N_STYLES) + latent_avg.double()
        assert codes.shape == (1, N_STYLES, 512)
        assert_matches_oracle(codes, expected_codes)
        images = model.decode(codes)
        expected, _ = decoder.eval()([codes], input_is_latent=True, randomize_noise=False)
    assert images.shape == (1, 3, 256, 256)
    # pSp's face_pool: adaptive average pooling to 256 (here it upsamples a 32 px image).
    torch.testing.assert_close(images, F.adaptive_avg_pool2d(expected, 256))
    assert model.decode(codes, resize=False).shape == (1, 3, 32, 32)


def test_official_psp_file_without_latent_avg(psp_file):
    """A pSp model trained without start_from_latent_avg: raw codes, w_avg estimated for previews."""
    saved = psp_file[1]  # the dict the file holds, without reading 600 MB back
    ckpt = {"state_dict": saved["state_dict"], "opts": {**saved["opts"], "start_from_latent_avg": False}}
    model = PSP._from_official_file(ckpt, "psp_test.pt")
    assert not model.start_from_latent_avg
    torch.testing.assert_close(model.w_avg, estimate_w_avg(model.generator, 10_000).expand(N_STYLES, 512))


# ---------------------------------------------------------------- ArcFace


@pytest.fixture(scope="module")
def official_arcface_state():
    return random_state(official_arcface_shapes(), seed=2)


def test_arcface_key_map_and_round_trip(official_arcface_state):
    with torch.device("meta"):
        net = ArcFace()
    assert set(official_key_map(net)) == set(official_arcface_shapes())
    ours = from_official(official_arcface_state, net)
    assert to_official(ours, net).keys() == official_arcface_state.keys()


def test_load_arcface_matches_the_oracle(tmp_path, official_arcface_state):
    # model_ir_se50.pth predates BatchNorm's num_batches_tracked: leave the counters out.
    state = {k: v for k, v in official_arcface_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "model_ir_se50.pth"
    torch.save(state, path)
    net = load_arcface(str(path))
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        emb = net(x)
        expected = oracle_arcface(official_arcface_state, x.double())
    assert emb.shape == (2, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert_matches_oracle(emb, expected)

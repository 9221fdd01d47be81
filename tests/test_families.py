"""The encoder families (pSp, e4e, ReStyle-pSp, ReStyle-e4e): released files and numerical parity.

Official-layout state dicts are built here from the documented facts (psp/models/released.py, names
and shapes) and filled with random numbers; an independent functional oracle written from the same
facts (the IR-SE body, the pSp pyramid, e4e's w0 + deltas, ReStyle's residual passes from the
average image) gives the reference. Parity target: max abs error <= 1e-3 x std of the reference,
for codes and images, at every iteration. The tiny-width runs (float64 oracle) cover every family
and iteration; one full IR-SE-50 ReStyle-e4e file goes through ``PSP.from_checkpoint`` end to end.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from psp.config import EncoderConfig, GeneratorConfig, ModelConfig, WAvgConfig
from psp.errors import CheckpointFormatError, ConfigError
from psp.models.model import PSP, build_encoder
from psp.models.official import from_official
from stylegan2 import Generator

TINY_STAGES = [(16, 16, 1), (16, 16, 1), (16, 32, 1), (32, 32, 1)]  # (in, depth, units): first unit stride 2
IR_SE_50 = [(64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)]
TINY_GEN = GeneratorConfig(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
N_STYLES = 8  # 32 px generator: rows on all three pyramid levels
PSP_LEVEL = lambda j: 0 if j < 3 else 1 if j < 7 else 2  # noqa: E731  pSp/e4e coarse_ind 3, middle_ind 7
RESTYLE_LEVEL = lambda j: 0  # noqa: E731  every ReStyle row reads the final 16x16 map
LEVEL_OF = {"psp": PSP_LEVEL, "e4e": PSP_LEVEL, "restyle_psp": RESTYLE_LEVEL, "restyle_e4e": RESTYLE_LEVEL}


# ---------------------------------------------------------------- official layouts from the documented facts


def _bn(prefix, c):
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def official_shapes(stages, input_nc, n_styles, style_dim, input_size, level_of):
    """input_layer + body (IR-SE units) + styles (+ latlayers when a row reads P2/P1)."""
    stem = stages[0][0]
    shapes = {"input_layer.0.weight": (stem, input_nc, 3, 3), **_bn("input_layer.1", stem),
              "input_layer.2.weight": (stem,)}
    i = 0
    for in_c, depth, units in stages:
        for u in range(units):
            cin, p = (in_c if u == 0 else depth), f"body.{i}"
            shapes |= _bn(f"{p}.res_layer.0", cin)
            shapes[f"{p}.res_layer.1.weight"] = (depth, cin, 3, 3)
            shapes[f"{p}.res_layer.2.weight"] = (depth,)
            shapes[f"{p}.res_layer.3.weight"] = (depth, depth, 3, 3)
            shapes |= _bn(f"{p}.res_layer.4", depth)
            shapes[f"{p}.res_layer.5.fc1.weight"] = (max(1, depth // 16), depth, 1, 1)
            shapes[f"{p}.res_layer.5.fc2.weight"] = (depth, max(1, depth // 16), 1, 1)
            if cin != depth:
                shapes[f"{p}.shortcut_layer.0.weight"] = (depth, cin, 1, 1)
                shapes |= _bn(f"{p}.shortcut_layer.1", depth)
            i += 1
    width = stages[-1][1]
    c3_side = input_size // 16
    for j in range(n_styles):
        spatial = c3_side * 2 ** level_of(j)
        for k in range(int(math.log2(spatial))):
            shapes[f"styles.{j}.convs.{2 * k}.weight"] = (style_dim, width if k == 0 else style_dim, 3, 3)
            shapes[f"styles.{j}.convs.{2 * k}.bias"] = (style_dim,)
        shapes[f"styles.{j}.linear.weight"] = (style_dim, style_dim)
        shapes[f"styles.{j}.linear.bias"] = (style_dim,)
    if any(level_of(j) > 0 for j in range(n_styles)):
        shapes |= {"latlayer1.weight": (width, stages[2][1], 1, 1), "latlayer1.bias": (width,),
                   "latlayer2.weight": (width, stages[1][1], 1, 1), "latlayer2.bias": (width,)}
    return shapes


def random_state(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            state[key] = torch.rand(shape, generator=g) * 0.5 + 0.25
        elif ".linear." in key:
            state[key] = torch.randn(shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
    return state


# ---------------------------------------------------------------- the oracle


def _t(sd, key, dtype):
    return sd[key].to(dtype)


def oracle_levels(sd, x, stages):
    """[C3, P2, P1] of the official IR-SE body and FPN (P2/P1 only when the file has latlayers)."""
    dt = x.dtype
    bn = lambda y, p: F.batch_norm(y, _t(sd, f"{p}.running_mean", dt), _t(sd, f"{p}.running_var", dt),  # noqa: E731
                                   _t(sd, f"{p}.weight", dt), _t(sd, f"{p}.bias", dt), False, 0.0, 1e-5)
    x = F.prelu(bn(F.conv2d(x, _t(sd, "input_layer.0.weight", dt), padding=1), "input_layer.1"),
                _t(sd, "input_layer.2.weight", dt))
    ends, i = [], 0
    for in_c, depth, units in stages:
        for u in range(units):
            stride, p = (2 if u == 0 else 1), f"body.{i}"
            if f"{p}.shortcut_layer.0.weight" in sd:
                short = bn(F.conv2d(x, _t(sd, f"{p}.shortcut_layer.0.weight", dt), stride=stride), f"{p}.shortcut_layer.1")
            else:
                short = x[:, :, ::stride, ::stride]
            r = F.conv2d(bn(x, f"{p}.res_layer.0"), _t(sd, f"{p}.res_layer.1.weight", dt), padding=1)
            r = F.prelu(r, _t(sd, f"{p}.res_layer.2.weight", dt))
            r = bn(F.conv2d(r, _t(sd, f"{p}.res_layer.3.weight", dt), stride=stride, padding=1), f"{p}.res_layer.4")
            s = torch.relu(F.conv2d(r.mean((2, 3), keepdim=True), _t(sd, f"{p}.res_layer.5.fc1.weight", dt)))
            x = r * torch.sigmoid(F.conv2d(s, _t(sd, f"{p}.res_layer.5.fc2.weight", dt))) + short
            i += 1
        ends.append(x)
    c1, c2, c3 = ends[1], ends[2], ends[3]  # pSp's body taps 6, 20, 23 end stages 2, 3, 4
    if "latlayer1.weight" not in sd:
        return [c3]
    up = lambda top, lat: F.interpolate(top, size=lat.shape[-2:], mode="bilinear", align_corners=True) + lat  # noqa: E731
    p2 = up(c3, F.conv2d(c2, _t(sd, "latlayer1.weight", dt), _t(sd, "latlayer1.bias", dt)))
    p1 = up(p2, F.conv2d(c1, _t(sd, "latlayer2.weight", dt), _t(sd, "latlayer2.bias", dt)))
    return [c3, p2, p1]


def oracle_style(sd, j, feat):
    dt, k = feat.dtype, 0
    while f"styles.{j}.convs.{2 * k}.weight" in sd:
        feat = F.leaky_relu(F.conv2d(feat, _t(sd, f"styles.{j}.convs.{2 * k}.weight", dt),
                                     _t(sd, f"styles.{j}.convs.{2 * k}.bias", dt), stride=2, padding=1), 0.01)
        k += 1
    w = _t(sd, f"styles.{j}.linear.weight", dt)
    feat = feat.reshape(feat.shape[0], -1)
    return feat @ (w / math.sqrt(w.shape[1])).T + _t(sd, f"styles.{j}.linear.bias", dt)


def oracle_encoder(sd, x, family, stages, n_styles):
    """The encoder's raw output (before latent_avg / previous codes)."""
    levels = oracle_levels(sd, x, stages)
    level_of = LEVEL_OF[family]
    if family in ("psp", "restyle_psp"):
        return torch.stack([oracle_style(sd, j, levels[level_of(j)]) for j in range(n_styles)], dim=1)
    w = oracle_style(sd, 0, levels[0]).unsqueeze(1).repeat(1, n_styles, 1)  # w0 on every row
    for i in range(1, n_styles):  # the inference stage: every delta
        w[:, i] += oracle_style(sd, i, levels[level_of(i)])
    return w


def oracle_run(sd, decoder, latent_avg, x, family, stages, k, side):
    """[(codes, image)] per pass as the original runs: pSp/e4e one pass + latent_avg; ReStyle from the
    average image, each pass [x, face_pool(y)] -> E + previous codes (latent_avg first)."""
    pool = lambda img: F.adaptive_avg_pool2d(img, side)  # noqa: E731  face_pool
    decode = lambda c: decoder([c], input_is_latent=True, randomize_noise=False)[0]  # noqa: E731
    n = latent_avg.shape[0]
    if family in ("psp", "e4e"):
        codes = oracle_encoder(sd, x, family, stages, n) + latent_avg.repeat(x.shape[0], 1, 1)
        return [(codes, pool(decode(codes)))]
    avg_image = pool(decode(latent_avg.unsqueeze(0)))[0]
    out, latent, y = [], None, None
    for it in range(k):
        prev = avg_image.unsqueeze(0).repeat(x.shape[0], 1, 1, 1) if it == 0 else y
        codes = oracle_encoder(sd, torch.cat([x, prev], 1), family, stages, n)
        codes = codes + (latent if latent is not None else latent_avg.repeat(x.shape[0], 1, 1))
        image = pool(decode(codes))
        out.append((codes, image))
        latent, y = codes, image
    return out


def assert_close_to(ours, ref, what):
    err = (ours.double() - ref.double()).abs().max().item()
    assert err <= 1e-3 * ref.double().std().item(), f"{what}: max error {err:.3g} vs std {ref.std().item():.3g}"


# ---------------------------------------------------------------- tiny widths: every family, every pass


def tiny_model(family, seed=0):
    """A PSP of `family` holding random official-layout weights (tiny IR-SE widths, 32 px generator)."""
    input_nc = 6 if family.startswith("restyle") else 3
    enc_cfg = EncoderConfig(layers=[1, 1, 1, 1], widths=[16, 16, 32, 32], input_nc=input_nc, input_size=32)
    cfg = ModelConfig(encoder=enc_cfg, generator=TINY_GEN, family=family, iterations=3,
                      w_avg=WAvgConfig(source="estimate", n_samples=64))
    sd = random_state(official_shapes(TINY_STAGES, input_nc, N_STYLES, 32, 32, LEVEL_OF[family]), seed)
    encoder = build_encoder(enc_cfg, N_STYLES, 32, load_init=False, family=family)
    encoder.load_state_dict(from_official(sd, encoder, source=family), strict=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        generator = Generator(32, 32, 2, channel_multiplier=1, channel_max=16)
    w_avg = torch.randn(N_STYLES, 32, generator=torch.Generator().manual_seed(seed + 2)) * 0.5
    return PSP(cfg, encoder, generator.eval(), w_avg).eval(), sd


@pytest.fixture(scope="module")
def faces():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * 2 - 1


@pytest.mark.parametrize("family", ["psp", "e4e", "restyle_psp", "restyle_e4e"])
def test_every_family_matches_the_oracle_at_every_pass(family, faces):
    model, sd = tiny_model(family)
    fast = model.for_inference()
    decoder64 = copy.deepcopy(model.generator).double()
    k = 3 if model.is_iterative else 1
    ref = oracle_run(sd, decoder64, model.w_avg.double(), faces.double(), family, TINY_STAGES, k, 32)
    with torch.no_grad():
        for form in (model, fast):
            passes = form.encode_iterations(faces, k)
            assert len(passes) == k
            for t, (codes, (ref_codes, ref_image)) in enumerate(zip(passes, ref)):
                assert_close_to(codes, ref_codes, f"{family} codes, pass {t + 1}")
                assert_close_to(form.decode(codes, resize=True), ref_image, f"{family} image, pass {t + 1}")
            torch.testing.assert_close(form.encode(faces, iterations=k), passes[-1])
    assert model.default_iterations == (3 if model.is_iterative else 1)


def test_restyle_passes_change_the_codes_and_the_default_is_the_config(faces):
    model, _ = tiny_model("restyle_psp")
    with torch.no_grad():
        c1, c2, c3 = model.encode_iterations(faces)  # model.iterations = 3
        assert not torch.allclose(c1, c2) and not torch.allclose(c2, c3)
        torch.testing.assert_close(model.encode(faces), c3)
        torch.testing.assert_close(model.encode(faces, iterations=1), c1)
        # one pass by hand: the average image and w_avg are the starting point
        step = model.encode_step(faces, model.average_image(), model.w_avg[None])
    torch.testing.assert_close(step, c1)


def test_single_pass_families_refuse_iterations(faces):
    model, _ = tiny_model("e4e")
    with pytest.raises(ValueError, match="needs a ReStyle model"):
        model.encode(faces, iterations=3)
    assert len(model.encode_iterations(faces)) == 1


def test_e4e_progressive_stage_limits_the_deltas(faces):
    model, _ = tiny_model("e4e")
    with torch.no_grad():
        full = model.encoder(faces)
        model.encoder.set_progressive_stage(0)
        w_only = model.encoder(faces)  # a point of W: every row the same
        model.encoder.set_progressive_stage(4)
        four = model.encoder(faces)
    assert torch.equal(w_only, w_only[:, :1].expand_as(w_only))
    torch.testing.assert_close(four[:, :5], full[:, :5])
    assert torch.equal(four[:, 5:], four[:, :1].expand(-1, N_STYLES - 5, -1))


def test_family_decides_the_encoder_class_and_config_checks_input_channels():
    with pytest.raises(ConfigError, match="model.encoder.input_nc"):
        from psp.config import model_config_from_dict
        model_config_from_dict({"family": "restyle_psp"}, source="x.pt")
    model, _ = tiny_model("e4e")
    with pytest.raises(ValueError, match="needs a Encoder4Editing"):
        PSP(ModelConfig(encoder=model.config.encoder, generator=TINY_GEN, family="e4e"),
            build_encoder(model.config.encoder, N_STYLES, 32, load_init=False), model.generator, model.w_avg)


@pytest.mark.parametrize("family", ["e4e", "restyle_e4e"])
def test_from_config_and_our_file_record_the_family(family, tmp_path, faces):
    enc = EncoderConfig(layers=[1, 1, 1, 1], widths=[16, 16, 32, 32], input_size=32,
                        input_nc=6 if family == "restyle_e4e" else 3)
    cfg = ModelConfig(encoder=enc, generator=TINY_GEN, family=family, iterations=2,
                      w_avg=WAvgConfig(source="estimate", n_samples=64))
    model = PSP.from_config(cfg).eval()
    model.save(tmp_path / "psp.pt")
    again = PSP.from_checkpoint(tmp_path / "psp.pt")
    assert again.family == family and type(again.encoder) is type(model.encoder)
    assert again.encoder.progressive_stage is None
    with torch.no_grad():
        torch.testing.assert_close(again.encode(faces), model.encode(faces))
        assert len(again.encode_iterations(faces)) == (2 if family == "restyle_e4e" else 1)
    model.encoder.set_progressive_stage(2)  # a model exported before every delta was unlocked
    model.save(tmp_path / "stage2.pt")
    assert PSP.from_checkpoint(tmp_path / "stage2.pt").encoder.progressive_stage == 2


# ---------------------------------------------------------------- released files (full IR-SE-50 layout)


def released_file(tmp_path, family, seed, decoder, extra_opts=None, extra=None, with_latent_avg=True):
    encoder_type = {"psp": "GradualStyleEncoder", "e4e": "Encoder4Editing", "restyle_psp": "BackboneEncoder",
                    "restyle_e4e": "ProgressiveBackboneEncoder"}[family]
    input_nc = 6 if family.startswith("restyle") else 3
    sd = random_state(official_shapes(IR_SE_50, input_nc, N_STYLES, 512, 256, LEVEL_OF[family]), seed)
    state = {f"encoder.{k}": v for k, v in sd.items()} | {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    opts = {"encoder_type": encoder_type, "device": "cuda:0", "start_from_latent_avg": True, "exp_dir": "/x",
            "dataset_type": "ffhq_encode", "learn_in_w": False}
    if family == "e4e":
        opts |= {"stylegan_size": 32, "progressive_steps": [0, 20000], "w_discriminator_lambda": 0.1}
    else:
        opts |= {"output_size": 32, "input_nc": input_nc}
    if family.startswith("restyle"):
        opts["n_iters_per_batch"] = 3  # a training value: inference defaults to 5 regardless
    opts |= extra_opts or {}
    latent_avg = torch.randn(N_STYLES, 512, generator=torch.Generator().manual_seed(seed + 1)) * 0.3
    ckpt = {"state_dict": state, "opts": opts, **({"latent_avg": latent_avg} if with_latent_avg else {}), **(extra or {})}
    path = tmp_path / f"{family}_{seed}.pt"
    torch.save(ckpt, path)
    return path, sd, latent_avg


@pytest.fixture(scope="module")
def decoder512():
    with torch.random.fork_rng():
        torch.manual_seed(4)
        return Generator(32, 512, 8).eval()


def test_e4e_release_loads_with_its_training_state_and_is_not_mistaken_for_psp(tmp_path, decoder512):
    disc = {"extra": {"0.weight": torch.randn(4, 512), "0.bias": torch.zeros(4)}}
    training_state = {"discriminator_state_dict": disc["extra"], "global_step": 12,
                      "discriminator_optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 2e-5}]},
                      "best_val_loss": 0.5}
    path, sd, latent_avg = released_file(tmp_path, "e4e", 1, decoder512, extra=training_state)
    model = PSP.from_checkpoint(path)
    assert model.family == "e4e" and type(model.encoder).__name__ == "Encoder4Editing"
    assert model.encoder.progressive_stage is None and model.config.encoder.input_nc == 3
    assert model.config.generator.size == 32 and model.start_from_latent_avg
    torch.testing.assert_close(model.w_avg, latent_avg)
    # the same weights under a pSp encoder_type give a pSp model: opts decide, not the keys
    ckpt = torch.load(path, weights_only=True)
    ckpt["opts"] = {**ckpt["opts"], "encoder_type": "GradualStyleEncoder", "output_size": 32}
    assert PSP._from_official_file(ckpt, "as_psp.pt").family == "psp"


def test_restyle_psp_release_loads(tmp_path, decoder512):
    path, _, _ = released_file(tmp_path, "restyle_psp", 2, decoder512)
    model = PSP.from_checkpoint(path)
    assert model.family == "restyle_psp" and model.encoder.lateral1 is None
    assert model.config.encoder.input_nc == 6 and model.default_iterations == 5


def test_restyle_e4e_release_matches_the_oracle_end_to_end(tmp_path, decoder512):
    """Two passes of a full IR-SE-50 file through PSP.from_checkpoint (the expensive test here)."""
    path, sd, latent_avg = released_file(tmp_path, "restyle_e4e", 3, decoder512)
    model = PSP.from_checkpoint(path)
    assert model.family == "restyle_e4e" and model.default_iterations == 5
    face = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        ref = oracle_run(sd, decoder512, latent_avg, face, "restyle_e4e", IR_SE_50, 2, 256)  # float32 oracle
        passes = model.encode_iterations(face, 2)
        for t, (codes, (ref_codes, ref_image)) in enumerate(zip(passes, ref)):
            assert_close_to(codes, ref_codes, f"codes, pass {t + 1}")
            assert_close_to(model.decode(codes), ref_image, f"image, pass {t + 1}")


@pytest.mark.parametrize("family, change, match", [
    ("e4e", {"opts": {"encoder_type": "ResNetProgressiveBackboneEncoder"}}, "'ResNetProgressiveBackboneEncoder' is not supported"),
    ("restyle_psp", {"opts": {"input_nc": 3}}, "reads 6 channels"),
    ("restyle_psp", {"latent_avg": False}, "needs 'latent_avg'"),
])
def test_bad_released_files_are_one_line_errors(tmp_path, family, change, match):
    """The opts are read before any weight, so the files need none."""
    opts = {"encoder_type": {"e4e": "Encoder4Editing", "restyle_psp": "BackboneEncoder"}[family],
            "input_nc": 6, "output_size": 32, **change.get("opts", {})}
    ckpt = {"state_dict": {}, "opts": opts}
    if change.get("latent_avg", True):
        ckpt["latent_avg"] = torch.zeros(N_STYLES, 512)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointFormatError, match=match) as err:
        PSP.from_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(err.value) and "bad.pt" in str(err.value)

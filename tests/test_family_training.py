"""Training of every encoder family: the demo generator's image statistics, e4e's schedule, delta
regulariser, latent discriminator (R1, pools, its own optimiser, checkpoint and resume) and
ReStyle's passes per batch, through real Lightning runs on tiny models."""
import copy
import json
import math

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F

import psp.training.run as training
from psp.config import ConfigError, load_config
from psp.models.generated import scale_to_image_range
from psp.models.model import PSP
from psp.models.nets.latent_discriminator import LatentDiscriminator
from psp.training.e4e import (
    LatentCodesPool,
    adversarial_loss,
    delta_loss,
    delta_rows,
    discriminated_rows,
    discriminator_loss,
    progressive_stage,
    r1_penalty,
)
from psp.training.run import run
from psp.training.system import PSPSystem, w_plus_spread
from stylegan2 import Generator
from test_system import tiny_config

RESTYLE = ["model.encoder.input_nc=6", "train.iterations_per_batch=2"]
E4E_RECIPE = ["train.progressive_start=1", "train.progressive_every=1", "loss.delta_norm=0.01",
              "loss.w_discriminator=0.1", "discriminator.reg_every=2", "discriminator.pool_size=3"]


def family_config(out, family, max_steps=4, val_every=2, extra=()):
    """The tiny test config of ``family`` (ReStyle: 6 input channels, 2 passes; the e4e families
    with the e4e recipe's terms on a one-step schedule)."""
    more = [f"model.family={family}"]
    if family.startswith("restyle"):
        more += RESTYLE
    if family.endswith("e4e"):
        more += E4E_RECIPE
    return tiny_config(out, max_steps=max_steps, val_every=val_every, extra=[*more, *extra])


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the demo generator --------------------------------------------------------------------------

def test_demo_generator_draws_pixels_in_the_image_range():
    model_cfg = load_config(["demo"], ["model.w_avg.n_samples=64"], command="model").model
    generator = PSP.from_config(model_cfg).generator
    z = torch.randn(32, generator.style_dim, generator=torch.Generator().manual_seed(123))  # unseen z
    with torch.no_grad():
        w = generator.get_latent(z)
        images, _ = generator([w[:, None].repeat(1, generator.n_latent, 1)], input_is_latent=True,
                              randomize_noise=False)
    inside = float((images.abs() <= 1).float().mean())
    assert inside >= 0.97, inside  # measured: 0.995 on 256 samples (it was 0.50 before the scaling)
    assert 0.2 < float(images.std()) < 0.6


def test_scale_to_image_range_scales_every_image_exactly():
    torch.manual_seed(0)
    generator = Generator(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16).eval()
    w = generator.get_latent(torch.randn(4, 32))
    codes = w[:, None].repeat(1, generator.n_latent, 1)
    with torch.no_grad():
        before, _ = generator([codes], input_is_latent=True, randomize_noise=False)
        mapping = [p.clone() for p in generator.style.parameters()]
        factor = scale_to_image_range(generator, seed=3)
        after, _ = generator([codes], input_is_latent=True, randomize_noise=False)
    torch.testing.assert_close(after, before * factor, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(mapping, generator.style.parameters()))
    again = Generator(size=32, style_dim=32, n_mlp=2, channel_multiplier=1, channel_max=16)
    again.load_state_dict(generator.state_dict())
    assert abs(scale_to_image_range(again, seed=3) - 1.0) < 1e-5  # its images now have std IMAGE_STD


def test_synthetic_training_data_is_clamped_to_the_image_range(tmp_path):
    system = PSPSystem(tiny_config(tmp_path))
    config = system.config
    from psp.training.data import PSPDataModule

    data = PSPDataModule(config.data, config.train, config.model.encoder.input_size, generator=system.model.generator)
    data.setup()
    batch = [data.val_set[i]["target"] for i in range(4)] + [data.train_set[0]["source"]]
    assert all(float(image.abs().max()) <= 1.0 for image in batch)


# -- e4e pieces ----------------------------------------------------------------------------------

def test_progressive_schedule_unlocks_a_row_every_n_steps():
    stages = [progressive_stage(step, 6, start=4, every=3) for step in range(0, 30)]
    assert stages[:4] == [0, 0, 0, 0] and stages[4:7] == [1, 1, 1] and stages[7] == 2
    assert stages[4 + 3 * 4] == 5 and max(stages) == 5  # n_styles - 1: every row
    assert progressive_stage(10**6, 18, 20000, 2000) == 17
    assert progressive_stage(20000 + 16 * 2000 - 1, 18, 20000, 2000) == 16  # the recipe's last unlock
    assert progressive_stage(5, 6, None, 3) is None


def test_delta_rows_follow_each_original():
    assert list(delta_rows("e4e", 3, 6)) == [1, 2]            # e4e: the newest row is not yet regularised
    assert list(delta_rows("restyle_e4e", 3, 6)) == [1, 2, 3]  # ReStyle-e4e: it is
    assert list(delta_rows("e4e", None, 6)) == [] and list(delta_rows("restyle_e4e", 9, 6)) == [1, 2, 3, 4, 5]
    assert list(discriminated_rows(2, 6)) == [0, 1, 2] and list(discriminated_rows(None, 6)) == list(range(6))


def test_delta_loss_is_the_summed_mean_l2_of_the_deltas():
    codes = torch.randn(3, 5, 4, dtype=torch.float64)
    expected = sum(torch.stack([(codes[b, j] - codes[b, 0]).pow(2).sum().sqrt() for b in range(3)]).mean()
                   for j in (1, 2, 3))
    torch.testing.assert_close(delta_loss(codes, range(1, 4)), expected)
    w = torch.randn(2, 1, 4).expand(2, 5, 4)
    assert float(delta_loss(w, range(1, 5))) == 0.0  # a code of W has no deltas


def test_discriminator_losses_and_r1_by_definition():
    d = LatentDiscriminator(8, n_layers=4)
    assert sum(isinstance(m, torch.nn.Linear) for m in d.modules()) == 4
    assert d(torch.randn(5, 8)).shape == (5, 1)
    with pytest.raises(ValueError, match=r"codes \[B, 8\]"):
        d(torch.randn(5, 3, 8))
    real, fake = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [3.0]])
    loss, parts = discriminator_loss(real, fake)
    expected = F.softplus(-real).mean() + F.softplus(fake).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(parts["d_real_loss"] + parts["d_fake_loss"], expected)
    linear = LatentDiscriminator(8, n_layers=1)  # D(w) = a.w + b: dD/dw = a for every sample
    torch.testing.assert_close(r1_penalty(linear, torch.randn(6, 8)), linear.mlp[0].weight.pow(2).sum())
    codes = torch.randn(2, 4, 8)
    manual = torch.stack([F.softplus(-linear(codes[:, j])).mean() for j in (0, 1)]).mean()
    torch.testing.assert_close(adversarial_loss(linear, codes, range(2)), manual)


def test_codes_pool_fills_then_swaps_half_the_time_and_round_trips():
    pool = LatentCodesPool(4, seed=0)
    first = torch.arange(12.0).view(3, 4)
    assert torch.equal(pool.query(first), first) and len(pool.codes) == 3
    rows = torch.randn(6, 3, 4)  # [B, R, D]: one random row per sample
    out = pool.query(rows)
    assert out.shape == (6, 4) and len(pool.codes) == 4
    stored = torch.stack(pool.codes)
    for code in out:  # every answer is a row of its input or a code that was in the pool
        assert any(torch.equal(code, r) for r in rows.flatten(0, 1)) or any(torch.equal(code, s) for s in stored) \
            or any(torch.equal(code, f) for f in first)
    state = copy.deepcopy(pool.state_dict())
    twin = LatentCodesPool(4, seed=99)
    twin.load_state_dict(state, torch.device("cpu"))
    batch = torch.randn(8, 4)
    assert torch.equal(pool.query(batch), twin.query(batch))
    assert torch.equal(LatentCodesPool(0).query(batch), batch)


def test_w_plus_spread_is_zero_on_w_and_positive_off_it():
    w = torch.randn(2, 1, 8).expand(2, 6, 8)
    assert float(w_plus_spread(w)) < 1e-6
    assert float(w_plus_spread(torch.randn(2, 6, 8))) > 0.5


def test_family_keys_are_checked():
    synthetic = ["data.kind=synthetic"]
    with pytest.raises(ConfigError, match="train.progressive_start"):
        load_config([], [*synthetic, "train.progressive_start=10"])  # psp has no progressive rows
    with pytest.raises(ConfigError, match="loss.delta_norm"):
        load_config([], [*synthetic, "model.family=e4e", "loss.delta_norm=0.1"])
    with pytest.raises(ConfigError, match="discriminator.reg_every"):
        load_config([], [*synthetic, "discriminator.reg_every=0"])
    with pytest.raises(ConfigError, match="train.iterations_per_batch"):
        load_config([], [*synthetic, "train.iterations_per_batch=0"])
    recipe = load_config(["ffhq_e4e"])
    assert (recipe.model.family, recipe.train.progressive_start, recipe.train.progressive_every) == ("e4e", 20000, 2000)
    assert (recipe.loss.delta_norm, recipe.loss.w_discriminator, recipe.loss.id) == (2e-4, 0.1, 0.5)
    d = recipe.discriminator
    assert (d.lr, d.r1, d.reg_every, d.pool_size, d.layers) == (2e-5, 10.0, 16, 50, 4)
    for name, family in (("ffhq_restyle_psp", "restyle_psp"), ("ffhq_restyle_e4e", "restyle_e4e")):
        cfg = load_config([name])
        assert (cfg.model.family, cfg.model.encoder.input_nc, cfg.train.iterations_per_batch) == (family, 6, 5)


# -- runs ----------------------------------------------------------------------------------------

class StageProbe(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(("stage", trainer.global_step, pl_module.stage))  # the stage this step trained at
        grads = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
                 for block in pl_module.model.encoder.styles]
        self.seen.append(("grads", trainer.global_step, grads))


def test_e4e_unlocks_rows_and_trains_its_discriminator(tmp_path, monkeypatch):
    out = tmp_path / "run"
    probe = StageProbe()
    original = training.build_callbacks
    monkeypatch.setattr(training, "build_callbacks", lambda *args: [*original(*args), probe])
    assert run(family_config(out, "e4e", max_steps=3, val_every=3, extra=["train.progressive_start=1"])) == 0
    stages = [s for kind, _, s in probe.seen if kind == "stage"]
    assert stages == [0, 1, 2]
    grads = [g for kind, _, g in probe.seen if kind == "grads"]
    assert grads[0][0] and not any(grads[0][1:])       # stage 0: only w0's block learns
    assert grads[1][:2] == [True, True] and not any(grads[1][2:])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3  # the discriminator's steps do not count as training steps
    assert len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    assert ckpt["psp_training_state"]["real_pool"]["codes"].shape == (3, 32)
    record = _records(out)[-1]
    for key in ("loss_delta", "loss_adversarial", "discriminator_loss", "d_real_loss", "w_plus_spread"):
        assert math.isfinite(record[key]), key
    model = PSP.from_checkpoint(out / "psp.pt")
    assert model.family == "e4e" and model.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 32)


def test_discriminator_and_pools_resume_from_the_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run(family_config(out, "e4e", max_steps=2, val_every=2)) == 0
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["d"] = {k: v.clone() for k, v in pl_module.discriminator.state_dict().items()}
            seen["d_optim"] = copy.deepcopy(trainer.optimizers[1].state_dict())
            seen["pool"] = torch.stack(pl_module.fake_pool.codes).cpu()
            seen["stage"] = pl_module.stage

    original = training.build_callbacks
    monkeypatch.setattr(training, "build_callbacks", lambda *args: [*original(*args), Probe()])
    assert run(family_config(out, "e4e", max_steps=4, val_every=2), resume="auto") == 0
    for key, value in seen["d"].items():
        assert torch.equal(value, ckpt["state_dict"][f"discriminator.{key}"]), key
    saved = ckpt["optimizer_states"][1]["state"]
    assert saved and all(torch.equal(seen["d_optim"]["state"][i]["exp_avg"], s["exp_avg"]) for i, s in saved.items())
    assert torch.equal(seen["pool"], ckpt["psp_training_state"]["fake_pool"]["codes"])
    assert [r["step"] for r in _records(out)] == [2, 4]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_restyle_runs_its_passes_per_batch_detached_between_them(tmp_path):
    system = PSPSystem(family_config(tmp_path, "restyle_psp", extra=["train.iterations_per_batch=3"]))
    calls = []
    system.model.encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0]))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    passes = list(system.encoder_passes({"source": x, "target": x}))
    assert len(passes) == 3 and len(calls) == 3
    assert all(c.shape == (2, 6, 32, 32) for c in calls)
    average = system.model.average_image()
    torch.testing.assert_close(calls[0][:, 3:], average.expand(2, -1, -1, -1))  # starts from the average image
    torch.testing.assert_close(calls[1][:, 3:], passes[0][1].detach())           # then the previous output
    (codes_1, _, _, _), (_, _, loss_2, _) = passes[0], passes[1]
    assert torch.autograd.grad(loss_2, codes_1, allow_unused=True)[0] is None  # detached between passes
    expected = system.model.encoder(torch.cat([x, passes[0][1].detach()], 1)) + passes[0][0].detach()
    torch.testing.assert_close(passes[1][0], expected)


@pytest.mark.parametrize("family", ["restyle_psp", "restyle_e4e"])
def test_restyle_trains_and_reports_every_pass(tmp_path, family):
    out = tmp_path / "run"
    assert run(family_config(out, family, max_steps=2, val_every=2, extra=["train.precision=bf16-mixed"])) == 0
    record = _records(out)[-1]
    assert record["step"] == 2 and record["l2_iter_2"] == record["l2"] and "l2_iter_1" in record
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    model = PSP.from_checkpoint(out / "psp.pt")
    assert model.family == family and len(model.encode_iterations(torch.zeros(1, 3, 32, 32), iterations=2)) == 2
    from PIL import Image

    grid = Image.open(next((out / "images").iterdir()))
    assert grid.width > 4 * 32  # source | target | pass 1 | pass 2

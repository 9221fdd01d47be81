"""PSPSystem: frozen nets stay frozen through a real Lightning loop, what the optimiser and the
checkpoint hold, the Trainer settings, and a CPU end-to-end run with its run directory."""
import dataclasses
import json
import os

import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from psp.config import ConfigError, load_config, to_dict
from psp.training.data import PSPDataModule
from psp.training.losses import PSPLoss
from psp.models.model import PSP
from psp.training.system import PSPSystem
from psp.training.run import build_trainer, run

TINY = [
    "model.encoder.block=ir_se", "model.encoder.layers=[1,1,1,1]", "model.encoder.widths=[8,16,16,32]",
    "model.encoder.input_size=32", "model.generator.size=32", "model.generator.style_dim=32",
    "model.generator.n_mlp=2", "model.generator.channel_multiplier=1", "model.generator.channel_max=16",
    "model.w_avg.source=estimate", "model.w_avg.n_samples=256",
    "data.kind=synthetic", "data.n_train=64", "data.n_test=8", "data.num_workers=0",
    "loss.l2=1.0", "loss.lpips=0", "loss.id=0", "loss.w_norm=0.01",
    "train.batch_size=2", "train.test_batch_size=4", "train.val_batches=1", "train.log_every=1",
    "train.accelerator=cpu", "train.devices=1", "log.logger=csv", "log.n_images=3",
]


def tiny_config(out, max_steps=4, val_every=2, extra=()):
    """A model and run small enough for a 2-core CPU: 32 px generator, [1,1,1,1] encoder."""
    return load_config([], [*TINY, f"train.output_dir={out}", f"train.max_steps={max_steps}",
                            f"train.val_every={val_every}", *extra])


def write_tiny_yaml(path, out, **kwargs):
    """The tiny config as a YAML file for `train.py --config` subprocesses."""
    path.write_text(yaml.safe_dump(to_dict(tiny_config(out, **kwargs))))
    return path


# -- frozen networks ----------------------------------------------------------------------------

class TinyRecogniser(nn.Module):
    """A face-recogniser stand-in with BatchNorm and Dropout: [B,3,112,112] -> unit [B,8]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 8)

    def forward(self, x):
        return F.normalize(self.fc(self.drop(self.bn(self.conv(x)).mean((2, 3)))), dim=1)


def _frozen_state(system):
    frozen = ("model.generator.", "loss.")
    return {k: v.clone() for k, v in system.state_dict().items() if k.startswith(frozen)}


def test_frozen_nets_stay_frozen_through_real_validation(tmp_path):
    config = tiny_config(tmp_path / "run")
    system = PSPSystem(config)
    # LPIPS (random trunk: no download) and a BatchNorm recogniser, both with weight > 0.
    loss_cfg = dataclasses.replace(config.loss, lpips=0.5, id=0.1)
    system.loss = PSPLoss.from_config(loss_cfg, arcface=TinyRecogniser(), lpips_pretrained=False)
    system.train()
    frozen = [system.model.generator, system.loss]
    before = _frozen_state(system)
    encoder_bn = dict(system.model.encoder.named_buffers())
    encoder_bn_before = {k: v.clone() for k, v in encoder_bn.items()}
    modes = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((trainer.global_step, pl_module.model.encoder.training,
                          [m.training for net in frozen for m in net.modules()]))

    trainer = L.Trainer(accelerator="cpu", max_steps=4, val_check_interval=2, check_val_every_n_epoch=None,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()],
                        default_root_dir=tmp_path)
    data = PSPDataModule(config.data, config.train, config.model.encoder.input_size,
                         generator=system.model.generator)
    trainer.fit(system, datamodule=data)

    assert trainer.global_step == 4 and any(step > 2 for step, _, _ in modes)  # batches after a validation
    for step, encoder_training, frozen_modes in modes:
        assert encoder_training and not any(frozen_modes), step
    after = _frozen_state(system)
    assert before.keys() == after.keys()
    assert any(".bn.running_mean" in k for k in after)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(encoder_bn_before[k], v) for k, v in encoder_bn.items() if "running_mean" in k)


def test_only_the_encoder_is_trained(tmp_path):
    system = PSPSystem(tiny_config(tmp_path))
    trainable = {id(p) for p in system.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in system.model.encoder.parameters()}
    optimiser = system.configure_optimizers()
    in_optimiser = {id(p) for group in optimiser.param_groups for p in group["params"]}
    assert in_optimiser == trainable
    system.train()
    assert system.model.encoder.training and not system.model.generator.training


def test_trainer_settings_come_from_the_config(tmp_path):
    config = tiny_config(tmp_path, extra=["train.precision=bf16-mixed", "optim.grad_clip=0.5",
                                          "train.val_every=7", "train.max_steps=30"])
    trainer = build_trainer(config)
    assert trainer.precision == "bf16-mixed"
    assert trainer.gradient_clip_val == 0.5
    assert trainer.max_steps == 30 and trainer.val_check_interval == 7
    assert trainer.check_val_every_n_epoch is None
    assert not (tmp_path / "config.yaml").exists()  # nothing written before training starts


def test_resuming_another_model_is_refused(tmp_path):
    system = PSPSystem(tiny_config(tmp_path))
    checkpoint = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(checkpoint)
    other = PSPSystem(tiny_config(tmp_path, extra=["model.encoder.widths=[8,16,16,16]"]))
    with pytest.raises(ConfigError, match="model.encoder.widths"):
        other.on_load_checkpoint(checkpoint)


# -- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One 4-step CPU run (validation at steps 2 and 4) shared by the tests below."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    config = tiny_config(out, max_steps=4, val_every=2)
    assert run(config) == 0
    return config, out


def test_run_directory_contents(smoke_run):
    config, out = smoke_run
    assert load_config([str(out / "config.yaml")]) == config
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert (out / "psp.pt").is_file() and not list(out.glob("*.tmp"))
    assert sorted(p.name for p in (out / "images").iterdir()) == ["step_000002.png", "step_000004.png"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert {"loss", "loss_l2", "loss_w_norm", "l2", "baseline_l2"} <= record.keys()
        assert all(isinstance(v, (int, float)) for v in record.values())
    assert "train/loss" in (out / "logs" / "csv" / "metrics.csv").read_text()


def test_training_checkpoint_holds_only_what_training_changes(smoke_run):
    config, out = smoke_run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    keys = ckpt["state_dict"].keys()
    assert keys and all(k.startswith("model.encoder.") or k == "model.w_avg" for k in keys), sorted(keys)
    assert ckpt["psp_config"] == to_dict(config)
    state = ckpt["optimizer_states"][0]["state"]
    assert len(state) == len(list(PSPSystem(config).model.encoder.parameters()))


def test_exported_psp_reproduces_the_trained_encoder(smoke_run):
    config, out = smoke_run
    system = PSPSystem(config)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    system.on_load_checkpoint(ckpt)
    system.load_state_dict(ckpt["state_dict"], strict=True)
    system.eval()
    exported = PSP.from_checkpoint(out / "psp.pt", device="cpu").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        codes = system.model.encode(x)
        torch.testing.assert_close(exported.encode(x), codes)
        torch.testing.assert_close(exported.decode(codes), system.model.decode(codes))


def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    out = tmp_path / "run"
    assert run(tiny_config(out, max_steps=2, val_every=2, extra=["train.precision=bf16-mixed"])) == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["step"] == 2 and torch.isfinite(torch.tensor(record["loss"]))


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_other_loggers(tmp_path, monkeypatch, logger):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "")  # recorded, so the delenv below is undone after the test
    monkeypatch.delenv("WANDB_MODE")
    out = tmp_path / "run"
    assert run(tiny_config(out, max_steps=2, val_every=2, extra=[f"log.logger={logger}"])) == 0
    if logger == "tensorboard":
        assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    else:
        assert os.environ["WANDB_MODE"] == "offline"
        run_id = (out / "wandb_run_id").read_text().strip()
        assert list((out / "wandb").glob(f"offline-run-*-{run_id}"))
        import wandb
        assert wandb.run is None  # finished by `run` itself, not left to an exit handler

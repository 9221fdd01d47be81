"""The Lightning training system: a trainable pSp encoder against a frozen generator and loss nets.

Only ``model.encoder`` learns. The generator (``model.generator``) and the loss networks (LPIPS,
ArcFace, under ``loss``) are frozen: no gradients, kept in eval mode even when Lightning calls
``.train()`` after each validation, absent from the optimiser and from training checkpoints
(they are rebuilt from the config, so a checkpoint holds only what training changes).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from psp.config import Config, ConfigError, to_dict
from psp.training.losses import PSPLoss
from psp.models.model import PSP
from psp.models.official import load_arcface
from psp.training.optim import build_optimizer

# State-dict prefixes of the frozen networks; training checkpoints leave them out.
FROZEN_PREFIXES = ("model.generator.", "loss.")
CONFIG_KEY = "psp_config"


class PSPSystem(L.LightningModule):
    """pSp encoder training: ``codes = E(x) + w_avg``, ``y_hat = G(codes)`` at the encoder input size.

    Batches are dicts with ``source`` and ``target`` ([B, 3, S, S] in [-1, 1], S =
    ``model.encoder.input_size``). Logged keys: ``train/<term>`` and ``val/<term>`` for every loss
    term, the metrics of :meth:`PSPLoss.metrics`, and ``val/baseline_l2`` (L2 of the w_avg image
    against the target, the score of an encoder that always answers "average"). After each
    validation :attr:`preview` holds up to ``log.n_images`` (source, target, output) rows.

    ``lpips_pretrained=False`` leaves the LPIPS trunk random (tests and benchmarks, offline).
    """

    def __init__(self, config: Config, lpips_pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.model = PSP.from_config(config.model)
        # Loaded whenever given: with loss.id = 0 it still yields the id_similarity metric.
        arcface = load_arcface(config.loss.id_weights) if config.loss.id_weights else None
        self.loss = PSPLoss.from_config(config.loss, config.lpips, arcface=arcface, lpips_pretrained=lpips_pretrained,
                                        start_from_latent_avg=config.model.start_from_latent_avg)
        for frozen in self._frozen_modules():
            frozen.requires_grad_(False)
        self.train()
        self.preview: list[torch.Tensor] = []
        self._w_avg_image: torch.Tensor | None = None

    def _frozen_modules(self) -> list[torch.nn.Module]:
        return [self.model.generator, self.loss]

    def train(self, mode: bool = True) -> "PSPSystem":
        """Switch the encoder's mode; the frozen nets stay in eval (BatchNorm stats, Dropout)."""
        super().train(mode)
        for frozen in self._frozen_modules():
            frozen.eval()
        return self

    # -- steps --------------------------------------------------------------------------------

    def reconstruct(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One pSp pass on a batch: (y_hat [B,3,S,S], total loss, detached loss terms)."""
        codes = self.model.encode(batch["source"])
        y_hat = self.model.decode(codes, resize=True)
        loss, terms = self.loss(y_hat, batch["target"], codes=codes, w_avg=self.model.w_avg)
        return y_hat, loss, terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, loss, terms = self.reconstruct(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False,
                      batch_size=len(batch["source"]))
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(batch["source"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.preview = []
        with torch.no_grad():
            self._w_avg_image = self.model.decode(self.model.w_avg[None], resize=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        y = batch["target"]
        y_hat, _, terms = self.reconstruct(batch)
        values = {**terms, **self.loss.metrics(y_hat, y),
                  "baseline_l2": F.mse_loss(self._w_avg_image.float().expand_as(y), y.float())}
        self.log_dict({f"val/{k}": v for k, v in values.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=len(y))
        self._collect_preview(batch["source"], y, y_hat)

    def _collect_preview(self, source: torch.Tensor, target: torch.Tensor, output: torch.Tensor) -> None:
        missing = self.config.log.n_images - len(self.preview)
        for row in zip(source[:missing], target[:missing], output[:missing]):
            self.preview.append(torch.stack([t.detach().float().cpu() for t in row]))

    # -- optimiser and checkpoints ------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model.encoder.parameters(), self.config.optim)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen nets (rebuilt from the config) and record the resolved config."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        checkpoint[CONFIG_KEY] = to_dict(self.config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model; put the (rebuilt) frozen nets back for strict loading."""
        saved = checkpoint.get(CONFIG_KEY, {}).get("model")
        current = to_dict(self.config.model)
        if saved is not None and saved != current:
            key = _first_difference(saved, current, "model")
            raise ConfigError(f"cannot resume: the checkpoint was trained with a different '{key}' "
                              f"than this config; use the run's config.yaml or start a new output_dir")
        own = self.state_dict()
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k.startswith(FROZEN_PREFIXES)})


def _first_difference(a: Any, b: Any, prefix: str) -> str:
    """The dotted key of the first value that differs between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
    return prefix

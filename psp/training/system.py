"""The Lightning training system: a trainable encoder of any family against a frozen generator and loss nets.

Only ``model.encoder`` (and, with ``loss.w_discriminator > 0``, the latent discriminator) learns.
The generator (``model.generator``) and the loss networks (LPIPS, ArcFace, under ``loss``) are
frozen: no gradients, kept in eval mode even when Lightning calls ``.train()`` after each
validation, absent from the optimiser and from training checkpoints (they are rebuilt from the
config, so a checkpoint holds only what training changes).

Families (``model.family``, psp.models.families): pSp and e4e encode in one pass; e4e adds the
delta regulariser and progressive unlocking of the rows (``psp.training.e4e``); the ReStyle
families run ``train.iterations_per_batch`` passes per batch, as the original trains: from the
average image and ``w_avg``, each pass ``c_t = E([x, y_{t-1}]) + c_{t-1}`` with the previous image
and codes detached, a loss and a backward pass at each, one optimiser step per batch. ReStyle and
the discriminator use Lightning's manual optimisation (a backward per pass keeps one pass's
activations in memory at a time, as the original does); plain pSp / e4e keep automatic optimisation.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from psp.config import Config, ConfigError, to_dict
from psp.models.families import is_iterative
from psp.models.model import PSP
from psp.models.nets.latent_discriminator import LatentDiscriminator
from psp.models.official import load_arcface
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
from psp.training.losses import PSPLoss
from psp.training.optim import build_optimizer

# State-dict prefixes of the frozen networks; training checkpoints leave them out.
FROZEN_PREFIXES = ("model.generator.", "loss.")
CONFIG_KEY = "psp_config"
STATE_KEY = "psp_training_state"  # the discriminator's code pools
PROGRESSIVE_FAMILIES = ("e4e", "restyle_e4e")


def uses_manual_optimization(config: Config) -> bool:
    """Whether training needs Lightning's manual optimisation: several backward passes per batch
    (ReStyle) or a second optimiser (the latent discriminator)."""
    return is_iterative(config.model.family) or config.loss.w_discriminator > 0


def needs_unused_parameter_search(config: Config) -> bool:
    """Whether some parameters get no gradient in a backward pass (DDP must be told): e4e stages
    leave the locked rows' style blocks out, and the discriminator and the encoder have separate
    backward passes."""
    return config.model.family in PROGRESSIVE_FAMILIES or config.loss.w_discriminator > 0


def w_plus_spread(codes: torch.Tensor) -> torch.Tensor:
    """Mean distance of the W+ rows from their mean, ``mean_b mean_j ||c[b, j] - mean_j c[b, j]||_2``:
    codes [B, n_styles, D] -> scalar. 0 for a code of W (every row the same), as e4e aims for."""
    return (codes - codes.mean(1, keepdim=True)).norm(dim=2).mean()


class PSPSystem(L.LightningModule):
    """Encoder training: ``y_hat = G(codes)`` at the encoder input size, ``codes`` as the family makes them.

    Batches are dicts with ``source`` and ``target`` ([B, 3, S, S] in [-1, 1], S =
    ``model.encoder.input_size``). Logged keys: ``train/<term>`` and ``val/<term>`` for every loss
    term, the metrics of :meth:`PSPLoss.metrics`, ``val/baseline_l2`` (L2 of the w_avg image
    against the target, the score of an encoder that always answers "average"), ``val/w_plus_spread``
    (:func:`w_plus_spread` of the codes), for ReStyle ``val/l2_iter_<t>`` (the L2 after pass t), with
    the discriminator ``discriminator_loss``, ``d_real_loss``, ``d_fake_loss`` (and ``train/r1``).
    After each validation :attr:`preview` holds up to ``log.n_images`` rows (source, target, output;
    ReStyle: the output of every pass).

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
        self.passes = config.train.iterations_per_batch if self.model.is_iterative else 1
        self.automatic_optimization = not uses_manual_optimization(config)
        self.discriminator: LatentDiscriminator | None = None
        if config.loss.w_discriminator > 0:
            d = config.discriminator
            self.discriminator = LatentDiscriminator(self.model.generator.style_dim, d.layers)
            self.discriminator.requires_grad_(False)  # on only for its own step
            self.real_pool = LatentCodesPool(d.pool_size, seed=config.train.seed)
            self.fake_pool = LatentCodesPool(d.pool_size, seed=config.train.seed + 1)
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

    # -- e4e stage ----------------------------------------------------------------------------

    @property
    def stage(self) -> int | None:
        """The encoder's current e4e stage (None: every row; always None for pSp and ReStyle-pSp)."""
        return getattr(self.model.encoder, "progressive_stage", None)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        t = self.config.train
        if self.model.family in PROGRESSIVE_FAMILIES and t.progressive_start is not None:
            self.model.encoder.set_progressive_stage(
                progressive_stage(self.global_step, self.model.n_styles, t.progressive_start, t.progressive_every))

    # -- passes and losses --------------------------------------------------------------------

    def _loss(self, y_hat: torch.Tensor, y: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The pSp objective plus the family's terms (delta regulariser, adversarial term)."""
        loss, terms = self.loss(y_hat, y, codes=codes, w_avg=self.model.w_avg)
        weights, n_styles, stage = self.config.loss, self.model.n_styles, self.stage
        if weights.delta_norm > 0 and stage is not None:
            delta = delta_loss(codes, delta_rows(self.model.family, stage, n_styles))
            loss = loss + weights.delta_norm * delta
            terms["loss_delta"] = delta.detach()
        if self.discriminator is not None:
            adversarial = adversarial_loss(self.discriminator, codes, discriminated_rows(stage, n_styles))
            loss = loss + weights.w_discriminator * adversarial
            terms["loss_adversarial"] = adversarial.detach()
        terms["loss"] = loss.detach()
        return loss, terms

    def encoder_passes(self, batch: dict) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]]:
        """The encoder passes on a batch, lazily: (codes [B,n_styles,D], y_hat [B,3,S,S], loss, terms)
        per pass; one for pSp / e4e, ``self.passes`` for ReStyle (each from the detached previous
        image and codes, so a backward pass per item reaches that pass alone)."""
        x, y = batch["source"], batch["target"]
        if not self.model.is_iterative:
            codes = self.model.encode(x)
            y_hat = self.model.decode(codes, resize=True)
            yield (codes, y_hat, *self._loss(y_hat, y, codes))
            return
        with torch.no_grad():
            images, codes = self.model.average_image(), self.model.w_avg[None]
        for _ in range(self.passes):
            codes = self.model.encode_step(x, images.detach(), codes.detach())
            y_hat = self.model.decode(codes, resize=True)
            yield (codes, y_hat, *self._loss(y_hat, y, codes))
            images = y_hat

    def reconstruct(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """All passes on a batch (no backward): (final y_hat [B,3,S,S], final loss, final detached terms)."""
        for _, y_hat, loss, terms in self.encoder_passes(batch):
            pass
        return y_hat, loss, terms

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch_size = len(batch["source"])
        if self.automatic_optimization:
            _, loss, terms = self.reconstruct(batch)
        else:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            if self.discriminator is not None:
                self.log_dict({f"train/{k}": v for k, v in self._discriminator_step(batch, optimizers[1]).items()},
                              batch_size=batch_size)
            encoder_optimizer = optimizers[0]
            encoder_optimizer.zero_grad()
            for _, _, loss, terms in self.encoder_passes(batch):
                self.manual_backward(loss)  # gradients add up over the passes, as in ReStyle
            self.clip_gradients(encoder_optimizer, gradient_clip_val=self.config.optim.grad_clip or None)
            encoder_optimizer.step()
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, batch_size=batch_size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        return loss

    def _first_pass_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of the first encoder pass (what the discriminator judges), no gradient."""
        with torch.no_grad():
            if not self.model.is_iterative:
                return self.model.encode(x)
            return self.model.encode_step(x, self.model.average_image(), self.model.w_avg[None])

    def _real_and_fake(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real codes mapping(z) [B, D] and the encoder's unlocked rows [B, D], each through its pool."""
        generator = self.model.generator
        # Seeded by (seed, rank, step): DDP ranks draw different codes, a resumed run the same ones.
        seed = hash((self.config.train.seed, self.global_rank, self.global_step, self.training)) & (2**63 - 1)
        z = torch.randn(len(x), generator.style_dim, generator=torch.Generator().manual_seed(seed)).to(x.device)
        with torch.no_grad():
            real = generator.get_latent(z)
        rows = discriminated_rows(self.stage, self.model.n_styles)
        fake = self._first_pass_codes(x)[:, rows.start:rows.stop]
        return self.real_pool.query(real), self.fake_pool.query(fake)

    def _discriminator_step(self, batch: dict, optimizer: Any) -> dict[str, torch.Tensor]:
        """One discriminator update (and, every ``discriminator.reg_every`` steps, its R1 update)."""
        d_cfg, step = self.config.discriminator, self.global_step
        # Lightning counts every optimiser step as a training step under manual optimisation; the
        # discriminator's must not advance global_step (max_steps, schedules count encoder steps).
        optimizer._on_before_step = optimizer._on_after_step = lambda: None
        self.discriminator.requires_grad_(True)
        real, fake = self._real_and_fake(batch["source"])
        loss, terms = discriminator_loss(self.discriminator(real), self.discriminator(fake))
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        terms["discriminator_loss"] = loss.detach()
        if d_cfg.r1 > 0 and step % d_cfg.reg_every == 0:
            r1 = r1_penalty(self.discriminator, real)
            optimizer.zero_grad()
            self.manual_backward(d_cfg.r1 / 2 * d_cfg.reg_every * r1)
            optimizer.step()
            terms["r1"] = r1.detach()
        self.discriminator.requires_grad_(False)
        return terms

    def on_validation_epoch_start(self) -> None:
        self.preview = []
        with torch.no_grad():
            self._w_avg_image = self.model.decode(self.model.w_avg[None], resize=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        y = batch["target"]
        values: dict[str, torch.Tensor] = {}
        outputs = []
        for t, (codes, y_hat, _, terms) in enumerate(self.encoder_passes(batch), start=1):
            outputs.append(y_hat)
            if self.model.is_iterative:
                values[f"l2_iter_{t}"] = F.mse_loss(y_hat.float(), y.float())
        values.update({**terms, **self.loss.metrics(y_hat, y), "w_plus_spread": w_plus_spread(codes.float()),
                       "baseline_l2": F.mse_loss(self._w_avg_image.float().expand_as(y), y.float())})
        if self.discriminator is not None:
            real, fake = self._real_and_fake(batch["source"])
            with torch.no_grad():
                loss, parts = discriminator_loss(self.discriminator(real), self.discriminator(fake))
            values.update(parts, discriminator_loss=loss)
        self.log_dict({f"val/{k}": v for k, v in values.items()}, on_step=False, on_epoch=True,
                      sync_dist=True, batch_size=len(y))
        self._collect_preview(batch["source"], y, outputs)

    def _collect_preview(self, source: torch.Tensor, target: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        missing = self.config.log.n_images - len(self.preview)
        for row in zip(source[:missing], target[:missing], *[o[:missing] for o in outputs]):
            self.preview.append(torch.stack([t.detach().float().cpu() for t in row]))

    # -- optimiser and checkpoints ------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        encoder = build_optimizer(self.model.encoder.parameters(), self.config.optim)
        if self.discriminator is None:
            return encoder
        return [encoder, torch.optim.Adam(self.discriminator.parameters(), lr=self.config.discriminator.lr)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen nets (rebuilt from the config), record the resolved config and the
        discriminator's code pools (so a resumed run continues them)."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        checkpoint[CONFIG_KEY] = to_dict(self.config)
        if self.discriminator is not None:
            checkpoint[STATE_KEY] = {"real_pool": self.real_pool.state_dict(), "fake_pool": self.fake_pool.state_dict()}

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
        extra = checkpoint.get(STATE_KEY)
        if self.discriminator is not None and extra is not None:
            device = self.model.w_avg.device
            self.real_pool.load_state_dict(extra["real_pool"], device)
            self.fake_pool.load_state_dict(extra["fake_pool"], device)


def _first_difference(a: Any, b: Any, prefix: str) -> str:
    """The dotted key of the first value that differs between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
    return prefix

"""PSP: the inversion model (encoder + frozen StyleGAN2 generator + average latent), of any family.

    codes  = E(x) + w_avg                     x [B, 3, S, S] in [-1, 1] -> [B, n_styles, style_dim]
    images = G([codes], input_is_latent=True, randomize_noise=False), average-pooled to S x S

(pSp and e4e; ReStyle iterates residual passes, psp.models.families.)

Two file formats load through `PSP.from_checkpoint`:
- official pSp / e4e / ReStyle files: {"state_dict": {"encoder.*", "decoder.*"}, "opts": {...},
  "latent_avg": ...} (psp.models.released);
- our inference file (written by `PSP.save`):
  {"format": "psp-toolkit/inference", "version": 1, "config": <model config dict, with the family>,
   "encoder": <state dict, our names>, "w_avg": [n_styles, style_dim] or [style_dim],
   "generator": <rosinality-named state dict> or None, "generator_ref": {"path", "sha256"} or None,
   "progressive_stage": e4e stage or None (absent in older files: None, every row)}.
"""
import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from psp.errors import CheckpointError, ConfigError
from psp.config import (
    EncoderConfig,
    GeneratorConfig,
    ModelConfig,
    model_config_from_dict,
    model_config_to_dict,
    n_styles_for,
)
from psp.io.atomic import atomic_torch_save
from psp.models.families import ENCODER_CLASSES, FamilyEncoding, is_iterative
from psp.models.inference import InferenceModel
from psp.models.generated import estimate_w_avg, resize_generated, scale_to_image_range
from psp.models.official import from_official
from psp.models.released import released_opts, released_spec
from psp.models.nets.pyramid import GradualStyleEncoder
from psp.models.nets.resnet import ResNet
from stylegan2 import Generator, load_generator, safe_load, sha256_file
from stylegan2.delta import GeneratorDelta, apply_delta, load_delta
from stylegan2.loader import build_generator, infer_generator_config

FORMAT = "psp-toolkit/inference"
FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


def build_encoder(enc_cfg: EncoderConfig, n_styles: int, style_dim: int, load_init: bool = True,
                  family: str = "psp") -> GradualStyleEncoder:
    """The encoder of `family` (psp.models.families.ENCODER_CLASSES) described by a `model.encoder`
    config section: a GradualStyleEncoder or one of its e4e / ReStyle subclasses.

    With `load_init` and `enc_cfg.init` set, the backbone starts from the ArcFace IR-SE-50 weights
    (as pSp does); for input_nc != 3 its input conv stays random (pSp) or, for ReStyle, takes the
    RGB filters in its first 3 channels (`init_backbone_from_arcface`).
    """
    backbone = ResNet(
        block=enc_cfg.block, depth=enc_cfg.depth, layers=enc_cfg.layers, widths=enc_cfg.widths,
        attention=enc_cfg.attention, stem=enc_cfg.stem, anti_alias=enc_cfg.anti_alias, act=enc_cfg.act,
        expansion=enc_cfg.expansion, se_reduction=enc_cfg.se_reduction, in_chans=enc_cfg.input_nc,
    )
    encoder = ENCODER_CLASSES[family](backbone, n_styles, style_dim, enc_cfg.input_size)
    if load_init and enc_cfg.init is not None:
        init_backbone_from_arcface(backbone, enc_cfg.init, rgb_first=is_iterative(family))
    return encoder


def init_backbone_from_arcface(backbone: ResNet, path: PathLike, rgb_first: bool = False) -> None:
    """Copy `model_ir_se50.pth`'s input layer and body into `backbone` (pSp's encoder init).

    The recogniser head (`output_layer`) is not part of the encoder. When the backbone does not take
    3 channels the input layer is skipped (pSp does the same for label maps), unless `rgb_first`
    (ReStyle's init: the whole input layer is copied, its conv drawn from N(0, 1) with the RGB
    filters in the first 3 input channels).
    """
    state = safe_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected an ArcFace state dict, got {type(state).__name__}")
    in_chans = backbone.stem.conv.in_channels
    skip = () if in_chans == 3 else ("input_layer.0.",) if rgb_first else ("input_layer.",)
    weights = from_official(state, backbone, source=f"model.encoder.init={path}", ignore=("output_layer.", *skip))
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith("stem.") for k in missing), (missing, unexpected)
    if rgb_first and in_chans > 3:
        rgb = state["input_layer.0.weight"]
        with torch.no_grad():
            conv = backbone.stem.conv.weight
            conv.copy_(torch.randn_like(conv))
            conv[:, :3] = rgb


def _expand_w_avg(value: Any, n_styles: int, style_dim: int, source: str) -> torch.Tensor:
    """An average latent [style_dim], [1, style_dim] or [n_styles, style_dim] as [n_styles, style_dim]."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{source}: the average latent must be a tensor, got {type(value).__name__}")
    value = value.detach().float().cpu()
    if value.dim() == 2 and value.shape[0] == 1:
        value = value[0]
    if value.dim() == 1 and value.shape[0] == style_dim:
        return value.expand(n_styles, style_dim).clone()
    if tuple(value.shape) == (n_styles, style_dim):
        return value.clone()
    raise CheckpointError(f"{source}: the average latent has shape {list(value.shape)}, expected "
                     f"[{style_dim}] or [{n_styles}, {style_dim}]")


def _generator_kwargs(gen_cfg: GeneratorConfig) -> dict:
    return dict(size=gen_cfg.size, style_dim=gen_cfg.style_dim, n_mlp=gen_cfg.n_mlp,
                channel_multiplier=gen_cfg.channel_multiplier, channel_max=gen_cfg.channel_max,
                conv_clamp=gen_cfg.conv_clamp)


def _with_nvidia_generator(model_cfg: ModelConfig) -> tuple[ModelConfig, Optional[tuple]]:
    """An NVIDIA ``.pkl`` checkpoint fixes the generator's shape: its size, widths, depth and clamp
    replace the config's (so the encoder gets the matching n_styles and pyramid). Returns the
    config and, for a ``.pkl``, the loaded ``(generator, w_avg)`` (so the file is read once)."""
    gen_cfg = model_cfg.generator
    if gen_cfg.checkpoint is None or not gen_cfg.checkpoint.endswith(".pkl"):
        return model_cfg, None
    generator, w_avg = load_generator(gen_cfg.checkpoint)
    found = infer_generator_config(generator.state_dict(), source=gen_cfg.checkpoint)
    found["channel_max"] = found["channel_max"] or 512
    found["conv_clamp"] = generator.conv1.conv_clamp
    return dataclasses.replace(model_cfg, generator=dataclasses.replace(gen_cfg, **found)), (generator, w_avg)


def _load_rosinality(gen_cfg: GeneratorConfig) -> tuple[Generator, Optional[torch.Tensor]]:
    """`model.generator.checkpoint` as a Generator matching the config, and its latent_avg or None."""
    path = gen_cfg.checkpoint
    generator, latent_avg = load_generator(path, size=gen_cfg.size, channel_multiplier=gen_cfg.channel_multiplier,
                                           channel_max=gen_cfg.channel_max)
    if generator.conv1.conv_clamp != gen_cfg.conv_clamp:
        raise ConfigError(f"config key 'model.generator.conv_clamp' is {gen_cfg.conv_clamp} "
                          f"but {path} has {generator.conv1.conv_clamp}")
    found = infer_generator_config(generator.state_dict(), source=path)
    for key in ("style_dim", "n_mlp"):
        if found[key] != getattr(gen_cfg, key):
            raise ConfigError(f"config key 'model.generator.{key}' is {getattr(gen_cfg, key)} "
                             f"but {path} has {found[key]}")
    return generator, latent_avg


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


class PSP(FamilyEncoding, nn.Module):
    """Encoder + generator + average latent, of any family (config.family; psp.models.families).

    Attributes:
        config: the `model` config section (ModelConfig) this model was built from.
        encoder: GradualStyleEncoder (or its e4e / ReStyle subclass), x [B, input_nc, S, S] -> W+
            offsets [B, n_styles, style_dim] (ReStyle: the residual on the current codes).
        generator: stylegan2.Generator (rosinality names).
        w_avg: buffer [n_styles, style_dim], the average latent added to the encoder output.
        input_size: S, the encoder's input side; also the side `decode(resize=True)` pools to.
        n_styles: W+ rows. start_from_latent_avg: whether `encode` adds w_avg (pSp, e4e; ReStyle
            always starts from it).
        family, is_iterative, default_iterations: see psp.models.families.FamilyEncoding.
        generator_ref: {"path", "sha256"} of the generator file when loaded from a referencing file.
    """

    def __init__(self, config: ModelConfig, encoder: GradualStyleEncoder, generator: Generator,
                 w_avg: torch.Tensor, generator_ref: Optional[dict] = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.generator = generator
        self.n_styles = encoder.n_styles
        self.input_size = encoder.input_size
        self.start_from_latent_avg = config.start_from_latent_avg
        self.generator_ref = generator_ref
        if type(encoder) is not ENCODER_CLASSES[config.family]:
            raise ValueError(f"a {config.family} model needs a {ENCODER_CLASSES[config.family].__name__}, "
                             f"got {type(encoder).__name__}")
        if generator.n_latent != self.n_styles:
            raise ValueError(f"the encoder makes {self.n_styles} W+ rows but a {generator.size}px generator "
                             f"uses {generator.n_latent}")
        self.register_buffer("w_avg", _expand_w_avg(w_avg, self.n_styles, generator.style_dim, "w_avg"))

    # ------------------------------------------------------------------ inference
    # encode(x, iterations=None), encode_iterations, encode_step, average_image: FamilyEncoding.

    def decode(self, codes: torch.Tensor, resize: bool = True,
               delta: Union[None, PathLike, GeneratorDelta] = None) -> torch.Tensor:
        """W+ codes [B, n_styles, style_dim] -> images [B, 3, S, S] (resize=False: [B, 3, G.size, G.size]).

        Deterministic: the generator's stored noise maps are used (randomize_noise=False). The
        resize is an adaptive average pool, as pSp's face_pool. ``delta``: a generator delta (or
        its file, ``infer.py --tune-generator``) to draw with the tuned generator; the model's own
        generator is not changed (for many calls, build the tuned copy once with
        ``stylegan2.delta.apply_delta``).
        """
        generator = self.generator
        if delta is not None:
            loaded = delta if isinstance(delta, GeneratorDelta) else load_delta(delta)
            generator = apply_delta(self.generator, loaded, source=str(delta) if loaded is not delta else "delta")
        images, _ = generator([codes], input_is_latent=True, randomize_noise=False)
        return resize_generated(images, self.input_size) if resize else images

    def forward(self, x: torch.Tensor, resize: bool = True, return_latents: bool = False):
        """decode(encode(x)): images [B, 3, S, S], and the codes too when return_latents."""
        codes = self.encode(x)
        images = self.decode(codes, resize=resize)
        return (images, codes) if return_latents else images

    def for_inference(self, channels_last: bool = True) -> InferenceModel:
        """The fast, frozen form of this model (:class:`psp.models.inference.InferenceModel`).

        Works on a copy of the encoder, so this model stays trainable and saveable; to avoid the
        copy when loading a file for inference, use ``InferenceModel.from_checkpoint``.
        """
        return InferenceModel.from_model(self, channels_last=channels_last, copy_encoder=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, model_cfg: ModelConfig, device: Union[str, torch.device] = "cpu") -> "PSP":
        """A model for training: encoder (optionally ArcFace-initialised), generator from
        `model.generator.checkpoint` (or seeded random, its output scaled to photo statistics by
        `scale_to_image_range`), w_avg per `model.w_avg.source`."""
        model_cfg, loaded = _with_nvidia_generator(model_cfg)
        gen_cfg = model_cfg.generator
        n_styles = model_cfg.n_styles or n_styles_for(gen_cfg.size)
        encoder = build_encoder(model_cfg.encoder, n_styles, gen_cfg.style_dim, family=model_cfg.family)
        latent_avg = None
        if loaded is not None:
            generator, latent_avg = loaded
        elif gen_cfg.checkpoint is not None:
            generator, latent_avg = _load_rosinality(gen_cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(gen_cfg.seed)
                generator = Generator(**_generator_kwargs(gen_cfg))
            scale_to_image_range(generator, seed=gen_cfg.seed)  # photo statistics: pixels in [-1, 1]
        source = model_cfg.w_avg.source
        if source == "checkpoint" and latent_avg is None:
            raise ConfigError(f"config key 'model.w_avg.source' is 'checkpoint' but {gen_cfg.checkpoint} "
                             "holds no latent_avg; use source=estimate or auto")
        if source == "estimate" or latent_avg is None:
            latent_avg = estimate_w_avg(generator, model_cfg.w_avg.n_samples, seed=gen_cfg.seed)
        w_avg = _expand_w_avg(latent_avg, n_styles, gen_cfg.style_dim, gen_cfg.checkpoint or "w_avg")
        model = cls(model_cfg, encoder, generator.eval(), w_avg)
        return model.to(device)

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: Union[str, torch.device] = "cpu",
                        map_location: Any = None) -> "PSP":
        """An official pSp file or one of ours, in eval mode on `device`.

        Tensors are read onto `map_location` (default: the CPU), never onto the `opts['device']`
        recorded in pSp files.
        """
        source = os.fspath(path)
        ckpt = safe_load(path, map_location=map_location if map_location is not None else "cpu")
        if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
            model = cls._from_inference_file(ckpt, source)
        elif isinstance(ckpt, dict) and "state_dict" in ckpt and "opts" in ckpt:
            model = cls._from_official_file(ckpt, source)
        else:
            keys = ", ".join(map(str, list(ckpt)[:6])) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(f"{source}: not a pSp model file (expected format '{FORMAT}' or a pSp "
                             f"'state_dict' + 'opts'; found {keys})")
        return model.to(device).eval()

    @classmethod
    def _from_inference_file(cls, ckpt: dict, source: str) -> "PSP":
        version = ckpt.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: inference format version {version!r} is not supported "
                             f"(expected {FORMAT_VERSION})")
        for key in ("config", "encoder", "w_avg"):
            if key not in ckpt:
                raise CheckpointError(f"{source}: missing entry '{key}'")
        cfg = model_config_from_dict(ckpt["config"], source=source)
        gen_cfg = cfg.generator
        n_styles = cfg.n_styles or n_styles_for(gen_cfg.size)
        encoder = build_encoder(cfg.encoder, n_styles, gen_cfg.style_dim, load_init=False, family=cfg.family)
        _load_strict(encoder, ckpt["encoder"], f"{source} (encoder)")
        ref = ckpt.get("generator_ref")
        if ckpt.get("generator") is not None:
            generator = Generator(**_generator_kwargs(gen_cfg))
            _load_strict(generator, ckpt["generator"], f"{source} (generator)")
        elif ref is not None:
            generator = _load_referenced_generator(ref, gen_cfg, source)
        else:
            raise CheckpointError(f"{source}: holds neither 'generator' weights nor a 'generator_ref'")
        stage = ckpt.get("progressive_stage")
        if stage is not None:
            if not hasattr(encoder, "set_progressive_stage"):
                raise CheckpointError(f"{source}: 'progressive_stage' is set but a {cfg.family} encoder has none")
            encoder.set_progressive_stage(int(stage))
        return cls(cfg, encoder, generator, _expand_w_avg(ckpt["w_avg"], n_styles, gen_cfg.style_dim, source), ref)

    @classmethod
    def _from_official_file(cls, ckpt: dict, source: str) -> "PSP":
        """A pSp, e4e, ReStyle-pSp or ReStyle-e4e file; the family comes from its opts
        (psp.models.released documents the facts). Entries besides state_dict, opts and
        latent_avg (e4e's discriminator and optimiser state) are training state and not read."""
        opts = released_opts(ckpt, source)
        spec = released_spec(opts, ckpt.get("latent_avg") is not None, source)
        state = ckpt["state_dict"]
        encoder_sd = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        decoder_sd = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
        other = [k for k in state if not k.startswith(("encoder.", "decoder."))]
        if other:
            raise CheckpointError(f"{source}: unexpected key '{other[0]}' in the {spec.family} state_dict")

        gen_found = infer_generator_config(decoder_sd, source=f"{source} (decoder)")
        output_size = spec.output_size or gen_found["size"]
        n_styles = n_styles_for(output_size)
        if opts.get("n_styles", n_styles) != n_styles:
            raise CheckpointError(f"{source}: opts['n_styles']={opts['n_styles']} disagrees with "
                             f"output_size {output_size}")
        generator = build_generator(decoder_sd, size=output_size, source=f"{source} (decoder)")
        start = spec.start_from_latent_avg
        if start and ckpt.get("latent_avg") is None:
            raise CheckpointError(f"{source}: opts['start_from_latent_avg'] is set but the file has no "
                             "latent_avg")
        style_dim = gen_found["style_dim"]
        latent_avg = ckpt.get("latent_avg")
        # Without a stored average (encoding does not use one then), estimate one for previews
        # and the W-norm loss; 10k mapping samples take about a second on a CPU.
        w_avg = estimate_w_avg(generator, 10_000) if latent_avg is None else latent_avg

        cfg = ModelConfig(
            encoder=EncoderConfig(block="ir_se", depth=50, input_nc=spec.input_nc, input_size=256),
            generator=GeneratorConfig(size=output_size, style_dim=style_dim, n_mlp=gen_found["n_mlp"],
                                      channel_multiplier=gen_found["channel_multiplier"],
                                      channel_max=gen_found["channel_max"] or 512),
            start_from_latent_avg=start,
            family=spec.family,
        )
        encoder = build_encoder(cfg.encoder, n_styles, style_dim, load_init=False, family=spec.family)
        encoder.load_state_dict(from_official(encoder_sd, encoder, source=f"{source} (encoder)"), strict=True)
        return cls(cfg, encoder, generator, _expand_w_avg(w_avg, n_styles, style_dim, f"{source} (latent_avg)"))

    # ------------------------------------------------------------------ saving
    def save(self, path: PathLike, embed_generator: bool = True) -> None:
        """Write our inference file atomically (temp file + rename).

        embed_generator=False stores a reference to `model.generator.checkpoint` (path + sha256)
        instead of the generator weights.
        """
        path = Path(path)
        ref = None
        if not embed_generator:
            ref = self.generator_ref or self._reference_generator_file()
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": model_config_to_dict(self.config),
            "encoder": _cpu_state(self.encoder),
            "w_avg": self.w_avg.detach().cpu().clone(),
            "generator": _cpu_state(self.generator) if embed_generator else None,
            "generator_ref": ref,
            "progressive_stage": getattr(self.encoder, "progressive_stage", None),
        }
        atomic_torch_save(payload, path)

    def _reference_generator_file(self) -> dict:
        checkpoint = self.config.generator.checkpoint
        if checkpoint is None:
            raise ValueError("cannot save with embed_generator=False: model.generator.checkpoint is null "
                             "(a random or official-file generator has no file to reference)")
        return {"path": str(Path(checkpoint).resolve()), "sha256": sha256_file(checkpoint)}


def _load_strict(module: nn.Module, state_dict: Any, source: str) -> None:
    """load_state_dict(strict=True) with a one-line ValueError naming the file and first bad key."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{source}: expected a state dict, got {type(state_dict).__name__}")
    expected = module.state_dict()
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key '{key}'")
    for key, tensor in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"{source}: missing key '{key}'")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source}: key '{key}' has shape {list(state_dict[key].shape)}, "
                             f"expected {list(tensor.shape)}")
    module.load_state_dict(state_dict, strict=True)


def _load_referenced_generator(ref: dict, gen_cfg: GeneratorConfig, source: str) -> Generator:
    """The generator file named by `generator_ref`, verified by its sha256."""
    path = ref.get("path")
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"{source}: the referenced generator file '{path}' does not exist; put it back "
                         "or re-export the model with the generator embedded")
    digest = sha256_file(path)
    if digest != ref.get("sha256"):
        raise CheckpointError(f"{source}: the referenced generator file '{path}' has sha256 {digest[:12]}..., "
                         f"expected {str(ref.get('sha256'))[:12]}... (the file changed)")
    generator, _ = _load_rosinality(GeneratorConfig(**{**vars(gen_cfg), "checkpoint": path}))
    return generator

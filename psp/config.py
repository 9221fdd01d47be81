"""The one typed configuration schema, composed per command, and its loader.

The schema is a set of shared sections (``model``, ``data``, ``loss``, ``lpips``, ``optim``,
``train``, ``infer``, ``refine``, ``evaluate``, ``ops``, ``log``); each command reads the sections
listed in :data:`COMMAND_SECTIONS` and nothing else (``psp infer`` never looks at ``train.*``).
Precedence: schema defaults <- YAML files (in order) <- ``a.b=c`` command-line overrides. A YAML
file may hold sections of other commands (one ``ffhq.yaml`` for training and inversion); they are
ignored, while an override of a section the command does not read is an error. The result is a
tree of real dataclass objects (``Config``), checked field by field and across fields. Every user
mistake becomes a :class:`ConfigError` whose message is one line naming the full key and the fix;
the CLIs print it and exit with code 2 before building or writing anything. Whether the files a
config names exist is checked when a command runs (:func:`check_paths`), not when it is loaded,
so ``--print-config`` works before anything is downloaded.

This is the only module that uses OmegaConf.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from psp.errors import ConfigError, first_line

CONFIG_VERSION = 1
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def _f(default: Any, help: str, choices: tuple | None = None, factory: Any = None):
    """A schema field with its help text (shown in the generated reference, docs/configuration.md) and allowed values."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------
# Schema


@dataclass
class EncoderConfig:
    block: str = _f("ir_se", "residual block type", ("ir", "ir_se", "basic", "bottleneck"))
    depth: int = _f(50, "depth preset: 50/100/152 (ir, ir_se), 18/34 (basic), 50/101 (bottleneck)")
    layers: Optional[List[int]] = _f(None, "blocks per stage, overrides depth (e.g. [1,1,1,1])")
    widths: List[int] = _f(None, "channels of the four stages", factory=lambda: [64, 128, 256, 512])
    attention: str = _f("none", "channel attention (ir_se implies se)", ("none", "se", "eca"))
    stem: str = _f("conv", "input stem", ("conv", "deep", "space_to_depth"))
    anti_alias: bool = _f(False, "BlurPool before strided convolutions")
    act: str = _f("prelu", "activation inside blocks", ("prelu", "relu", "silu"))
    expansion: int = _f(4, "bottleneck expansion factor")
    se_reduction: int = _f(16, "SE reduction: the squeezed width is channels // se_reduction")
    input_nc: int = _f(3, "input channels")
    input_size: int = _f(256, "side of the (square) encoder input in pixels")
    init: Optional[str] = _f(None, "ArcFace IR-SE-50 file (model_ir_se50.pth) to initialise the body")


@dataclass
class GeneratorConfig:
    size: int = _f(1024, "output side of the StyleGAN2 generator (power of two)")
    style_dim: int = _f(512, "W dimension")
    n_mlp: int = _f(8, "mapping network depth")
    channel_multiplier: int = _f(2, "rosinality channel multiplier (2 = config-f)")
    channel_max: int = _f(512, "channel cap (512 = rosinality table; smaller for tiny demo models)")
    checkpoint: Optional[str] = _f(None, "rosinality .pt file or NVIDIA StyleGAN2-ADA .pkl (its size, "
                                         "widths and depth replace the keys above); null = randomly "
                                         "initialised (demo/tests)")
    conv_clamp: Optional[float] = _f(None, "activation clamp of the synthesis layers (NVIDIA: 256); "
                                           "null = off (rosinality); set from a .pkl checkpoint")
    seed: int = _f(0, "seed of a randomly initialised generator (checkpoint: null)")


@dataclass
class WAvgConfig:
    source: str = _f("auto", "where w_avg comes from (auto: checkpoint, else estimate)",
                     ("auto", "checkpoint", "estimate"))
    n_samples: int = _f(100000, "mapping-network samples used to estimate w_avg")


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    w_avg: WAvgConfig = field(default_factory=WAvgConfig)
    n_styles: Optional[int] = _f(None, "W+ rows; null = 2*log2(generator.size)-2 (checked if set)")
    start_from_latent_avg: bool = _f(True, "add w_avg to the encoder output (pSp default)")
    family: str = _f("psp", "encoder family (docs/families.md): psp = pyramid; e4e = w0 + per-row deltas "
                            "(codes near W, for editing); restyle_psp / restyle_e4e = iterative residual "
                            "encoders (image + current reconstruction in, encoder.input_nc = 6)",
                     ("psp", "e4e", "restyle_psp", "restyle_e4e"))
    iterations: int = _f(5, "ReStyle families: encoder passes per image at inference (the original's "
                            "default, 5); the other families encode in one pass")


@dataclass
class DataConfig:
    kind: str = _f("images", "training data", ("images", "synthetic"))
    train_dir: Optional[str] = _f(None, "folder of training source images (recursive)")
    train_target_dir: Optional[str] = _f(None, "training targets; null = same as train_dir")
    test_dir: Optional[str] = _f(None, "folder of validation source images")
    test_target_dir: Optional[str] = _f(None, "validation targets; null = same as test_dir")
    flip: bool = _f(True, "random horizontal flip for training")
    num_workers: int = _f(4, "DataLoader worker processes per device")
    n_train: int = _f(10000, "synthetic: training samples per epoch")
    n_test: int = _f(64, "synthetic: held-out validation samples")
    truncation: float = _f(1.0, "synthetic: truncation psi when sampling W")
    seed: int = _f(0, "synthetic: seed of the held-out set")


@dataclass
class LossConfig:
    l2: float = _f(1.0, "pixel L2 weight")
    lpips: float = _f(0.8, "LPIPS weight")
    id: float = _f(0.1, "identity (ArcFace) loss weight")
    id_weights: Optional[str] = _f(None, "ArcFace IR-SE-50 file (model_ir_se50.pth)")
    w_norm: float = _f(0.0, "W-norm regulariser weight")
    delta_norm: float = _f(0.0, "e4e delta regulariser weight: L2 of each unlocked row's delta from row 0, "
                                "during progressive training (e4e recipe: 2e-4)")
    w_discriminator: float = _f(0.0, "weight of the latent discriminator's adversarial loss on the codes "
                                     "(e4e recipe: 0.1; 0 = no discriminator)")


@dataclass
class DiscriminatorConfig:
    lr: float = _f(2e-5, "Adam learning rate of the latent discriminator (loss.w_discriminator > 0)")
    r1: float = _f(10.0, "R1 penalty weight on real W codes")
    reg_every: int = _f(16, "apply the R1 penalty every N steps (scaled by N, lazy regularisation)")
    pool_size: int = _f(50, "codes kept in each of the real / fake pools the discriminator trains on (0 = no pool)")
    layers: int = _f(4, "linear layers of the discriminator MLP (LeakyReLU 0.2 between them)")


@dataclass
class LPIPSConfig:
    net: str = _f("alex", "LPIPS backbone (training loss, refinement and the evaluation metric)", ("alex", "vgg"))
    weights: Optional[str] = _f(None, "local ImageNet backbone file for offline clusters; null = torch hub cache")


@dataclass
class OptimConfig:
    name: str = _f("ranger", "optimiser", ("ranger", "adam"))
    lr: float = _f(1e-4, "learning rate")
    weight_decay: float = _f(0.0, "weight decay")
    grad_clip: float = _f(0.0, "gradient-norm clip; 0 = off")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/psp", "run directory (config, checkpoints, logs, psp.pt)")
    max_steps: int = _f(500000, "optimiser steps")
    batch_size: int = _f(8, "images per device per step")
    test_batch_size: int = _f(8, "validation images per device per step")
    val_every: int = _f(5000, "validate, checkpoint and export every N steps")
    val_batches: int = _f(50, "validation batches per validation (0 = all)")
    log_every: int = _f(50, "log training losses every N steps")
    accelerator: str = _f("auto", "Lightning accelerator", ("auto", "cpu", "gpu", "cuda", "mps"))
    devices: str = _f("auto", "devices per node: auto, a count, or a list such as 0,1")
    num_nodes: int = _f(1, "nodes (SLURM/torchrun)")
    strategy: str = _f("auto", "distribution strategy", ("auto", "ddp", "ddp_spawn", "single_device"))
    precision: str = _f("32", "numeric precision", ("32", "bf16-mixed", "16-mixed"))
    seed: int = _f(0, "global seed")
    progressive_start: Optional[int] = _f(None, "e4e families: step at which row 1's delta unlocks (then one "
                                                "row every progressive_every steps); null = all rows from the start")
    progressive_every: int = _f(2000, "e4e families: steps between two row unlocks")
    iterations_per_batch: int = _f(5, "ReStyle families: encoder passes per training batch, a loss at each")


@dataclass
class InferConfig:
    checkpoint: str = _f("checkpoints/psp_ffhq_encode.pt", "model file: official pSp, e4e or ReStyle file, or our psp.pt")
    batch_size: int = _f(4, "images per forward pass")
    format: str = _f("pt", "latent file format", ("pt", "npy"))
    num_workers: int = _f(2, "image-decoding worker processes")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _f("fp32", "inference precision (bf16 on CPU or GPU, fp16 on GPU only)", ("fp32", "bf16", "fp16"))
    save_images: bool = _f(False, "also write reconstructions")
    side_by_side: bool = _f(False, "reconstructions as input | output pairs")
    align: bool = _f(False, "FFHQ-style face alignment before encoding")
    iterations: Optional[int] = _f(None, "ReStyle models: encoder passes per image (null: the model's "
                                         "model.iterations, 5 for the released files); others: null or 1")
    compile: bool = _f(False, "torch.compile the encoder and generator (the first batches pay the compile time)")
    shard_timeout: float = _f(120.0, "seconds a rank may go without a heartbeat before rank 0 stops waiting for it")


@dataclass
class RefineConfig:
    steps: int = _f(0, "optimise W+ from the encoder's answer for N Adam steps (0 = off)")
    lr: float = _f(0.01, "Adam learning rate of the refinement")
    l2: float = _f(1.0, "refinement L2 weight")
    lpips: float = _f(0.8, "refinement LPIPS weight (0: pixels only, no LPIPS weights needed)")


@dataclass
class TuneConfig:
    steps: int = _f(0, "pivotal tuning: fine-tune a copy of the generator for N Adam steps on the image(s) from their final codes (0 = off; PTI: 350)")
    per: str = _f("image", "one tuned generator per image, or one per folder of inputs (video frames, one person's photos)", ("image", "folder"))
    lr: float = _f(3e-4, "Adam learning rate of the generator weights (PTI: 3e-4)")
    l2: float = _f(1.0, "image L2 weight (PTI: 1)")
    lpips: float = _f(1.0, "image LPIPS weight, also used by the locality term (0: pixels only, no LPIPS weights needed; PTI: 1)")
    stop_lpips: float = _f(0.07, "stop early once every image's LPIPS is at most this (0 = never; PTI: 0.07)")
    locality: float = _f(0.1, "weight of the locality regulariser relative to the image objective (0 = off; PTI: 0.1)")
    locality_every: int = _f(1, "apply the locality regulariser every N steps (PTI: 1)")
    locality_samples: int = _f(1, "random codes per locality evaluation (PTI: 1)")
    locality_alpha: float = _f(30.0, "distance from the pivot, towards a random code, of the regularised code (PTI: 30)")
    locality_truncation: float = _f(0.5, "truncation of the random codes towards w_avg (PTI: 0.5)")
    rank: int = _f(8, "rank of the saved per-layer weight deltas (0 = full, dense deltas)")


@dataclass
class EvaluateConfig:
    lpips: bool = _f(True, "measure LPIPS (false: offline without its weights; also turns refine.lpips off)")
    arcface: Optional[str] = _f(None, "ArcFace IR-SE-50 file (model_ir_se50.pth): adds the id_similarity metric")
    size: int = _f(256, "--targets/--outputs: side both images are resized to")
    seed: int = _f(1_000_000, "--synthetic: first latent seed (far from training's held-out seeds)")
    report_examples: int = _f(5, "best and worst images shown in report.png (each)")


@dataclass
class OpsConfig:
    impl: str = _f("auto", "StyleGAN2 op implementation", ("auto", "cuda", "ref"))


@dataclass
class LogConfig:
    logger: str = _f("csv", "where metrics and image grids go", ("csv", "tensorboard", "wandb", "none"))
    project: str = _f("psp", "wandb project")
    run_name: Optional[str] = _f(None, "run name; null = derived from output_dir")
    n_images: int = _f(4, "rows in each validation image grid")


@dataclass
class Config:
    config_version: int = _f(CONFIG_VERSION, "schema version (for migrations)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    log: LogConfig = field(default_factory=LogConfig)


# The sections each command reads. Sections outside a command's list keep their defaults there.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("model", "data", "loss", "lpips", "discriminator", "optim", "train", "ops", "log"),
    "infer": ("infer", "refine", "tune", "lpips", "ops"),
    "render": ("infer", "ops"),
    "evaluate": ("infer", "refine", "tune", "lpips", "evaluate", "ops"),
    "model": ("model",),  # a model description alone (benchmarks, tests, the Python API)
}

# Keys that moved, for a helpful error when an older YAML file or script names them.
MOVED_KEYS = {"infer.refine_steps": "refine.steps", "infer.refine_lr": "refine.lr",
              "infer.refine_l2": "refine.l2", "infer.refine_lpips": "refine.lpips",
              "loss.lpips_net": "lpips.net", "loss.lpips_weights": "lpips.weights",
              "infer.tune_steps": "tune.steps", "infer.tune_lpips": "tune.lpips", "infer.tune_per": "tune.per"}


# ----------------------------------------------------------------------------------------------
# Schema introspection


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _section_type(path: list[str]) -> type | None:
    """The dataclass at a dotted path (``["model", "encoder"]``), or None."""
    tp: Any = Config
    for part in path:
        hints = typing.get_type_hints(tp)
        if part not in hints or not _is_dataclass_type(hints[part]):
            return None
        tp = hints[part]
    return tp


def _field_of(full_key: str) -> tuple[dataclasses.Field, Any] | None:
    """The dataclass field and its resolved type for ``a.b.c``, or None."""
    *parents, name = full_key.split(".")
    section = _section_type(parents)
    if section is None:
        return None
    for f in dataclasses.fields(section):
        if f.name == name:
            return f, typing.get_type_hints(section)[name]
    return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(inner[0]) + " or null"
    if origin in (list, List):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def iter_fields(section: type = Config, prefix: str = ""):
    """Yield ``(full_key, type_name, default, choices, help)`` for every leaf field of the schema."""
    hints = typing.get_type_hints(section)
    for f in dataclasses.fields(section):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            yield from iter_fields(tp, key + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield key, _type_name(tp), default, f.metadata.get("choices"), f.metadata.get("help", "")


def markdown_reference() -> str:
    """The config reference table of docs/configuration.md, generated from the schema."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, choices, help in iter_fields():
        shown = "null" if default is None else yaml.safe_dump(default, default_flow_style=True).strip()
        shown = shown.removesuffix("...").strip()
        meaning = help + (" (" + " \\| ".join(choices) + ")" if choices else "")
        rows.append(f"| `{key}` | {tp} | `{shown}` | {meaning} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Loading


def resolve_config_path(name: str) -> Path:
    """A ``--config`` argument as a file: a path from the working directory, else a name in configs/."""
    direct = Path(name)
    if direct.is_file():
        return direct
    for candidate in (CONFIGS_DIR / name, CONFIGS_DIR / f"{name}.yaml", Path("configs") / name):
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.is_dir() else []
    hint = f"; available in configs/: {', '.join(known)}" if known else ""
    raise ConfigError(f"config file '{name}' not found (not a path from here, nor in configs/){hint}")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}; fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    return data


def _parse_overrides(overrides: list[str]) -> Any:
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or not key or key != key.strip():
            raise ConfigError(f"override '{item}' must look like key=value (e.g. train.batch_size=4)")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {first_line(exc)}") from None


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    """Turn an OmegaConf error into a one-line ConfigError naming the key and the fix."""
    full_key = getattr(exc, "full_key", None) or ""
    where = f" (in {source})" if source else ""
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)):
        if full_key in MOVED_KEYS:
            return ConfigError(f"config key '{full_key}'{where} is now '{MOVED_KEYS[full_key]}'; rename it")
        *parents, name = full_key.split(".") if full_key else [""]
        section = _section_type(parents)
        options = [f.name for f in dataclasses.fields(section)] if section else []
        close = difflib.get_close_matches(name, options, n=1)
        hint = f"did you mean '{'.'.join([*parents, close[0]])}'?" if close else (
            f"valid keys here: {', '.join(options)}" if options else "check the spelling")
        return ConfigError(f"unknown config key '{full_key}'{where}; {hint}")
    if isinstance(exc, ValidationError):
        found = _field_of(full_key)
        expected = _type_name(found[1]) if found else "another type"
        value = getattr(exc, "value", None)
        shown = f"{value!r}" if value is not None else "the given value"
        return ConfigError(f"config key '{full_key}'{where}: expected {expected}, got {shown}; "
                           f"set {full_key}=<{expected}>")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"config key '{full_key}' is required; set it with {full_key}=...")
    return ConfigError(f"config error at '{full_key}'{where}: {first_line(exc)}")


def _merge(base: Any, other: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None


def _sections_of(command: str) -> tuple[str, ...]:
    if command not in COMMAND_SECTIONS:
        raise ValueError(f"unknown command {command!r}; known: {', '.join(COMMAND_SECTIONS)}")
    return COMMAND_SECTIONS[command]


def _schema_sections() -> set[str]:
    hints = typing.get_type_hints(Config)
    return {f.name for f in dataclasses.fields(Config) if _is_dataclass_type(hints[f.name])}


def _for_command(data: dict, sections: tuple[str, ...]) -> dict:
    """A YAML file's content without the schema sections ``sections`` does not include."""
    other = _schema_sections() - set(sections)
    return {k: v for k, v in data.items() if k not in other}


def _check_override_sections(overrides: list[str], command: str, sections: tuple[str, ...]) -> None:
    for item in overrides:
        section = item.split("=", 1)[0].split(".", 1)[0]
        if section in _schema_sections() and section not in sections:
            raise ConfigError(f"override '{item}': the {command} command does not read the '{section}' "
                              f"section (it reads {', '.join(sections)}); drop it")


def load_config(files: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = (),
                command: str = "train") -> Config:
    """Defaults <- YAML ``files`` <- ``key=value`` ``overrides``; validated ``Config`` out.

    ``command`` (a key of :data:`COMMAND_SECTIONS`) decides which sections are read and checked;
    files named by the config are checked later, by :func:`check_paths`. Raises
    :class:`ConfigError` with a one-line message on any mistake.
    """
    sections = _sections_of(command)
    cfg = OmegaConf.structured(Config)
    for name in files:
        path = resolve_config_path(name)
        cfg = _merge(cfg, _for_command(_read_yaml(path), sections), str(path))
    if overrides:
        _check_override_sections(list(overrides), command, sections)
        cfg = _merge(cfg, _parse_overrides(list(overrides)), "command line")
    try:
        config: Config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _explain(exc, "") from None
    validate(config, command)
    return config


def to_dict(section: Any) -> dict:
    """A (sub)config dataclass as plain nested dicts and lists (for checkpoints and YAML)."""
    return dataclasses.asdict(section)


def to_yaml(config: Config, command: str = "train") -> str:
    """The sections ``command`` reads, resolved, as YAML (``--print-config``, the run's config.yaml)."""
    data = to_dict(config)
    keep = ("config_version", *_sections_of(command))
    return yaml.safe_dump({k: data[k] for k in keep}, sort_keys=False)


def model_config_from_dict(data: dict, source: str = "checkpoint") -> ModelConfig:
    """Re-validate a ``model`` section saved in a checkpoint (migrating older versions)."""
    version = data.get("config_version", CONFIG_VERSION) if isinstance(data, dict) else None
    if version is None or version > CONFIG_VERSION:
        raise ConfigError(f"{source}: model config version {version!r} is newer than this toolkit "
                          f"understands ({CONFIG_VERSION}); upgrade the toolkit")
    body = {k: v for k, v in data.items() if k != "config_version"}
    cfg = _merge(OmegaConf.structured(ModelConfig), body, source)
    try:
        model: ModelConfig = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source) from None
    _check_model(model)
    return model


def model_config_to_dict(model: ModelConfig) -> dict:
    """The ``model`` section for a checkpoint, tagged with the schema version."""
    return {"config_version": CONFIG_VERSION, **to_dict(model)}


# ----------------------------------------------------------------------------------------------
# Validation


def n_styles_for(size: int) -> int:
    """W+ rows used by a StyleGAN2 generator of side ``size``: 2*log2(size) - 2."""
    return 2 * int(math.log2(size)) - 2


def _check_choices(section: Any, prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            _check_choices(value, key + ".")
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            allowed = ", ".join(f.metadata["choices"])
            raise ConfigError(f"config key '{key}' has value {value!r}; allowed values: {allowed}")


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}' {message}")


def _check_file(path: Optional[str], key: str, what: str) -> None:
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config key '{key}': file '{path}' does not exist; {what}")


def _check_dir(path: Optional[str], key: str) -> None:
    if path is not None and not Path(path).is_dir():
        raise ConfigError(f"config key '{key}': folder '{path}' does not exist; point it at a folder of images")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_model(model: ModelConfig) -> None:
    _check_choices(model, "model.")
    gen, enc = model.generator, model.encoder
    _require(_is_power_of_two(gen.size) and gen.size >= 8, "model.generator.size",
             f"must be a power of two >= 8, got {gen.size}")
    expected = n_styles_for(gen.size)
    _require(model.n_styles is None or model.n_styles == expected, "model.n_styles",
             f"is {model.n_styles} but a {gen.size}px generator uses {expected} W+ rows; "
             f"set model.n_styles={expected} or null")
    for key in ("style_dim", "n_mlp", "channel_multiplier", "channel_max"):
        _require(getattr(gen, key) > 0, f"model.generator.{key}", "must be positive")
    _require(enc.input_size >= 32 and enc.input_size % 16 == 0, "model.encoder.input_size",
             f"must be a multiple of 16 and >= 32, got {enc.input_size}")
    _require(model.iterations >= 1, "model.iterations", f"must be >= 1, got {model.iterations}")
    restyle = model.family in ("restyle_psp", "restyle_e4e")
    _require(not restyle or enc.input_nc == 6, "model.encoder.input_nc",
             f"is {enc.input_nc} but a {model.family} encoder reads the image and its current reconstruction; "
             "set model.encoder.input_nc=6")
    _require(enc.input_nc > 0, "model.encoder.input_nc", "must be positive")
    _require(len(enc.widths) == 4 and all(w > 0 for w in enc.widths), "model.encoder.widths",
             f"must list 4 positive stage widths, got {enc.widths}")
    _require(enc.layers is None or (len(enc.layers) == 4 and all(n > 0 for n in enc.layers)),
             "model.encoder.layers", f"must list 4 positive block counts or be null, got {enc.layers}")
    _require(enc.block != "ir_se" or enc.attention in ("none", "se"), "model.encoder.attention",
             f"is {enc.attention!r} but block ir_se already uses SE; use block=ir with attention=eca")
    _require(model.w_avg.n_samples > 0, "model.w_avg.n_samples", "must be positive")
    _require(model.w_avg.source != "checkpoint" or gen.checkpoint is not None, "model.w_avg.source",
             "is 'checkpoint' but model.generator.checkpoint is null; use source=estimate or set the file")


def validate(config: Config, command: str = "train") -> None:
    """Cross-field checks of the sections ``command`` reads; raises ConfigError naming the key."""
    sections = _sections_of(command)
    _require(config.config_version <= CONFIG_VERSION, "config_version",
             f"is {config.config_version}, newer than this toolkit ({CONFIG_VERSION})")
    for section in sections:
        if section == "model":
            _check_model(config.model)
        else:
            _check_choices(getattr(config, section), section + ".")
        CHECKS.get(section, lambda _: None)(getattr(config, section))
    if command == "train":
        _check_training(config)
    if command == "infer":
        # A tuned latent names its generator delta, and only .pt latent files hold metadata.
        _require(config.tune.steps == 0 or config.infer.format == "pt", "infer.format",
                 "is npy but tune.steps > 0; tuned latents must name their delta file: use infer.format=pt")


def _positive(section: Any, prefix: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section, key)
        _require(value > 0, f"{prefix}.{key}", f"must be positive, got {value}")


def _non_negative(section: Any, prefix: str, *keys: str, hint: str = "") -> None:
    for key in keys:
        _require(getattr(section, key) >= 0, f"{prefix}.{key}", f"must be >= 0{hint}")


def _check_train(t: TrainConfig) -> None:
    _positive(t, "train", "max_steps", "batch_size", "test_batch_size", "val_every", "log_every", "num_nodes",
              "progressive_every", "iterations_per_batch")
    _require(t.progressive_start is None or t.progressive_start >= 0, "train.progressive_start",
             f"must be >= 0 or null, got {t.progressive_start}")
    _non_negative(t, "train", "val_batches")
    _require(_valid_devices(t.devices), "train.devices",
             f"is {t.devices!r}; use auto, a count such as 2, or a list such as 0,1")


def _check_data(d: DataConfig) -> None:
    _non_negative(d, "data", "num_workers")
    if d.kind == "synthetic":
        _require(d.n_train > 0 and d.n_test > 0, "data.n_train", "and data.n_test must be positive")


def _check_optim(o: OptimConfig) -> None:
    _positive(o, "optim", "lr")
    _non_negative(o, "optim", "grad_clip", hint=" (0 = off)")


def _check_loss(loss: LossConfig) -> None:
    _non_negative(loss, "loss", "l2", "lpips", "id", "w_norm", "delta_norm", "w_discriminator",
                  hint=" (0 disables the loss)")


def _check_discriminator(d: DiscriminatorConfig) -> None:
    _positive(d, "discriminator", "lr", "reg_every", "layers")
    _non_negative(d, "discriminator", "r1", "pool_size")


def _check_infer(i: InferConfig) -> None:
    _positive(i, "infer", "batch_size", "shard_timeout")
    _non_negative(i, "infer", "num_workers")
    _require(i.iterations is None or i.iterations >= 1, "infer.iterations",
             f"must be >= 1 or null, got {i.iterations}")


def _check_refine(r: RefineConfig) -> None:
    _non_negative(r, "refine", "steps", "l2", "lpips")
    _positive(r, "refine", "lr")


def _check_evaluate(e: EvaluateConfig) -> None:
    _positive(e, "evaluate", "size")
    _non_negative(e, "evaluate", "report_examples")


def _check_tune(t: TuneConfig) -> None:
    _non_negative(t, "tune", "steps", "l2", "lpips", "stop_lpips", "locality", "locality_alpha", "rank")
    _positive(t, "tune", "lr", "locality_every", "locality_samples", "locality_truncation")


CHECKS = {"train": _check_train, "data": _check_data, "optim": _check_optim, "loss": _check_loss,
          "discriminator": _check_discriminator,
          "infer": _check_infer, "refine": _check_refine, "tune": _check_tune, "evaluate": _check_evaluate}


def _check_training(config: Config) -> None:
    d, loss = config.data, config.loss
    if d.kind == "images":
        for key in ("train_dir", "test_dir"):
            _require(getattr(d, key) is not None, f"data.{key}",
                     "is required when data.kind=images; set it to a folder of images")
    progressive = config.model.family in ("e4e", "restyle_e4e")
    _require(config.train.progressive_start is None or progressive, "train.progressive_start",
             f"is set but a {config.model.family} encoder has no progressive rows; set it to null or use "
             "model.family=e4e / restyle_e4e")
    _require(loss.delta_norm == 0 or config.train.progressive_start is not None, "loss.delta_norm",
             "> 0 acts during progressive training only (as in e4e); set train.progressive_start or loss.delta_norm=0")
    _require(loss.id == 0 or loss.id_weights is not None, "loss.id_weights",
             "is null but loss.id > 0; set it to model_ir_se50.pth (psp fetch model_ir_se50.pth) "
             "or set loss.id=0")


def check_paths(config: Config, command: str = "train") -> None:
    """The files and folders the config names exist (called when a command starts its work).

    Raises ConfigError naming the key, the path and how to get the file.
    """
    sections = _sections_of(command)
    fetch = "download it with `psp fetch NAME` or fix the path"
    if "model" in sections:
        _check_file(config.model.generator.checkpoint, "model.generator.checkpoint", fetch)
        _check_file(config.model.encoder.init, "model.encoder.init", fetch)
    if "data" in sections and config.data.kind == "images":
        for key in ("train_dir", "train_target_dir", "test_dir", "test_target_dir"):
            _check_dir(getattr(config.data, key), f"data.{key}")
    if "loss" in sections:
        _check_file(config.loss.id_weights, "loss.id_weights", "download it with `psp fetch model_ir_se50.pth`")
    if "lpips" in sections:
        _check_file(config.lpips.weights, "lpips.weights", "fix the path or set it to null")
    if "evaluate" in sections:
        _check_file(config.evaluate.arcface, "evaluate.arcface", "download it with `psp fetch model_ir_se50.pth`")


def _valid_devices(devices: str) -> bool:
    text = devices.strip()
    if text == "auto":
        return True
    parts = [p.strip() for p in text.strip("[]").split(",") if p.strip()]
    return bool(parts) and all(p.lstrip("-").isdigit() for p in parts) and (
        len(parts) > 1 or int(parts[0]) != 0)


def parse_devices(devices: str) -> int | list[int] | str:
    """``train.devices`` as Lightning wants it: ``"auto"``, a count, or a list of indices."""
    text = devices.strip()
    if text == "auto":
        return "auto"
    parts = [int(p) for p in text.strip("[]").split(",") if p.strip()]
    return parts if ("," in text or text.startswith("[")) else parts[0]


REFERENCE_START = "<!-- config-reference:start -->"
REFERENCE_END = "<!-- config-reference:end -->"
REFERENCE_PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def update_reference(path: str | Path = REFERENCE_PAGE) -> bool:
    """Rewrite the config reference between the page's markers; True when the file changed."""
    path = Path(path)
    text = path.read_text()
    head, sep, rest = text.partition(REFERENCE_START)
    _, sep2, tail = rest.partition(REFERENCE_END)
    if not sep or not sep2:
        raise ConfigError(f"{path}: markers {REFERENCE_START} ... {REFERENCE_END} not found")
    new = f"{head}{REFERENCE_START}\n{markdown_reference()}\n{REFERENCE_END}{tail}"
    path.write_text(new)
    return new != text

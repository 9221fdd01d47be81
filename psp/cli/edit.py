"""``psp edit | mix | interpolate | directions``: editing saved latents from the command line.

Run as ``python -m psp.cli.edit COMMAND ...`` (``main(argv)`` dispatches). Every input is read and
checked before anything is written; user mistakes are one line on stderr and exit code 2.

Computed and fitted directions are cached next to the checkpoint that holds the generator, keyed
by the generator's sha256: ``<checkpoint dir>/directions/<sha256[:16]>/<name>.pt`` (our direction
format), so ``--direction NAME`` finds them and another generator never sees them.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from PIL import Image

from psp.cli.common import Parser, report_user_errors
from psp.editing.directions import Direction, load_direction, save_direction
from psp.editing.errors import EditingError
from psp.editing.fit import fit_direction
from psp.editing.ganspace import ganspace
from psp.editing.ops import edit, interpolate, mix, parse_layers, parse_strengths
from psp.editing.sefa import sefa
from psp.io.images import to_image
from psp.inference.engine import Engine
from psp.models.inference import InferenceModel
from psp.inference.outputs import (
    DELTA_KEY,
    LatentFileError,
    Manifest,
    atomic_write,
    latent_delta,
    load_latent,
    save_latent,
)
from psp.inference.render import list_latents
from stylegan2.delta import DeltaFileError, apply_delta, load_delta
from stylegan2.fingerprint import generator_sha256
from stylegan2.io import sha256_file


# ---------------------------------------------------------------------------------------- model
def decode(model: InferenceModel, codes: torch.Tensor, delta: Optional[Path] = None) -> torch.Tensor:
    """W+ codes ``[B, n, D]`` -> images ``[B, 3, S, S]`` in [-1, 1] on the CPU, through the inversion
    engine's decode (the one ``infer.py render`` uses, so an edited latent renders the same).
    ``delta``: the generator delta file of a tuned latent (``infer.py --tune-generator``)."""
    generator = None
    if delta is not None:
        try:
            generator = apply_delta(model.generator, load_delta(delta), source=str(delta))
        except DeltaFileError as exc:
            raise EditingError(str(exc)) from None
    return Engine(model, model.device).decode(codes, generator=generator).cpu()


def delta_of(path: Path, meta: dict) -> tuple[Optional[Path], dict]:
    """The delta file a latent names, and its metadata with that name made absolute, so edited
    latents written elsewhere still render with the tuned generator."""
    try:
        delta = latent_delta(path, meta)
    except LatentFileError as exc:
        raise EditingError(str(exc)) from None
    return delta, meta if delta is None else {**meta, DELTA_KEY: str(delta.resolve())}


def load_model(checkpoint: Optional[str], latent_paths: Sequence[Path]) -> tuple[InferenceModel, str, Path]:
    """The model named by ``--checkpoint`` or recorded in the first ``.pt`` latent: (model, sha, path)."""
    path = Path(checkpoint) if checkpoint else None
    for source in latent_paths if path is None else ():
        if source.suffix == ".pt":
            recorded = load_latent(source)[1].get("checkpoint")
            if isinstance(recorded, str):
                path = Path(recorded)
                break
    if path is None:
        raise EditingError("no latent names the checkpoint it was made with; pass --checkpoint PATH")
    if not path.is_file():
        raise EditingError(f"checkpoint '{path}' does not exist; pass --checkpoint PATH")
    model = InferenceModel.from_checkpoint(path)
    return model, generator_sha256(model.generator), path


def cache_dir(checkpoint: Path, sha: str) -> Path:
    return checkpoint.resolve().parent / "directions" / sha[:16]


# -------------------------------------------------------------------------------------- latents
def gather(inputs: Sequence[str]) -> list[Path]:
    """Files and folders (searched recursively) -> latent files; an empty set is an error."""
    found: list[Path] = []
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found += list_latents(p)
        elif p.is_file():
            found.append(p)
        else:
            raise EditingError(f"{p}: no such latent file or folder")
    if not found:
        raise EditingError(f"no latent files (.pt/.npy) in {' '.join(inputs) or 'the arguments'}")
    return found


def read_checked(paths: Sequence[Path], model: InferenceModel, sha: str,
                 checkpoint: Path) -> list[tuple[Path, torch.Tensor, dict]]:
    """Every latent, checked to fit ``model`` and to come from its generator.

    A latent recording ``generator_sha256`` must match the model's generator; one recording only
    ``checkpoint_sha256`` (older infer.py files) must match the checkpoint file.
    """
    expected = (model.n_styles, model.generator.style_dim)
    checkpoint_sha: Optional[str] = None
    out = []
    for path in paths:
        try:
            codes, meta = load_latent(path)
        except LatentFileError as exc:
            raise EditingError(str(exc)) from None
        if tuple(codes.shape) != expected:
            raise EditingError(f"{path}: W+ codes {list(codes.shape)}, this generator needs {list(expected)}")
        recorded: Any = meta.get("generator_sha256")
        if isinstance(recorded, str) and recorded != sha:
            raise EditingError(f"{path}: made with another generator (sha256 {recorded[:12]}..., this one "
                               f"is {sha[:12]}...); pass the checkpoint it was made with")
        recorded_file: Any = meta.get("checkpoint_sha256")
        if not isinstance(recorded, str) and isinstance(recorded_file, str):
            checkpoint_sha = checkpoint_sha or sha256_file(checkpoint)
            if recorded_file != checkpoint_sha:
                raise EditingError(f"{path}: made with another checkpoint (sha256 {recorded_file[:12]}..., "
                                   f"{checkpoint} is {checkpoint_sha[:12]}...); pass the checkpoint it was made with")
        out.append((path, codes, meta))
    return out


def resolve_direction(spec: str, cache: Path) -> Direction:
    """A direction file, or a NAME cached for this generator."""
    base = spec.partition("#")[0]
    if not Path(base).exists() and (cache / f"{base}.pt").is_file():
        spec = str(cache / f"{base}.pt") + spec[len(base):]
    elif not Path(base).exists():
        raise EditingError(f"direction '{spec}' is neither a file nor a name in {cache} "
                           "(see: directions list)")
    return load_direction(spec)


# -------------------------------------------------------------------------------------- writing
def strip(images: torch.Tensor) -> Image.Image:
    """Images ``[K, 3, S, S]`` side by side, as one PIL image."""
    return to_image(torch.cat(list(images), dim=-1))


def save_image(path: Path, pil: Image.Image) -> None:
    atomic_write(path, lambda f: pil.save(f, format="PNG"))


def check_animate(fmt: Optional[str]) -> None:
    """Refuse ``--animate mp4`` up front (before anything is written) when imageio-ffmpeg is missing."""
    if fmt == "mp4":
        try:
            import imageio  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise EditingError("--animate mp4 needs imageio and imageio-ffmpeg; use --animate gif") from None


def save_animation(path: Path, images: torch.Tensor, fps: int = 8) -> None:
    """A GIF (Pillow) that plays forth and back; MP4 (after `check_animate`) through imageio-ffmpeg."""
    frames = [to_image(im) for im in images]
    frames = frames + frames[-2:0:-1]
    if path.suffix == ".mp4":
        import imageio.v2 as imageio
        import numpy as np
        tmp = path.with_name(f".{path.name}.tmp.mp4")
        imageio.mimsave(tmp, [np.asarray(f) for f in frames], fps=fps)
        tmp.replace(path)
        return
    atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=1000 // fps, loop=0))


# -------------------------------------------------------------------------------------- commands
def cmd_edit(args: argparse.Namespace) -> int:
    check_animate(args.animate)
    paths = gather(args.latents)
    strengths = parse_strengths(args.strength)
    model, sha, ckpt = load_model(args.checkpoint, paths)
    n, width = model.n_styles, model.generator.style_dim
    layers = parse_layers(args.layers, n) if args.layers else None
    directions = [resolve_direction(spec, cache_dir(ckpt, sha)) for spec in args.direction]
    for d in directions:
        d.check_fits(n, width, sha)
    latents = read_checked(paths, model, sha, ckpt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(out) as manifest:
        manifest.write([{"type": "run", "command": "edit", "checkpoint": str(ckpt), "generator_sha256": sha,
                         "directions": [d.source for d in directions], "strengths": strengths}])
        for path, codes, meta in latents:
            delta, meta = delta_of(path, meta)
            steps = []
            for s in strengths:
                c = codes
                for d in directions:
                    c = edit(c, d.vectors, s, layers if layers is not None else d.layers)
                steps.append(c)
            images = decode(model, torch.stack(steps), delta)
            records = []
            for i, (s, c) in enumerate(zip(strengths, steps)):
                record = {"direction": [d.source for d in directions], "strength": s,
                          "layers": layers if layers is not None else [d.layers for d in directions]}
                name = f"{path.stem}_{i:02d}.pt"
                save_latent(out / name, c, {**meta, "generator_sha256": sha, "edit": record})
                records.append({"source": str(path), "latent": name, **record})
            save_image(out / f"{path.stem}.png", strip(images))
            if args.animate:
                save_animation(out / f"{path.stem}.{args.animate}", images)
            manifest.write(records)
    print(f"edited {len(latents)} latent(s) x {len(strengths)} strength(s) -> {out}")
    return 0


def cmd_mix(args: argparse.Namespace) -> int:
    paths = gather([args.a, args.b])
    model, sha, ckpt = load_model(args.checkpoint, paths)
    rows = parse_layers(args.layers, model.n_styles)
    (path_a, a, meta), (_, b, _) = read_checked(paths, model, sha, ckpt)
    delta, meta = delta_of(path_a, meta)  # drawn with A's generator
    mixed = mix(a, b, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(out) as manifest:
        save_latent(out / "mix.pt", mixed, {**meta, "generator_sha256": sha,
                                            "edit": {"mix": [str(args.a), str(args.b)], "layers": rows}})
        save_image(out / "mix.png", strip(decode(model, torch.stack([a, b, mixed]), delta)))
        manifest.write([{"type": "run", "command": "mix", "a": args.a, "b": args.b, "layers": rows,
                         "generator_sha256": sha, "latent": "mix.pt", "image": "mix.png"}])
    print(f"mixed rows {args.layers} of {args.b} into {args.a} -> {out}/mix.png (A | B | mix)")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    if args.steps < 2:
        raise EditingError(f"--steps must be at least 2, got {args.steps}")
    check_animate(args.animate)
    paths = gather([args.a, args.b])
    model, sha, ckpt = load_model(args.checkpoint, paths)
    (path_a, a, meta), (_, b, _) = read_checked(paths, model, sha, ckpt)
    delta, meta = delta_of(path_a, meta)  # drawn with A's generator
    path = interpolate(a, b, args.steps, spherical=args.spherical)
    images = decode(model, path, delta)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Manifest(out) as manifest:
        for i, c in enumerate(path):
            save_latent(out / f"step_{i:02d}.pt", c, {**meta, "generator_sha256": sha, "edit": {
                "interpolate": [args.a, args.b], "t": i / (args.steps - 1), "spherical": args.spherical}})
        save_image(out / "interpolation.png", strip(images))
        if args.animate:
            save_animation(out / f"interpolation.{args.animate}", images)
        manifest.write([{"type": "run", "command": "interpolate", "a": args.a, "b": args.b,
                         "steps": args.steps, "spherical": args.spherical, "generator_sha256": sha}])
    print(f"{args.steps} steps from {args.a} to {args.b} -> {out}/interpolation.png")
    return 0


def _write_directions(dirs: list[Direction], out: Optional[str], cache: Path) -> None:
    folder = Path(out) if out else cache
    for d in dirs:
        save_direction(folder / f"{d.name}.pt", d)
        print(f"wrote {folder / (d.name + '.pt')}")


def cmd_sefa(args: argparse.Namespace) -> int:
    model, sha, ckpt = load_model(args.checkpoint, [])
    rows = parse_layers(args.layers, model.n_styles)
    vectors, eig = sefa(model.generator, rows, args.k)
    tag = args.layers.replace(",", "_")
    _write_directions([Direction(f"sefa_{tag}_{i}", v[None], rows, sha, (-3.0, 3.0),
                                 extra={"eigenvalue": float(e)})
                       for i, (v, e) in enumerate(zip(vectors * args.scale, eig))], args.out, cache_dir(ckpt, sha))
    return 0


def cmd_ganspace(args: argparse.Namespace) -> int:
    model, sha, ckpt = load_model(args.checkpoint, [])
    rows = parse_layers(args.layers, model.n_styles) if args.layers else None
    pca = ganspace(model.generator, args.samples, args.k, seed=args.seed)
    dirs = [Direction(f"ganspace_{i}", (c * s)[None], rows, sha, (-3.0, 3.0),
                      extra={"explained_variance_ratio": float(r), "seed": args.seed, "samples": args.samples})
            for i, (c, s, r) in enumerate(zip(pca["comp"], pca["std"], pca["explained_variance_ratio"]))]
    for d in dirs:
        print(f"{d.name}: explains {d.extra['explained_variance_ratio']:.3f} of the variance of w")
    _write_directions(dirs, args.out, cache_dir(ckpt, sha))
    return 0


def read_labels(path: Path) -> dict[str, float]:
    """CSV ``file,label`` (a header line is allowed): latent file stem or name -> number."""
    labels = {}
    try:
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) < 2:
                    continue
                try:
                    labels[Path(row[0].strip()).stem] = float(row[1])
                except ValueError:
                    if i:
                        raise EditingError(f"{path}: line {i + 1}: label '{row[1]}' is not a number") from None
    except FileNotFoundError:
        raise EditingError(f"{path}: labels file not found") from None
    return labels


def cmd_fit(args: argparse.Namespace) -> int:
    paths = gather(args.latents)
    model, sha, ckpt = load_model(args.checkpoint, paths)
    labels = read_labels(Path(args.labels))
    latents = [(p, c) for p, c, _ in read_checked(paths, model, sha, ckpt) if p.stem in labels]
    if len(latents) < 5:
        raise EditingError(f"{args.labels}: only {len(latents)} of {len(paths)} latents have a label; need 5+")
    cache = cache_dir(ckpt, sha)
    others = [resolve_direction(o, cache).vectors.mean(0) for o in args.orthogonal_to]
    fit = fit_direction(torch.stack([c for _, c in latents]),
                        torch.tensor([labels[p.stem] for p, _ in latents]), orthogonal_to=others)
    codes = torch.stack([c for _, c in latents]).mean(1)
    spread = float((codes @ fit.direction).std())  # strengths in units of the latents' spread
    rows = parse_layers(args.layers, model.n_styles) if args.layers else None
    print(f"{args.name}: held-out {fit.metric} {fit.score:.3f} on {len(latents)} latents")
    _write_directions([Direction(args.name, (fit.direction * spread)[None], rows, sha, (-3.0, 3.0),
                                 extra={fit.metric: fit.score,
                                        "orthogonal_to": list(args.orthogonal_to)})], args.out, cache)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, sha, ckpt = load_model(args.checkpoint, [])
    cache = cache_dir(ckpt, sha)
    files = sorted(cache.glob("*.pt")) if cache.is_dir() else []
    print(f"{len(files)} direction(s) for generator {sha[:16]} in {cache}")
    for f in files:
        d = load_direction(str(f))
        print(f"  {d.name:24s} layers {d.layers if d.layers is not None else 'all'}  strength {d.strength_range}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    model, sha, ckpt = load_model(args.checkpoint, [])
    d = resolve_direction(args.direction, cache_dir(ckpt, sha))
    d.check_fits(model.n_styles, model.generator.style_dim, sha)
    print(f"{d.name}: vectors {list(d.vectors.shape)}, norm {d.vectors.norm(dim=1).mean():.3f}, layers "
          f"{d.layers if d.layers is not None else 'all'}, strength {d.strength_range}, generator "
          f"{(d.generator_sha256 or 'any')[:16]}")
    if args.preview:
        rng = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            w = model.generator.get_latent(torch.randn(args.samples, model.generator.style_dim, generator=rng))
        codes = w[:, None].repeat(1, model.n_styles, 1)
        strengths = torch.linspace(*d.strength_range, 5).tolist()
        rows = [strip(decode(model, torch.stack([edit(c, d.vectors, s, d.layers) for s in strengths])))
                for c in codes]
        grid = Image.new("RGB", (rows[0].width, rows[0].height * len(rows)))
        for i, r in enumerate(rows):
            grid.paste(r, (0, i * r.height))
        save_image(Path(args.preview), grid)
        print(f"preview ({len(rows)} samples x strengths {strengths}) -> {args.preview}")
    return 0


# --------------------------------------------------------------------------------------- parsers
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="psp", description="Edit saved W+ latents.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", help="model file (default: the one recorded in the latents)")

    p = sub.add_parser("edit", help="images and latents along directions")
    p.add_argument("latents", nargs="+", metavar="LATENTS")
    p.add_argument("--direction", action="append", required=True, metavar="NAME_OR_FILE",
                   help="a direction file (FILE#INDEX for a GANSpace PCA file) or a cached name; repeat to compose")
    p.add_argument("--strength", default="-3:3:7", help="START:STOP:COUNT or one number (default -3:3:7)")
    p.add_argument("--layers", help="W+ rows to edit, e.g. 0-7 (default: the direction's own, else all)")
    p.add_argument("--out", required=True)
    p.add_argument("--animate", nargs="?", const="gif", choices=("gif", "mp4"))
    common(p)
    p.set_defaults(run=cmd_edit)

    p = sub.add_parser("mix", help="style mixing: rows LAYERS of B into A")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--layers", required=True)
    p.add_argument("--out", required=True)
    common(p)
    p.set_defaults(run=cmd_mix)

    p = sub.add_parser("interpolate", help="codes between A and B")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--spherical", action="store_true", help="slerp per row (for Z-derived codes)")
    p.add_argument("--out", required=True)
    p.add_argument("--animate", nargs="?", const="gif", choices=("gif", "mp4"))
    common(p)
    p.set_defaults(run=cmd_interpolate)

    d = sub.add_parser("directions", help="make and inspect direction files").add_subparsers(
        dest="action", required=True)
    p = d.add_parser("sefa", help="closed-form directions of a W+ row range")
    p.add_argument("--layers", default="0-3")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--scale", type=float, default=3.0, help="length of each unit direction (W units)")
    p.add_argument("--out", help="folder (default: the generator's cache)")
    common(p)
    p.set_defaults(run=cmd_sefa)
    p = d.add_parser("ganspace", help="PCA of sampled w")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", help="W+ rows the components edit (default all)")
    p.add_argument("--out")
    common(p)
    p.set_defaults(run=cmd_ganspace)
    p = d.add_parser("fit", help="fit a direction to labels (CSV: file,label)")
    p.add_argument("latents", nargs="+")
    p.add_argument("--labels", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--orthogonal-to", action="append", default=[], metavar="NAME_OR_FILE")
    p.add_argument("--layers")
    p.add_argument("--out")
    common(p)
    p.set_defaults(run=cmd_fit)
    p = d.add_parser("list", help="cached directions of the generator")
    common(p)
    p.set_defaults(run=cmd_list)
    p = d.add_parser("show", help="describe a direction, with --preview a grid")
    p.add_argument("direction")
    p.add_argument("--preview", metavar="PNG")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(run=cmd_show)
    return parser


def _glue_negative_values(argv: Sequence[str]) -> list[str]:
    """``--strength -3:3:7`` -> ``--strength=-3:3:7``: argparse takes a leading '-' for an option."""
    out, it = [], iter(argv)
    for arg in it:
        if arg == "--strength":
            arg = f"--strength={next(it, '')}"
        out.append(arg)
    return out


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``psp edit|mix|interpolate|directions ...``; returns the exit code."""
    args = build_parser().parse_args(_glue_negative_values(sys.argv[1:] if argv is None else argv))
    if getattr(args, "command", None) == "directions" and not args.checkpoint:
        raise EditingError("directions commands need --checkpoint PATH")
    return args.run(args)


def command(name: str):
    """The ``psp NAME ...`` entry of one editing command (``psp edit ...`` = ``main(["edit", ...])``)."""
    return lambda argv: main([name, *argv])


edit_main, mix_main, interpolate_main, directions_main = map(command, ("edit", "mix", "interpolate", "directions"))

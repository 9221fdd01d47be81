"""``infer.py``: invert images into W+ latents; ``infer.py render``: latents back into images.

Settings come from the config sections the command reads (``infer``, ``refine``, ``lpips``, ``ops``;
render: ``infer``, ``ops``): defaults <- ``--config`` files <- ``key=value`` overrides <- flags (a
flag given on the command line always wins). The model's own config comes
from the checkpoint. Exit codes: 0 all inputs succeeded, 1 some failed, 2 usage/config error
(reported before any file is written), 130 interrupted.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from psp.cli.common import Parser, apply_ops, report_user_errors
from psp.config import Config, check_paths, load_config, to_yaml, validate
from psp.errors import InputError
from psp.inference.engine import Engine, load_inference_model, resolve_device
from psp.inference.invert import Inversion
from psp.inference.jobs import Summary, check_output_folder, collect_jobs, finished_outputs
from psp.inference.outputs import Manifest
from stylegan2.io import sha256_file

# A positional argument such as ``infer.batch_size=8`` is a config override, not an input path.
OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")

# argparse destination -> config key (section, name).
FLAG_KEYS = {"checkpoint": ("infer", "checkpoint"), "format": ("infer", "format"),
             "batch_size": ("infer", "batch_size"), "device": ("infer", "device"),
             "precision": ("infer", "precision"), "save_images": ("infer", "save_images"),
             "side_by_side": ("infer", "side_by_side"), "refine_steps": ("refine", "steps"),
             "align": ("infer", "align"), "workers": ("infer", "num_workers"),
             "iterations": ("infer", "iterations")}

EPILOG = """\
inputs: image files, folders (searched recursively) and @LIST text files (one path per line,
'#' comments, paths relative to the list file). Outputs mirror the inputs' paths under --out.
Exit codes: 0 all succeeded, 1 some inputs failed (see manifest.jsonl), 2 usage or config error.
Render saved latents: infer.py render LATENTS... --out DIR [--checkpoint PATH]
"""


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config file or name in configs/ (repeatable)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (infer.batch_size)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (infer.device)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="fp32; bf16 (CUDA or CPU); fp16 (CUDA) (infer.precision)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def invert_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="infer.py", description="Invert images into StyleGAN2 W+ latents with a pSp, e4e or ReStyle encoder.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="image file, folder, @LIST file, or a key=value config override")
    _common_flags(parser)
    parser.add_argument("--checkpoint", help="pSp model file (infer.checkpoint)")
    parser.add_argument("--format", choices=("pt", "npy"), help="latent file format (infer.format)")
    parser.add_argument("--save-images", action="store_const", const=True,
                        help="also write reconstructions <stem>.png (infer.save_images)")
    parser.add_argument("--side-by-side", action="store_const", const=True,
                        help="reconstructions as input | output pairs; implies --save-images")
    parser.add_argument("--resume", action="store_true", help="continue a run: skip finished outputs")
    parser.add_argument("--refine-steps", type=int, help="optimise W+ for N steps (refine.steps)")
    parser.add_argument("--iterations", type=int,
                        help="ReStyle models: encoder passes per image (infer.iterations; default 5)")
    parser.add_argument("--align", action="store_const", const=True,
                        help="FFHQ-style face alignment first (infer.align)")
    parser.add_argument("--workers", type=int, help="image-decoding processes (infer.num_workers)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def render_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="infer.py render", description="Render saved W+ latents (.pt or .npy) into PNG images.")
    parser.add_argument("inputs", nargs="*", metavar="LATENTS",
                        help="latent file, folder, @LIST file, or a key=value config override")
    _common_flags(parser)
    parser.add_argument("--checkpoint", help="pSp model file; default: the one recorded in the .pt latents")
    parser.add_argument("--full-resolution", action="store_true",
                        help="the generator's full size instead of the encoder's input size (256)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str],
           command: str) -> tuple[argparse.Namespace, Config]:
    """Arguments and the resolved config (flags applied over files and overrides, then re-validated)."""
    args = parser.parse_intermixed_args(argv)
    overrides = [a for a in args.inputs if OVERRIDE.match(a)]
    args.inputs = [a for a in args.inputs if not OVERRIDE.match(a)]
    config = load_config(args.config, overrides, command=command)
    for dest, (section, key) in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            setattr(getattr(config, section), key, value)
    validate(config, command)
    apply_ops(config.ops)
    return args, config


def _require_inputs_and_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.inputs:
        raise InputError(f"no input given; usage: {parser.prog} INPUT [INPUT ...] --out DIR")
    if args.out is None:
        raise InputError("--out DIR is required")


def invert(argv: Sequence[str]) -> int:
    parser = invert_parser()
    args, config = _parse(parser, argv, "infer")
    if args.print_config:
        print(to_yaml(config, "infer"), end="")
        return 0
    _require_inputs_and_out(parser, args)
    check_paths(config, "infer")
    cfg = config.infer
    jobs, folders = collect_jobs(args.inputs)
    check_output_folder(args.out, folders)
    device = resolve_device(cfg.device)
    checkpoint = Path(cfg.checkpoint)
    engine = Engine(load_inference_model(checkpoint, device), device, cfg.precision, config.refine,
                    iterations=cfg.iterations)
    sha256 = sha256_file(checkpoint)
    done = finished_outputs(args.out, args.resume, sha256)
    run = Inversion(engine, cfg, args.out, checkpoint, sha256, quiet=args.quiet)
    run.prepare(config.lpips)
    summary = _until_io_error(lambda: run.run(jobs, done), "rerun with --resume to continue")
    if summary is None:
        return 1
    print(f"{summary.line('inverted')}; manifest: {args.out / Manifest.NAME}", file=sys.stderr)
    return 0 if summary.failed == 0 else 1


def _until_io_error(run: Callable[[], Summary], hint: str) -> Optional[Summary]:
    """``run()``, or None after reporting an OSError (disk full, a vanished folder, ...).

    Not a bug and not the input's fault: every file finished so far is intact.
    """
    try:
        return run()
    except OSError as exc:
        print(f"error: {exc}; finished outputs are kept ({hint})", file=sys.stderr)
        return None


def render(argv: Sequence[str]) -> int:
    from psp.inference.render import LATENTS, Render, list_latents, recorded_checkpoint

    parser = render_parser()
    args, config = _parse(parser, argv, "render")
    _require_inputs_and_out(parser, args)
    jobs, folders = collect_jobs(args.inputs, list_latents, LATENTS)
    check_output_folder(args.out, folders)
    device = resolve_device(config.infer.device)
    if args.checkpoint is not None:
        checkpoint, expected_sha256 = Path(args.checkpoint), None
    else:
        checkpoint, expected_sha256 = recorded_checkpoint(jobs)
        if expected_sha256 and sha256_file(checkpoint) != expected_sha256:
            raise InputError(f"checkpoint '{checkpoint}' changed since the latents were made (sha256 "
                             "differs); pass --checkpoint PATH to render with it anyway")
    engine = Engine(load_inference_model(checkpoint, device), device, config.infer.precision)
    run = Render(engine, args.out, config.infer.batch_size, args.full_resolution, expected_sha256,
                 quiet=args.quiet)
    summary = _until_io_error(lambda: run.run(jobs), "rerun to finish")
    if summary is None:
        return 1
    print(summary.line("rendered"), file=sys.stderr)
    return 0 if summary.failed == 0 else 1


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``infer.py [render] ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return render(argv[1:]) if argv[:1] == ["render"] else invert(argv)
    except KeyboardInterrupt:
        print("interrupted; finished outputs are kept (infer: rerun with --resume to continue)", file=sys.stderr)
        return 130


def invert_main(argv: Sequence[str]) -> int:
    """``psp infer ...`` (the same as ``infer.py ...``)."""
    return main(list(argv))


def render_main(argv: Sequence[str]) -> int:
    """``psp render ...`` (the same as ``infer.py render ...``)."""
    return main(["render", *argv])

"""``psp evaluate``: score an encoder's reconstructions (see ``psp.evaluation.evaluate`` for the modes).

Settings come from the config sections the command reads (``infer``, ``refine``, ``lpips``,
``evaluate``, ``ops``): defaults <- ``--config`` files <- ``key=value`` overrides <- flags.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from psp.cli.common import Parser, apply_ops, report_user_errors
from psp.config import Config, check_paths, load_config, validate
from psp.errors import InputError

OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)+=")

# argparse destination -> config key (section, name); a flag given wins over files and overrides.
FLAG_KEYS = {"refine_steps": ("refine", "steps"), "refine_lr": ("refine", "lr"), "refine_l2": ("refine", "l2"),
             "refine_lpips": ("refine", "lpips"), "size": ("evaluate", "size"), "seed": ("evaluate", "seed"),
             "lpips_weights": ("lpips", "weights"), "arcface": ("evaluate", "arcface"),
             "batch_size": ("infer", "batch_size"), "workers": ("infer", "num_workers"),
             "device": ("infer", "device"), "precision": ("infer", "precision"),
             "report_examples": ("evaluate", "report_examples"), "iterations": ("infer", "iterations")}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="psp evaluate", description="Reconstruction quality (and speed) of an encoder.",
                    epilog="Exit codes: 0 all scored, 1 some images failed, 2 usage error.")
    parser.add_argument("inputs", nargs="*", metavar="IMAGES_DIR",
                        help="folder of images to invert with --checkpoint (recursive), or key=value overrides")
    parser.add_argument("--checkpoint", type=Path, help="pSp model file (our psp.pt or an official psp_*.pt)")
    parser.add_argument("--targets", type=Path, help="folder of target images (with --outputs)")
    parser.add_argument("--outputs", type=Path, help="folder of reconstructions matching --targets")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="score N held-out images sampled from the checkpoint's generator")
    parser.add_argument("--out", type=Path, help="folder for metrics.json, per_image.csv, report.png")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config file or name in configs/ (repeatable)")
    parser.add_argument("--refine-steps", type=int, help="also optimise the W+ codes for N Adam steps (refine.steps)")
    parser.add_argument("--refine-lr", type=float, help="refinement learning rate (refine.lr)")
    parser.add_argument("--refine-l2", type=float, help="L2 weight of the refinement objective (refine.l2)")
    parser.add_argument("--refine-lpips", type=float, help="LPIPS weight of the refinement objective (refine.lpips)")
    parser.add_argument("--size", type=int, help="--targets/--outputs: side both images are resized to (evaluate.size)")
    parser.add_argument("--seed", type=int, help="--synthetic: first latent seed (evaluate.seed)")
    parser.add_argument("--lpips-weights", help="torchvision's ImageNet AlexNet file (alexnet-owt-7be5be79.pth) "
                                                "for offline use (lpips.weights)")
    parser.add_argument("--no-lpips", action="store_true",
                        help="skip LPIPS (metric and refinement term), e.g. offline without its weights")
    parser.add_argument("--arcface", help="ArcFace IR-SE-50 file (model_ir_se50.pth): adds the id_similarity metric")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (infer.batch_size)")
    parser.add_argument("--workers", type=int, help="image-decoding processes (infer.num_workers)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (infer.device)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="inference precision (infer.precision)")
    parser.add_argument("--report-examples", type=int, help="best and worst images shown, each (evaluate.report_examples)")
    parser.add_argument("--iterations", type=int, help="ReStyle models: encoder passes per image; each pass "
                        "gets its own table row (infer.iterations; default 5)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def resolve(args: argparse.Namespace) -> Config:
    """The config: files and overrides, then the flags; ``--no-lpips`` turns the metric and the
    refinement's LPIPS term off."""
    overrides = [a for a in args.inputs if OVERRIDE.match(a)]
    args.inputs = [a for a in args.inputs if not OVERRIDE.match(a)]
    config = load_config(args.config, overrides, command="evaluate")
    for dest, (section, key) in FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(getattr(config, section), key, value)
    if args.no_lpips:
        if args.lpips_weights is not None:
            raise InputError("--no-lpips and --lpips-weights contradict each other; drop one")
        config.evaluate.lpips = False
    if not config.evaluate.lpips:
        config.refine.lpips = 0.0
    validate(config, "evaluate")
    return config


def check_mode(args: argparse.Namespace, config: Config) -> str:
    """The mode (``checkpoint`` | ``pairs`` | ``synthetic``) of valid arguments; else an InputError."""
    if len(args.inputs) > 1:
        raise InputError(f"give one IMAGES_DIR, got {len(args.inputs)}: {' '.join(args.inputs)}")
    images = Path(args.inputs[0]) if args.inputs else None
    if args.targets is not None or args.outputs is not None:
        if args.targets is None or args.outputs is None:
            raise InputError("--targets and --outputs go together; give both folders")
        if args.checkpoint is not None or images is not None or args.synthetic is not None:
            raise InputError("--targets/--outputs score existing images; drop --checkpoint, IMAGES_DIR and --synthetic")
        if config.refine.steps:
            raise InputError("--refine-steps needs --checkpoint (there is nothing to refine in --targets/--outputs)")
        mode = "pairs"
    elif args.checkpoint is None:
        raise InputError("nothing to evaluate; give --checkpoint CKPT IMAGES_DIR, --checkpoint CKPT --synthetic N, "
                         "or --targets DIR --outputs DIR")
    elif args.synthetic is not None:
        if images is not None:
            raise InputError(f"give either IMAGES_DIR ('{images}') or --synthetic, not both")
        if args.synthetic <= 0:
            raise InputError(f"--synthetic must be a positive number of images, got {args.synthetic}")
        mode = "synthetic"
    elif images is None:
        raise InputError("--checkpoint needs IMAGES_DIR (a folder of images) or --synthetic N")
    else:
        mode = "checkpoint"
    if args.out is None:
        raise InputError("--out DIR is required (metrics.json, per_image.csv and report.png go there)")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out '{args.out}' is a file; give a folder")
    for name, folder in (("IMAGES_DIR", images), ("--targets", args.targets), ("--outputs", args.outputs)):
        if folder is not None and not folder.is_dir():
            raise InputError(f"{name} '{folder}' is not a folder")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise InputError(f"--checkpoint file '{args.checkpoint}' does not exist")
    args.images = images
    return mode


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``psp evaluate ...``; returns the exit code."""
    from psp.evaluation.evaluate import EvaluationRun, run_evaluation, write_outputs, title_of
    from psp.evaluation.machine import machine_line

    args = build_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    config = resolve(args)
    mode = check_mode(args, config)
    check_paths(config, "evaluate")
    apply_ops(config.ops)
    run = EvaluationRun(mode, args.out, config, checkpoint=args.checkpoint, images=args.images,
                        targets=args.targets, outputs=args.outputs, synthetic=args.synthetic, quiet=args.quiet)
    report, results = run_evaluation(run)
    print(report["table_markdown"])
    seeds = config.evaluate.seed
    print(f"\n{report['n_images']} images"
          + (f" (seeds {seeds}..{seeds + args.synthetic - 1})" if mode == "synthetic" else "")
          + f"; {machine_line(report['machine'])}")
    write_outputs(args.out, report, results, title_of(run))
    print(f"wrote {args.out / 'metrics.json'}, per_image.csv and report.png", file=sys.stderr)
    return 1 if report["failed"] else 0

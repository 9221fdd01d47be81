"""``python train.py --config NAME [--config NAME ...] [key=value ...] [--resume PATH|auto]``."""
from __future__ import annotations

import argparse
import os
import sys

from psp.cli.common import Parser, apply_ops, report_user_errors
from psp.config import load_config, to_yaml


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="train.py",
        description="Train a pSp encoder into the W+ space of a frozen StyleGAN2 generator.",
        epilog="Example: python train.py --config demo train.max_steps=200 train.output_dir=runs/try")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config; a bare name is looked up in configs/ (repeatable, later wins)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.batch_size=4 log.logger=tensorboard")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a training checkpoint; auto = <output_dir>/checkpoints/last.ckpt "
                             "if present, else start fresh")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    return parser


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(args.config, args.overrides, command="train")
    if args.print_config:
        print(to_yaml(config, "train"), end="")
        return 0
    apply_ops(config.ops)
    # Imported here so --help, --print-config and config errors answer without loading torch.
    import torch.distributed as dist

    from psp.training.run import run

    code = run(config, resume=args.resume)
    if dist.is_available() and dist.is_initialized():
        # DDP ranks were seen spinning forever in the interpreter's final garbage collection after
        # training had finished and every file was written (loggers closed by `run`); leave
        # without that finalisation.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code

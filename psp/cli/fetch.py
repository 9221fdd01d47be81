"""``psp fetch NAME ... | list | check``: download, verify and list the official weight files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from psp.cli.common import Parser, report_user_errors
from psp.io.fetch import (WEIGHTS_DIR_ENV, DownloadError, UnknownWeightsError, VerificationError, WeightsError,
                          default_weights_dir, fetch, fetch_command, load_manifest, verify)




def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", help=f"weights folder (default: ${WEIGHTS_DIR_ENV}, else ./checkpoints)")
    common.add_argument("--manifest", help="another manifest JSON (default: checkpoints/manifest.json)")
    parser = Parser(
        prog="psp fetch",
        description="Download, verify and list the official weight files (checkpoints/manifest.json).")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = commands.add_parser("fetch", parents=[common], help="download and verify (the default command)")
    fetch_cmd.add_argument("names", nargs="+", metavar="NAME")
    fetch_cmd.add_argument("--url", help="download from this URL instead (a mirror); one NAME only")
    fetch_cmd.add_argument("--retries", type=int, default=3, help="retries of an interrupted transfer")
    fetch_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    list_cmd = commands.add_parser("list", parents=[common], help="official files and which are present")
    list_cmd.add_argument("--names", action="store_true", help="only the names, one per line")
    check_cmd = commands.add_parser("check", parents=[common],
                                    help="verify files (default: every present official file)")
    check_cmd.add_argument("names", nargs="*", metavar="NAME")
    return parser


def _cmd_fetch(args) -> int:
    if args.url and len(args.names) > 1:
        raise UnknownWeightsError("--url applies to one NAME; fetch the others separately")
    entries = load_manifest(args.manifest)
    unknown = [n for n in args.names if n not in entries and not args.url]
    if unknown:
        raise UnknownWeightsError(f"unknown weights file '{unknown[0]}'; official files: {', '.join(entries)}")
    status = 0
    for name in args.names:
        try:
            path = fetch(name, args.dir, args.url, manifest=args.manifest, progress=not args.quiet,
                         retries=args.retries)
            print(f"{name}: ok ({path})")
        except (DownloadError, VerificationError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


def _cmd_list(args) -> int:
    folder = Path(args.dir or default_weights_dir())
    for entry in load_manifest(args.manifest).values():
        if args.names:
            print(entry.name)
            continue
        path = folder / entry.name
        state = "present" if path.is_file() else "partial" if path.with_name(path.name + ".part").exists() \
            else "missing"
        print(f"{entry.name:<36} {entry.approx_size:>9}  {state:<8} {entry.description}")
    return 0


def _cmd_check(args) -> int:
    folder = Path(args.dir or default_weights_dir())
    entries = load_manifest(args.manifest)
    unknown = [n for n in args.names if n not in entries]
    if unknown:
        raise UnknownWeightsError(f"unknown weights file '{unknown[0]}'; official files: {', '.join(entries)}")
    status = 0
    for name in args.names or list(entries):
        path = folder / name
        if not path.is_file():
            print(f"{name}: missing ({fetch_command(name, folder)})")
            status |= bool(args.names)
            continue
        try:
            verify(path, entries[name])
            print(f"{name}: ok")
        except VerificationError as err:
            print(f"{name}: FAILED: {err}")
            status = 1
    return int(status)


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """`psp fetch [fetch] NAME ... | list | check`; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("fetch", "list", "check", "-h", "--help"):
        argv.insert(0, "fetch")  # `psp fetch NAME` is short for `psp fetch fetch NAME`
    args = _parser().parse_args(argv)
    commands = {"fetch": _cmd_fetch, "list": _cmd_list, "check": _cmd_check}
    try:
        return commands[args.command](args)
    except UnknownWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `list | head`: the reader has all it wants
        return 0
    except (WeightsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

"""Command line: ``python -m stylegan2.ops build`` (compile the CUDA kernels ahead of time, e.g.
in a Docker build without a GPU) and ``python -m stylegan2.ops info`` (what runs where)."""
import argparse
import json
import os
import sys
import time

from . import build, impl


def _build(quiet: bool) -> int:
    arch = os.environ.get(build.ARCH_ENV)
    if arch is None and not build.visible_capabilities():
        arch = f"{build.DEFAULT_ARCH_LIST} (default: {build.ARCH_ENV} unset, no GPU visible)"
    print(f"building stylegan2.ops CUDA kernels into {build.build_dir()}\n"
          f"  {build.ARCH_ENV}={arch if arch is not None else '<unset: visible GPUs>'}", flush=True)
    start = time.perf_counter()
    try:
        library = build.build_ahead_of_time(verbose=not quiet)
    except Exception as err:  # one line for the user; the compiler output was printed above
        print(f"stylegan2.ops build failed: {build.first_line(err)}", file=sys.stderr)
        return 1
    print(f"built {library} in {time.perf_counter() - start:.0f} s")
    return 0


def _info() -> int:
    print(json.dumps(impl.active_impl(), indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylegan2.ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="compile the CUDA kernels now (no GPU needed)")
    build_cmd.add_argument("--quiet", action="store_true", help="do not echo the compiler output")
    commands.add_parser("info", help="print the active implementation and the build status")
    args = parser.parse_args(argv)
    return _build(args.quiet) if args.command == "build" else _info()


if __name__ == "__main__":
    sys.exit(main())

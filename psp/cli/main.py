"""``psp``: the toolkit's one console script; each subcommand is a small module of ``psp.cli``.

    psp train ...          = python train.py ...
    psp infer ...          = python infer.py ...
    psp render ...         = python infer.py render ...
    psp evaluate ...       score reconstructions
    psp edit|mix|interpolate|directions ...   editing (docs/editing.md)
    psp fetch ...          download / list / check the official weights
    psp convert IN.pkl OUT.pt   NVIDIA generator pickle -> rosinality file (python -m stylegan2.convert)
    psp ops build|info     the CUDA ops (also: python -m stylegan2.ops)
    psp config reference|update-docs   the generated config reference

Subcommand modules are imported only when chosen, so ``psp --help`` and config errors answer fast.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

# name -> (module, function taking argv, one-line help)
COMMANDS = {
    "train": ("psp.cli.train", "main", "train an encoder (same as python train.py)"),
    "infer": ("psp.cli.infer", "invert_main", "invert images into W+ latents (same as python infer.py)"),
    "render": ("psp.cli.infer", "render_main", "render saved latents into images (same as infer.py render)"),
    "evaluate": ("psp.cli.evaluate", "main", "score an encoder's reconstructions"),
    "edit": ("psp.cli.edit", "edit_main", "images and latents along editing directions"),
    "mix": ("psp.cli.edit", "mix_main", "style mixing of two latents by W+ rows"),
    "interpolate": ("psp.cli.edit", "interpolate_main", "interpolate between two latents"),
    "directions": ("psp.cli.edit", "directions_main", "make and inspect direction files (fit, sefa, ganspace, list, show)"),
    "fetch": ("psp.cli.fetch", "main", "download, verify and list the official weights"),
    "convert": ("stylegan2.convert", "main", "convert an NVIDIA StyleGAN2-ADA .pkl into a rosinality .pt"),
    "ops": ("psp.cli.ops", "main", "build the CUDA ops ahead of time, or show which implementation runs"),
    "config": ("psp.cli.config", "main", "print or update the generated config reference"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "usage: psp COMMAND [ARGS...]   (psp COMMAND --help for its options)\n\ncommands:\n" + "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``psp COMMAND ...``; returns the command's exit code (2 for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'; choose one of: {', '.join(COMMANDS)} (see psp --help)",
              file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)(rest)


if __name__ == "__main__":
    sys.exit(main())

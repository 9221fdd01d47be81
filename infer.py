"""Invert images into StyleGAN2 W+ latents: ``python infer.py INPUT... --out DIR`` (see --help)."""
import sys

from psp.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())

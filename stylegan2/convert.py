"""Convert an NVIDIA StyleGAN2-ADA ``.pkl`` into a rosinality-format ``.pt``.

``python -m stylegan2.convert IN.pkl OUT.pt`` writes ``{"g_ema": state dict, "latent_avg": w_avg
[512], "conv_clamp": value, "nvidia": {"source_sha256", "source", "config"}}``, loadable with
``torch.load(weights_only=True)``. Nothing from the pickle is executed.
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import torch

from .io import sha256_file
from .loader import load_nvidia_generator


def convert(src: str, dst: str) -> dict:
    """Write ``dst`` from the NVIDIA pickle ``src``; returns the record written under "nvidia"."""
    generator, w_avg, nv_config = load_nvidia_generator(src)
    record = {"source": os.path.basename(src), "source_sha256": sha256_file(src), "config": nv_config}
    torch.save({"g_ema": generator.state_dict(), "latent_avg": w_avg,
                "conv_clamp": nv_config["conv_clamp"], "nvidia": record}, dst)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylegan2.convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="NVIDIA network pickle (.pkl)")
    parser.add_argument("dst", help="output rosinality-format file (.pt)")
    args = parser.parse_args(argv)
    try:
        record = convert(args.src, args.dst)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} (source sha256 {record['source_sha256'][:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

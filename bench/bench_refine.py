"""Quality gain of latent refinement (``infer.py --refine-steps``) on held-out synthetic images.

    python bench/bench_refine.py --checkpoint runs/demo/psp.pt --n 16 --steps 100 \
        --json bench/results/refine_demo.json
    python bench/bench_refine.py --n 8 --steps 50        # no checkpoint: the demo model, untrained

Targets are images the checkpoint's own generator draws from fresh latents (``SyntheticDataset``
with ``--seed``, far from the training run's validation seeds), so a perfect inversion exists and
no dataset is needed. Each image is encoded, then refined for ``--steps`` Adam steps; both answers
are scored against the target at the encoder's input size:

- ``l2``: mean squared error in [-1, 1] (the refinement's own pixel term);
- ``ssim``: SSIM (kornia, 11 px Gaussian window) on [0, 1] images. Single-scale: the demo images are
  64 px, below the 161 px that five-scale MS-SSIM needs;
- ``lpips``: only with ``--lpips-weights`` (torchvision's ImageNet AlexNet file), since a randomly
  initialised LPIPS trunk measures nothing. Given, LPIPS also enters the refinement objective with
  ``--lpips-weight``; without it the objective is L2 alone.

``curve`` holds the mean best-so-far objective after selected step counts (one run gives the whole
curve). Without ``--checkpoint`` the demo config's model is built with a random encoder: the gain is
then that of refining from a poor start, and the JSON says ``"trained": false``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from kornia.metrics import ssim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import write_json  # noqa: E402
from psp.config import load_config  # noqa: E402
from psp.models.synthetic import SyntheticDataset  # noqa: E402
from psp.models.model import PSP  # noqa: E402
from psp.inference.refine import reconstruct, refine  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="our psp.pt (or an official pSp file); "
                        "default: the demo config's model with a random encoder")
    parser.add_argument("--n", type=int, default=16, help="held-out images")
    parser.add_argument("--steps", type=int, default=100, help="refinement steps")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (infer.refine_lr)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=10_000, help="first seed of the held-out latents")
    parser.add_argument("--lpips-weights", type=Path, help="torchvision alexnet-owt-7be5be79.pth")
    parser.add_argument("--lpips-weight", type=float, default=0.8, help="LPIPS weight when --lpips-weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    for key in ("n", "steps", "batch_size"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint: file '{args.checkpoint}' does not exist")
    if args.lpips_weights is not None and not args.lpips_weights.is_file():
        parser.error(f"--lpips-weights: file '{args.lpips_weights}' does not exist")
    return args


def load_model(checkpoint: Path | None) -> PSP:
    if checkpoint is not None:
        return PSP.from_checkpoint(checkpoint, device="cpu").eval()
    torch.manual_seed(0)
    return PSP.from_config(load_config(["demo"], command="model").model).eval()


def scores(image: torch.Tensor, target: torch.Tensor, lpips) -> dict[str, torch.Tensor]:
    """Per-image metrics of ``image`` vs ``target`` ([B, 3, S, S] in [-1, 1]) -> name: [B]."""
    out = {"l2": (image - target).pow(2).flatten(1).mean(1),
           "ssim": ssim(_unit(image), _unit(target), window_size=11).flatten(1).mean(1)}
    if lpips is not None:
        out["lpips"] = lpips(image, target, reduction="none")
    return out


def _unit(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1) / 2).clamp(0, 1)


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    lpips = None
    if args.lpips_weights is not None:
        from psp.models.lpips import LPIPSLoss
        lpips = LPIPSLoss("alex", weights_path=args.lpips_weights)
    lpips_weight = args.lpips_weight if lpips is not None else 0.0
    data = SyntheticDataset(model.generator, args.n, size=model.input_size, seed=args.seed, fixed=True)
    size = (model.input_size, model.input_size)

    before, after, histories, seconds = [], [], [], 0.0
    for first in range(0, args.n, args.batch_size):
        target = torch.stack([data[i]["target"] for i in range(first, min(first + args.batch_size, args.n))])
        with torch.no_grad():
            codes = model.encode(target)
            before.append(scores(reconstruct(model.generator, codes, size), target, lpips))
        start = time.perf_counter()
        result = refine(model, target, codes, args.steps, lr=args.lr, l2_weight=1.0,
                        lpips_weight=lpips_weight, lpips=lpips)
        seconds += time.perf_counter() - start
        with torch.no_grad():
            after.append(scores(reconstruct(model.generator, result.codes, size), target, lpips))
        histories.append(result.history)

    def mean(parts: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        return {k: round(float(torch.cat([p[k] for p in parts]).mean()), 6) for k in parts[0]}

    best_so_far = torch.cat(histories, dim=1).cummin(dim=0).values.mean(1)
    marks = sorted({s for s in (0, 10, 25, 50, 100, 200, 500, 1000) if s <= args.steps} | {args.steps})
    return {
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "trained": args.checkpoint is not None,
        "n": args.n, "steps": args.steps, "lr": args.lr, "seed": args.seed,
        "objective": "l2" if lpips is None else f"l2 + {lpips_weight} * lpips",
        "input_size": model.input_size, "generator_size": model.generator.size,
        "before": mean(before), "after": mean(after),
        "curve": {str(s): round(float(best_so_far[s]), 6) for s in marks},
        "refine_seconds_per_image": round(seconds / args.n, 3),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print(json.dumps(results, indent=2))
    if args.json is not None:
        write_json(args.json, results)


if __name__ == "__main__":
    main()

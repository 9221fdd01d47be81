"""The CPU demos of every encoder family, measured on unseen samples as images are: clamped to [-1, 1].

    python bench/bench_families.py                                   # train all four demos, then measure
    python bench/bench_families.py --families psp e4e --json bench/results/families_demo_cpu.json
    python bench/bench_families.py --runs runs                        # measure runs/demo*/psp.pt as they are

For each family ``f`` it trains ``python train.py --config demo`` (pSp) or ``--config demo_<f>`` into
``<runs>/demo[_<f>]`` (unless that run already finished and ``--runs`` is given; the wall time of
training is reported), then loads the exported ``psp.pt`` and draws ``--n`` samples from its own
generator with seeds ``--seed ..`` (far from the training stream and the validation set), clamped
to [-1, 1] like every image. Reported per family:

- ``l2``: mean squared error of the clamped reconstruction against the clamped target, after each
  encoder pass (one for pSp and e4e, ``model.iterations`` for ReStyle);
- ``baseline_l2``: the same for the decode of ``w_avg`` (an encoder that always answers "average");
  ``ratio`` = final ``l2`` / ``baseline_l2`` (the demos aim at <= 0.5);
- ``w_plus_spread``: mean distance of the W+ rows from their mean (0 for a code of W; e4e keeps it
  small so edits behave).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import describe_machine, figure, write_json  # noqa: E402
from psp.models.inference import InferenceModel  # noqa: E402
from psp.models.synthetic import SyntheticDataset  # noqa: E402
from psp.training.system import w_plus_spread  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("psp", "e4e", "restyle_psp", "restyle_e4e")


def demo_config(family: str) -> str:
    return "demo" if family == "psp" else f"demo_{family}"


def train(family: str, out: Path) -> float:
    """Run the family's demo into ``out``; the wall seconds it took."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", demo_config(family),
           f"train.output_dir={out}", "log.logger=none"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@torch.no_grad()
def measure(checkpoint: Path, n: int, seed: int, batch_size: int = 16) -> dict:
    """Clamped held-out L2 after each pass, the w_avg baseline and the W+ spread of ``checkpoint``."""
    model = InferenceModel.from_checkpoint(checkpoint)
    data = SyntheticDataset(model.generator, n, size=model.input_size, seed=seed, fixed=True, clamp=True)
    baseline_image = model.decode(model.w_avg[None]).clamp(-1, 1)
    sums, baseline, spread = None, 0.0, 0.0
    for first in range(0, n, batch_size):
        y = torch.stack([data[i]["target"] for i in range(first, min(first + batch_size, n))])
        passes = model.encode_iterations(y)
        errors = [F.mse_loss(model.decode(codes).clamp(-1, 1), y, reduction="sum") for codes in passes]
        sums = errors if sums is None else [s + e for s, e in zip(sums, errors)]
        baseline += float(F.mse_loss(baseline_image.expand_as(y), y, reduction="sum"))
        spread += float(w_plus_spread(passes[-1])) * len(y)
    pixels = n * 3 * model.input_size ** 2
    l2 = [float(s) / pixels for s in sums]
    return {"family": model.family, "l2": l2, "baseline_l2": baseline / pixels, "ratio": l2[-1] / (baseline / pixels),
            "w_plus_spread": spread / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of demo runs to measure (trained first where psp.pt is missing); "
                             "default: train into a fresh folder under runs/bench_families")
    parser.add_argument("--n", type=int, default=256, help="unseen samples per family")
    parser.add_argument("--seed", type=int, default=2_000_000, help="first sample seed")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    runs = args.runs or ROOT / "runs" / "bench_families"
    report = {"machine": describe_machine(), "n": args.n, "seed": args.seed, "families": {}}
    figures = []
    for family in args.families:
        out = runs / ("demo" if family == "psp" else f"demo_{family}")
        seconds = None
        if not (out / "psp.pt").is_file():
            seconds = train(family, out)
        result = {**measure(out / "psp.pt", args.n, args.seed), "train_seconds": seconds, "run": str(out)}
        report["families"][family] = result
        figures += [figure(f"families/{family}/ratio", result["ratio"], "x"),
                    figure(f"families/{family}/w_plus_spread", result["w_plus_spread"], "")]
        passes = " -> ".join(f"{v:.4f}" for v in result["l2"])
        took = f", trained in {seconds:.0f} s" if seconds is not None else ""
        print(f"{family:12s} l2 {passes}  baseline {result['baseline_l2']:.4f}  ratio {result['ratio']:.3f}  "
              f"w+ spread {result['w_plus_spread']:.3f}{took}")
    report["figures"] = figures
    if args.json is not None:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

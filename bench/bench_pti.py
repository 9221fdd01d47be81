"""Fidelity of pivotal tuning, and what compressing the tuned generator into low-rank deltas costs.

    python bench/bench_pti.py --checkpoint runs/demo/psp.pt --json bench/results/pti_demo_cpu.json

Targets are images the checkpoint's generator cannot draw exactly: the example photos (``--images``,
default ``data/examples``) and ``--n-other`` images drawn by a *different* generator (the same
architecture with other random weights, ``model.generator.seed=--other-seed``). For each image:

- ``encoder``: the encoder's codes; ``+ refine N``: those codes after ``--refine-steps`` (L2 Adam);
- ``+ PTI full``: the generator tuned for ``--tune-steps`` from the refined codes (``psp.tuning``,
  the ``tune`` defaults except ``--tune-steps``, ``--tune-lr``, ``--locality``; pixels only without
  LPIPS weights);
- ``+ PTI rank r``: the base generator plus the tuned one's delta compressed to rank ``r`` (0: dense).

Scores at the encoder's input size: ``l2`` ([-1, 1] units), ``ms_ssim`` and ``lpips`` (only with
``--lpips-weights``) from ``psp.evaluation.metrics``; seconds per image (cumulative: a row includes
the rows it builds on) and MB per image (the delta's tensor bytes; ``full``: the whole generator).
``locality``: how much each tuned generator changed images of ``--locality-codes`` unrelated random
codes (mean L2 against the base generator's), next to the L2 between two random base images for
scale. ``ffhq_1024_mb``: what a delta of each rank would weigh for the 1024 px FFHQ generator
(from its parameter shapes; nothing is tuned at that size).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled

from bench.common import describe_machine, write_json  # noqa: E402
from psp.config import RefineConfig, TuneConfig, load_config  # noqa: E402
from psp.evaluation.metrics import ReconstructionMetrics  # noqa: E402
from psp.inference.engine import Engine, load_inference_model  # noqa: E402
from psp.inference.refine import reconstruct  # noqa: E402
from psp.io.images import list_images, load_rgb, to_tensor  # noqa: E402
from psp.models.model import PSP  # noqa: E402
from psp.models.synthetic import SyntheticDataset  # noqa: E402
from psp.tuning.measure import tune_image  # noqa: E402
from stylegan2 import Generator  # noqa: E402
from stylegan2.delta import matrix_shape  # noqa: E402
from stylegan2.fingerprint import generator_sha256  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="our psp.pt (e.g. the demo's runs/demo/psp.pt)")
    parser.add_argument("--images", type=Path, default=ROOT / "data" / "examples", help="folder of photos")
    parser.add_argument("--n-other", type=int, default=4, help="images drawn by a different generator")
    parser.add_argument("--other-seed", type=int, default=7, help="seed of that generator's weights")
    parser.add_argument("--refine-steps", type=int, default=100)
    parser.add_argument("--tune-steps", type=int, default=350, help="PTI steps (the paper's 350)")
    parser.add_argument("--tune-lr", type=float, default=3e-4, help="PTI learning rate (the paper's 3e-4)")
    parser.add_argument("--locality", type=float, default=0.1, help="locality regulariser weight (tune.locality; 0 = off)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 0], help="delta ranks (0 = dense)")
    parser.add_argument("--locality-codes", type=int, default=8, help="random codes of the locality check")
    parser.add_argument("--lpips-weights", type=Path, help="torchvision alexnet-owt-7be5be79.pth (LPIPS metric and loss)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def targets(args: argparse.Namespace, size: int) -> list[tuple[str, str, torch.Tensor]]:
    """(source, name, image [3, size, size]) of every target."""
    out = [("photos", path.name, to_tensor(load_rgb(path), size)) for path in list_images(args.images)]
    if args.n_other == 0:
        return out
    other_cfg = load_config(["demo"], [f"model.generator.seed={args.other_seed}"], command="model").model
    other = PSP.from_config(other_cfg).generator.eval()
    data = SyntheticDataset(other, args.n_other, size=size, seed=123, fixed=True)
    out += [("other generator", f"seed{args.other_seed}-{i}", data[i]["target"]) for i in range(args.n_other)]
    return out


def ffhq_delta_mb(ranks: list[int]) -> dict[str, float]:
    """MB of a delta of each rank for the 1024 px config-f generator, every synthesis weight changed."""
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=2)
    sizes = {}
    for rank in ranks:
        total = 0
        for name, p in g.named_parameters():
            if name.startswith("style."):
                continue
            m, n = matrix_shape(tuple(p.shape))
            dense = rank == 0 or p.ndim < 2 or rank * (m + n) >= m * n
            total += 4 * (p.numel() if dense else rank * (m + n))
        sizes[str(rank)] = round(total / 1e6, 2)
    return sizes


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lpips = None
    if args.lpips_weights is not None:
        from psp.models.lpips import LPIPSLoss

        lpips = LPIPSLoss("alex", weights_path=args.lpips_weights).to(device)
    metrics = ReconstructionMetrics(lpips).to(device)
    model = load_inference_model(args.checkpoint, device)
    engine = Engine(model, device, refine=RefineConfig(steps=args.refine_steps, lpips=0.8 if lpips else 0.0),
                    lpips=lpips)
    tune_cfg = TuneConfig(steps=args.tune_steps, lr=args.tune_lr, lpips=1.0 if lpips else 0.0, locality=args.locality)
    base = model.generator
    sha = generator_sha256(base)
    full_mb = sum(p.numel() * p.element_size() for p in base.parameters()) / 1e6
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        w = base.get_latent(torch.randn(args.locality_codes, base.style_dim, generator=g).to(device))
    random_codes = w[:, None].repeat(1, model.n_styles, 1)
    size = (model.input_size, model.input_size)
    with torch.no_grad():
        random_base = reconstruct(base, random_codes, size)
    random_pairs = (random_base - random_base.roll(1, 0)).pow(2).flatten(1).mean(1).mean().item()

    refined = f"+ refine {args.refine_steps}"
    methods = ["encoder", refined, "+ PTI full"] + [f"+ PTI rank {r}" if r else "+ PTI dense delta" for r in args.ranks]
    rows = []
    for source, name, image in targets(args, model.input_size):
        x = image[None].to(device)
        start = time.perf_counter()
        codes = engine.encode(x)
        drawn = {"encoder": (engine.decode(codes), time.perf_counter() - start, 0.0)}
        codes = engine.refine_codes(x, codes)
        drawn[refined] = (engine.decode(codes), time.perf_counter() - start, 0.0)
        result = tune_image(engine, x, codes, tune_cfg, args.ranks, lpips, sha)
        tuned_seconds = drawn[refined][1] + result.seconds
        drawn["+ PTI full"] = (result.full, tuned_seconds, full_mb)
        for rank, method in zip(args.ranks, methods[3:]):
            drawn[method] = (result.compact[rank], tuned_seconds + result.compress_seconds[rank],
                             result.nbytes[rank] / 1e6)
        with torch.no_grad():
            locality = (reconstruct(result.generator, random_codes, size) - random_base).pow(2).flatten(1).mean(1)
        for method, (y_hat, seconds, mb) in drawn.items():
            scores = {k: float(v[0]) for k, v in metrics(y_hat, x).items()}
            rows.append({"source": source, "image": name, "method": method, **scores,
                         "seconds": seconds, "mb": mb})
        rows[-len(args.ranks) - 1]["locality_l2"] = float(locality.mean())  # the "+ PTI full" row
        print(f"{source} {name}: " + ", ".join(f"{r['method']} {r['l2']:.4f}" for r in rows[-len(drawn):]),
              file=sys.stderr, flush=True)

    table = []
    for source in ("all", "photos", "other generator"):
        for method in methods:
            chosen = [r for r in rows if r["method"] == method and source in ("all", r["source"])]
            if not chosen:
                continue
            keys = [k for k in ("l2", "ms_ssim", "lpips", "seconds", "mb", "locality_l2") if k in chosen[0]]
            table.append({"source": source, "method": method, "n": len(chosen),
                          **{k: sum(r[k] for r in chosen) / len(chosen) for k in keys}})
    return {"checkpoint": str(args.checkpoint), "generator_size": base.size, "input_size": model.input_size,
            "refine_steps": args.refine_steps, "tune": {"steps": args.tune_steps, "lr": args.tune_lr,
                                                        "lpips": tune_cfg.lpips, "locality": tune_cfg.locality},
            "ranks": args.ranks, "full_generator_mb": round(full_mb, 3),
            "random_pair_l2": random_pairs, "ffhq_1024_mb": ffhq_delta_mb(args.ranks),
            "table": table, "markdown": markdown(table, random_pairs), "rows": rows,
            "machine": describe_machine()}


def markdown(table: list[dict], random_pairs: float) -> str:
    lines = ["| images | method | L2 | MS-SSIM | LPIPS | s / image | MB / image | locality L2 |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in table:
        lpips = f"{row['lpips']:.4f}" if "lpips" in row else "-"
        locality = f"{row['locality_l2']:.2e}" if "locality_l2" in row else "-"
        lines.append(f"| {row['source']} ({row['n']}) | {row['method']} | {row['l2']:.4f} | {row['ms_ssim']:.4f} | "
                     f"{lpips} | {row['seconds']:.2f} | {row['mb']:.3f} | {locality} |")
    lines.append(f"\nlocality scale: L2 between two random images of the base generator = {random_pairs:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print(results["markdown"])
    print("FFHQ 1024 delta MB by rank:", json.dumps(results["ffhq_1024_mb"]))
    if args.json is not None:
        write_json(args.json, results)


if __name__ == "__main__":
    main()

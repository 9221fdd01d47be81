"""``python -m psp.evaluate``: reconstruction quality (and speed) of an encoder, in numbers and pictures.

Three modes; each writes ``metrics.json``, ``per_image.csv`` and ``report.png`` under ``--out``::

    python -m psp.evaluate --checkpoint psp.pt IMAGES_DIR --out eval/ [--refine-steps N]
    python -m psp.evaluate --targets DIR --outputs DIR --out eval/
    python -m psp.evaluate --checkpoint psp.pt --synthetic 64 --out eval/ [--refine-steps N]

- checkpoint + folder: every image under IMAGES_DIR (recursive) is resized to the encoder's input,
  encoded, optionally refined (``psp.refine``), decoded (``PSP.decode``, pooled to the input size)
  and scored against the resized input; seconds per image are timed.
- targets + outputs: existing reconstructions (e.g. ``infer.py --save-images``) are scored against
  their targets, matched by relative path without the extension; both are resized to ``--size``.
- synthetic: held-out images drawn by the checkpoint's own generator from known W+ codes
  (``psp.data.SyntheticDataset``, seeds ``--seed .. --seed + N - 1``) give the synthetic benchmark
  table: the w_avg baseline (``decode(w_avg)`` for every image), the encoder, and the encoder plus
  ``--refine-steps``; it is printed as markdown and stored in ``metrics.json["table"]``.

Metric definitions are in ``psp.metrics`` (and in ``metrics.json["definitions"]``).
Exit codes: 0 every image scored, 1 some could not be read or had no reconstruction (listed in
``metrics.json["failed"]`` and on stderr), 2 usage error (one line, nothing written).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from psp.cli import UsageError, report_user_errors
from psp.config import InferConfig
from psp.eval_report import Extremes, draw_report, format_score, label
from psp.images import ImageLoadError, list_images, load_rgb, to_tensor
from psp.inversion import load_model, progress_bar, resolve_device
from psp.machine import describe_machine, machine_line
from psp.metrics import DEFINITIONS, ReconstructionMetrics, summarize

FORMAT = "psp-toolkit/evaluate"
FORMAT_VERSION = 1
MIN_IMAGE_SIDE = 16
# Far from the training run's held-out seeds (data.seed + 0 .. n_test - 1), so the synthetic
# benchmark never scores images that picked the best checkpoint.
SYNTHETIC_SEED = 1_000_000
# Default refinement settings: those of infer.py (the infer config section's defaults).
INFER_DEFAULTS = InferConfig()


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are UsageErrors (one line, exit code 2) instead of usage dumps."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m psp.evaluate", description=__doc__.split("\n\n")[0],
                     epilog="Exit codes: 0 all scored, 1 some images failed, 2 usage error.")
    parser.add_argument("images", nargs="?", type=Path, metavar="IMAGES_DIR",
                        help="folder of images to invert with --checkpoint (recursive)")
    parser.add_argument("--checkpoint", type=Path, help="pSp model file (our psp.pt or an official psp_*.pt)")
    parser.add_argument("--targets", type=Path, help="folder of target images (with --outputs)")
    parser.add_argument("--outputs", type=Path, help="folder of reconstructions matching --targets")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="score N held-out images sampled from the checkpoint's generator")
    parser.add_argument("--out", type=Path, help="folder for metrics.json, per_image.csv, report.png")
    parser.add_argument("--refine-steps", type=int, default=0,
                        help="also optimise the W+ codes for N Adam steps (psp.refine), default 0")
    parser.add_argument("--refine-lr", type=float, default=INFER_DEFAULTS.refine_lr)
    parser.add_argument("--refine-l2", type=float, default=INFER_DEFAULTS.refine_l2,
                        help="L2 weight of the refinement objective")
    parser.add_argument("--refine-lpips", type=float, default=INFER_DEFAULTS.refine_lpips,
                        help="LPIPS weight of the refinement objective (0 with --no-lpips)")
    parser.add_argument("--size", type=int, default=256,
                        help="--targets/--outputs: side both images are resized to (default 256)")
    parser.add_argument("--seed", type=int, default=SYNTHETIC_SEED, help="--synthetic: first latent seed")
    parser.add_argument("--lpips-weights", type=Path,
                        help="torchvision's ImageNet AlexNet file (alexnet-owt-7be5be79.pth) for offline use")
    parser.add_argument("--no-lpips", action="store_true",
                        help="skip LPIPS (metric and refinement term), e.g. offline without its weights")
    parser.add_argument("--arcface", type=Path,
                        help="ArcFace IR-SE-50 file (model_ir_se50.pth): adds the id_similarity metric")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--report-examples", type=int, default=5, help="best and worst images shown (each)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


# ----------------------------------------------------------------------------------------------
# Arguments


def check_args(args: argparse.Namespace) -> str:
    """The mode (``checkpoint`` | ``pairs`` | ``synthetic``) of valid arguments; else a UsageError."""
    pairs = args.targets is not None or args.outputs is not None
    if pairs:
        if args.targets is None or args.outputs is None:
            raise UsageError("--targets and --outputs go together; give both folders")
        if args.checkpoint is not None or args.images is not None or args.synthetic is not None:
            raise UsageError("--targets/--outputs score existing images; drop --checkpoint, IMAGES_DIR and --synthetic")
        if args.refine_steps:
            raise UsageError("--refine-steps needs --checkpoint (there is nothing to refine in --targets/--outputs)")
        mode = "pairs"
    elif args.checkpoint is None:
        raise UsageError("nothing to evaluate; give --checkpoint CKPT IMAGES_DIR, --checkpoint CKPT --synthetic N, "
                         "or --targets DIR --outputs DIR")
    elif args.synthetic is not None:
        if args.images is not None:
            raise UsageError(f"give either IMAGES_DIR ('{args.images}') or --synthetic, not both")
        if args.synthetic <= 0:
            raise UsageError(f"--synthetic must be a positive number of images, got {args.synthetic}")
        mode = "synthetic"
    elif args.images is None:
        raise UsageError("--checkpoint needs IMAGES_DIR (a folder of images) or --synthetic N")
    else:
        mode = "checkpoint"
    if args.out is None:
        raise UsageError("--out DIR is required (metrics.json, per_image.csv and report.png go there)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out '{args.out}' is a file; give a folder")
    for flag in ("refine_steps", "workers"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    for flag in ("batch_size", "size"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    for name, folder in (("IMAGES_DIR", args.images), ("--targets", args.targets), ("--outputs", args.outputs)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{name} '{folder}' is not a folder")
    for name, path in (("--checkpoint", args.checkpoint), ("--lpips-weights", args.lpips_weights),
                       ("--arcface", args.arcface)):
        if path is not None and not path.is_file():
            raise UsageError(f"{name} file '{path}' does not exist")
    if args.no_lpips and args.lpips_weights is not None:
        raise UsageError("--no-lpips and --lpips-weights contradict each other; drop one")
    return mode


def build_metrics(args: argparse.Namespace, device: torch.device) -> ReconstructionMetrics:
    """The metric networks the flags ask for; a missing LPIPS backbone or bad ArcFace file is a UsageError."""
    lpips = None
    if not args.no_lpips:
        from psp.losses import LPIPSLoss, LPIPSWeightsError

        try:
            lpips = LPIPSLoss("alex", weights_path=args.lpips_weights)
        except LPIPSWeightsError as exc:
            reason = str(exc).split(";")[0]  # the rest of the message names config keys, not our flags
            raise UsageError(f"{reason}; pass --lpips-weights /path/to/alexnet-owt-7be5be79.pth "
                             "or --no-lpips") from None
    arcface = None
    if args.arcface is not None:
        from psp.nets.arcface import load_arcface

        try:
            arcface = load_arcface(str(args.arcface))
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--arcface '{args.arcface}' is not an IR-SE-50 recogniser ({reason})") from None
    return ReconstructionMetrics(lpips, arcface).to(device)


# ----------------------------------------------------------------------------------------------
# Scores


@dataclass
class Scores:
    """Per-image results of one method, the report's extremes, and the failures."""

    extremes: Extremes
    rows: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def add(self, paths: Sequence[str], targets: torch.Tensor, outputs: torch.Tensor,
            scores: dict[str, torch.Tensor], seconds: Optional[float] = None) -> None:
        """One batch: targets/outputs [B, 3, S, S] in [-1, 1], scores ``{name: [B]}``, the batch's time."""
        for i, path in enumerate(paths):
            row = {"path": path, **{name: float(v[i]) for name, v in scores.items()}}
            if seconds is not None:
                row["seconds"] = seconds / len(paths)
            self.rows.append(row)
            self.extremes.add(path, targets[i], outputs[i], row)

    def fail(self, path: str, error: str) -> None:
        self.failed.append({"path": path, "error": error})
        print(f"failed: {path}: {error}", file=sys.stderr)

    def values(self, metric: str) -> list[float]:
        return [row[metric] for row in self.rows if metric in row]

    def seconds_per_image(self) -> Optional[float]:
        timed = [row["seconds"] for row in self.rows if "seconds" in row]
        return sum(timed) / len(timed) if timed else None


class _Files(Dataset):
    """Item i: its files decoded and resized to ``size`` -> (i, [n_files, 3, size, size] or None, error)."""

    def __init__(self, items: list[tuple[Path, ...]], size: int):
        self.items, self.size = items, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, torch.stack([to_tensor(load_rgb(p, MIN_IMAGE_SIDE), self.size) for p in self.items[i]]), None
        except ImageLoadError as exc:
            # With a target and an output, say which of the two is bad.
            return i, None, exc.reason if len(self.items[i]) == 1 else f"{exc.path}: {exc.reason}"


def _collate(batch):
    good = [(i, x) for i, x, err in batch if err is None]
    images = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], images, [(i, err) for i, _, err in batch if err is not None]


def _loader(items: list[tuple[Path, ...]], size: int, args: argparse.Namespace) -> DataLoader:
    return DataLoader(_Files(items, size), batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                      collate_fn=_collate, prefetch_factor=2 if args.workers > 0 else None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def invert(model, x: torch.Tensor, args: argparse.Namespace, lpips) -> torch.Tensor:
    """Codes of ``x`` [B, 3, S, S]: the encoder's answer, refined for ``args.refine_steps`` if > 0."""
    with torch.no_grad():
        codes = model.encode(x)
    if args.refine_steps > 0:
        from psp.refine import refine_codes

        lpips_weight = 0.0 if args.no_lpips else args.refine_lpips
        codes = refine_codes(model, x, codes, args.refine_steps, lr=args.refine_lr, l2_weight=args.refine_l2,
                             lpips_weight=lpips_weight, lpips=lpips)
    return codes


def method_name(refine_steps: int) -> str:
    """The table row of an inversion: ``encoder`` or ``encoder + refine N``."""
    return f"encoder + refine {refine_steps}" if refine_steps > 0 else "encoder"


def evaluate_folder(model, metrics: ReconstructionMetrics, args: argparse.Namespace, device: torch.device,
                    rank_metric: str) -> dict[str, Scores]:
    """Invert every image under ``args.images`` and score each reconstruction against its resized input."""
    files = list_images(args.images)
    if not files:
        raise UsageError(f"no images found in '{args.images}' (looked recursively)")
    rels = [f.relative_to(args.images).as_posix() for f in files]
    scores = Scores(Extremes(rank_metric, args.report_examples))
    with progress_bar(len(files), "evaluating", args.quiet) as bar:
        for indices, x, failures in _loader([(f,) for f in files], model.input_size, args):
            for i, error in failures:
                scores.fail(rels[i], error)
            if x is not None:
                x = x[:, 0].to(device)
                _sync(device)
                start = time.perf_counter()
                codes = invert(model, x, args, metrics.lpips)
                with torch.no_grad():
                    y_hat = model.decode(codes, resize=True)
                _sync(device)
                seconds = time.perf_counter() - start
                scores.add([rels[i] for i in indices], x, y_hat, metrics(y_hat, x), seconds)
            bar.update(len(indices) + len(failures))
    return {method_name(args.refine_steps): scores}


def match_pairs(targets: Path, outputs: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Targets and outputs matched by relative path without extension: (pairs, targets without output).

    Two files in one folder with the same name but different extensions are a UsageError.
    """
    def keyed(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in list_images(folder):
            rel = path.relative_to(folder).as_posix()
            key = PurePosixPath(rel).with_suffix("").as_posix()
            if key in found:
                raise UsageError(f"'{folder}' has two images named '{key}' ({found[key].name} and {path.name}); "
                                 "keep one so targets and outputs pair up")
            found[key] = path
        return found

    target_files, output_files = keyed(targets), keyed(outputs)
    if not target_files:
        raise UsageError(f"no images found in --targets '{targets}' (looked recursively)")
    pairs = [(target_files[k].relative_to(targets).as_posix(), target_files[k], output_files[k])
             for k in target_files if k in output_files]
    if not pairs:
        raise UsageError(f"no file in --outputs '{outputs}' matches a target in '{targets}' "
                         "(matched by relative path without the extension)")
    missing = [target_files[k].relative_to(targets).as_posix() for k in target_files if k not in output_files]
    return pairs, missing


def evaluate_pairs(metrics: ReconstructionMetrics, args: argparse.Namespace, device: torch.device,
                   rank_metric: str) -> dict[str, Scores]:
    """Score each output against its target, both resized to ``args.size``."""
    pairs, missing = match_pairs(args.targets, args.outputs)
    scores = Scores(Extremes(rank_metric, args.report_examples))
    for rel in missing:
        scores.fail(rel, f"no reconstruction in '{args.outputs}'")
    rels = [rel for rel, _, _ in pairs]
    with progress_bar(len(pairs), "scoring", args.quiet) as bar:
        for indices, images, failures in _loader([(t, o) for _, t, o in pairs], args.size, args):
            for i, error in failures:
                scores.fail(rels[i], error)
            if images is not None:
                y, y_hat = images[:, 0].to(device), images[:, 1].to(device)
                scores.add([rels[i] for i in indices], y, y_hat, metrics(y_hat, y))
            bar.update(len(indices) + len(failures))
    return {"outputs": scores}


def evaluate_synthetic(model, metrics: ReconstructionMetrics, args: argparse.Namespace, device: torch.device,
                       rank_metric: str) -> dict[str, Scores]:
    """Score the w_avg baseline, the encoder and (with refine steps) the refined codes on held-out samples.

    Returns ``{method: Scores}`` in table order; rows also hold ``latent_mse``, the mean squared
    error of the W+ codes against the true ones.
    """
    from psp.data import SyntheticDataset

    data = SyntheticDataset(model.generator, args.synthetic, size=model.input_size, seed=args.seed, fixed=True)
    refined = method_name(args.refine_steps)
    methods = ["w_avg", "encoder"] + ([refined] if args.refine_steps > 0 else [])
    results = {m: Scores(Extremes(rank_metric, args.report_examples)) for m in methods}
    with torch.no_grad():
        baseline = model.decode(model.w_avg[None].to(device), resize=True)
    with progress_bar(args.synthetic, "synthetic", args.quiet) as bar:
        for first in range(0, args.synthetic, args.batch_size):
            samples = [data[i] for i in range(first, min(first + args.batch_size, args.synthetic))]
            x = torch.stack([s["target"] for s in samples]).to(device)
            latents = torch.stack([s["latent"] for s in samples]).to(device)
            paths = [s["path"] for s in samples]
            b = len(samples)

            def score(method: str, codes: torch.Tensor, y_hat: torch.Tensor, seconds: Optional[float]) -> None:
                values = metrics(y_hat, x)
                values["latent_mse"] = (codes.float() - latents).pow(2).flatten(1).mean(1).cpu()
                results[method].add(paths, x, y_hat, values, seconds)

            with torch.no_grad():
                w_avg_codes = model.w_avg[None].expand(b, -1, -1)
                score("w_avg", w_avg_codes, baseline.expand(b, -1, -1, -1), None)
                _sync(device)
                start = time.perf_counter()
                codes = model.encode(x)
                y_hat = model.decode(codes, resize=True)
                _sync(device)
                encoder_seconds = time.perf_counter() - start
                score("encoder", codes, y_hat, encoder_seconds)
            if args.refine_steps > 0:
                start = time.perf_counter()
                codes = invert(model, x, args, metrics.lpips)
                with torch.no_grad():
                    y_hat = model.decode(codes, resize=True)
                _sync(device)
                score(refined, codes, y_hat, time.perf_counter() - start)
            bar.update(b)
    return results


# ----------------------------------------------------------------------------------------------
# Outputs


def summary_table(results: dict[str, Scores], metric_names: Sequence[str]) -> list[dict]:
    """One row per method: ``{"method", "n", "n_failed", "metrics": {name: summarize(...)},
    "seconds_per_image"}``."""
    return [{"method": method, "n": len(scores.rows), "n_failed": len(scores.failed),
             "metrics": {m: summarize(scores.values(m)) for m in metric_names if scores.values(m)},
             "seconds_per_image": scores.seconds_per_image()} for method, scores in results.items()]


def markdown_table(table: list[dict]) -> str:
    """``table`` (from :func:`summary_table`) as markdown: the mean of each metric, and seconds per image."""
    columns: list[str] = []
    for row in table:
        columns += [m for m in row["metrics"] if m not in columns]
    lines = ["| method | " + " | ".join(label(m) for m in columns) + " | s / image |",
             "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |"]
    for row in table:
        cells = [format_score(m, row["metrics"][m]["mean"]) if m in row["metrics"] else "-" for m in columns]
        seconds = row["seconds_per_image"]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {f'{seconds:.3f}' if seconds else '-'} |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as CSV with the union of their keys as columns, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_write(path, buffer.getvalue().encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _checkpoint_info(path: Optional[Path]) -> Optional[dict]:
    if path is None:
        return None
    from psp.weights import sha256_file

    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _settings(args: argparse.Namespace, mode: str, metric_names: Sequence[str]) -> dict:
    """The flags that shaped the numbers, for metrics.json."""
    settings = {"mode": mode, "metrics": list(metric_names), "batch_size": args.batch_size, "device": args.device,
                "lpips_weights": str(args.lpips_weights) if args.lpips_weights else None,
                "arcface": str(args.arcface) if args.arcface else None}
    if mode == "pairs":
        return {**settings, "targets": str(args.targets), "outputs": str(args.outputs), "size": args.size}
    settings.update(refine_steps=args.refine_steps)
    if args.refine_steps:
        settings.update(refine_lr=args.refine_lr, refine_l2=args.refine_l2,
                        refine_lpips=0.0 if args.no_lpips else args.refine_lpips)
    if mode == "synthetic":
        return {**settings, "n": args.synthetic, "seed": args.seed}
    return {**settings, "images": str(args.images)}


def build_report(mode: str, args: argparse.Namespace, metric_names: Sequence[str],
                 results: dict[str, Scores]) -> dict:
    """The content of metrics.json (schema in the README, "Evaluation" / "Outputs"). The headline ``metrics``,
    ``seconds_per_image`` and ``failed`` are those of the last method (the full inversion)."""
    names = [*metric_names, "latent_mse"]
    table = summary_table(results, names)
    method, scores = list(results.items())[-1]
    return {"format": FORMAT, "version": FORMAT_VERSION, "mode": mode,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": _checkpoint_info(args.checkpoint),
            "config": _settings(args, mode, metric_names), "machine": describe_machine(),
            "method": method, "n_images": len(scores.rows), "n_failed": len(scores.failed),
            "metrics": table[-1]["metrics"], "seconds_per_image": scores.seconds_per_image(),
            "table": table, "table_markdown": markdown_table(table),
            "definitions": {**{m: DEFINITIONS[m] for m in metric_names},
                            "latent_mse": "mean squared error of the W+ codes vs the true ones (synthetic)",
                            "seconds_per_image": "wall time of encode (+ refine) + decode per image; "
                                                 "excludes image decoding and metrics"},
            "failed": scores.failed}


def write_outputs(out: Path, report: dict, results: dict[str, Scores], title: str) -> None:
    """metrics.json, per_image.csv (a ``method`` column when there are several) and report.png
    (the last method's best and worst images) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
    several = len(results) > 1
    write_csv(out / "per_image.csv", [{"method": m, **row} if several else row
                                      for m, scores in results.items() for row in scores.rows])
    scores = results[report["method"]]
    lines = [_summary_line(row) for row in report["table"]]
    lines.append(machine_line(report["machine"]) + f"  ·  {report['created']}")
    means = {m: s["mean"] for m, s in report["metrics"].items()}
    if several:
        title += f"  (images and histograms: {report['method']})"
    image = draw_report(title, lines, scores.extremes, {m: scores.values(m) for m in means}, means)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    _atomic_write(out / "report.png", buffer.getvalue())


def _summary_line(row: dict) -> str:
    """``encoder: 64 images, 0 failed · L2 0.0123 · ... · 0.052 s/image`` for the report header."""
    seconds = row["seconds_per_image"]
    return (f"{row['method']}: {row['n']} images, {row['n_failed']} failed"
            + "".join(f"  ·  {label(m)} {format_score(m, v['mean'])}" for m, v in row["metrics"].items())
            + (f"  ·  {seconds:.3f} s/image" if seconds else ""))


def _title(mode: str, args: argparse.Namespace) -> str:
    if mode == "pairs":
        return f"{args.outputs}  vs  {args.targets}"
    what = str(args.images) if mode == "checkpoint" else f"{args.synthetic} synthetic held-out images"
    return f"{args.checkpoint.name}: {what}"


# ----------------------------------------------------------------------------------------------
# Entry point


@report_user_errors
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m psp.evaluate ...``; returns the exit code (module docstring)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    mode = check_args(args)
    device = resolve_device(args.device)
    metrics = build_metrics(args, device)
    rank_metric = "lpips" if metrics.lpips is not None else "l2"
    if mode == "pairs":
        results = evaluate_pairs(metrics, args, device, rank_metric)
    else:
        model = load_model(args.checkpoint, device)
        evaluate = evaluate_folder if mode == "checkpoint" else evaluate_synthetic
        results = evaluate(model, metrics, args, device, rank_metric)
    report = build_report(mode, args, metrics.names, results)
    print(report["table_markdown"])
    print(f"\n{report['n_images']} images"
          + (f" (seeds {args.seed}..{args.seed + args.synthetic - 1})" if mode == "synthetic" else "")
          + f"; {machine_line(report['machine'])}")
    write_outputs(args.out, report, results, _title(mode, args))
    print(f"wrote {args.out / 'metrics.json'}, per_image.csv and report.png", file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

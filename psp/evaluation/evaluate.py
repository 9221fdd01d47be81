"""``psp evaluate``: reconstruction quality (and speed) of an encoder, in numbers and pictures.

Three modes; each writes ``metrics.json``, ``per_image.csv`` and ``report.png`` under ``--out``::

    psp evaluate --checkpoint psp.pt IMAGES_DIR --out eval/ [--refine-steps N]
    psp evaluate --targets DIR --outputs DIR --out eval/
    psp evaluate --checkpoint psp.pt --synthetic 64 --out eval/ [--refine-steps N]

- checkpoint + folder: every image under IMAGES_DIR (recursive) is resized to the encoder's input,
  encoded, optionally refined (``psp.inference.refine``), decoded (the inversion engine, pooled to the input size)
  and scored against the resized input; seconds per image are timed.
- targets + outputs: existing reconstructions (e.g. ``infer.py --save-images``) are scored against
  their targets, matched by relative path without the extension; both are resized to ``--size`` (``evaluate.size``).
- synthetic: held-out images drawn by the checkpoint's own generator from known W+ codes
  (``psp.models.synthetic.SyntheticDataset``, seeds ``--seed .. --seed + N - 1``) give the synthetic benchmark
  table: the w_avg baseline (``decode(w_avg)`` for every image), the encoder, and the encoder plus
  ``--refine-steps``; it is printed as markdown and stored in ``metrics.json["table"]``.

Metric definitions are in ``psp.evaluation.metrics`` (and in ``metrics.json["definitions"]``).
Exit codes: 0 every image scored, 1 some could not be read or had no reconstruction (listed in
``metrics.json["failed"]`` and on stderr), 2 usage error (one line, nothing written).
"""
from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import torch

from psp.config import Config
from psp.errors import InputError
from psp.evaluation.machine import describe_machine, machine_line
from psp.evaluation.metrics import DEFINITIONS, ReconstructionMetrics, summarize
from psp.evaluation.report import Extremes, draw_report, format_score, label
from psp.inference.engine import Engine
from psp.inference.jobs import progress_bar
from psp.inference.stream import stream_images
from psp.io.atomic import atomic_write_bytes
from psp.io.images import list_images

FORMAT = "psp-toolkit/evaluate"
FORMAT_VERSION = 1


@dataclass
class EvaluationRun:
    """What to evaluate (the mode and its paths, from the command line) and how (the config).

    ``mode``: ``checkpoint`` (invert ``images`` with ``checkpoint``), ``pairs`` (score ``outputs``
    against ``targets``) or ``synthetic`` (``synthetic`` held-out samples of the checkpoint's
    generator). ``config``: the sections the evaluate command reads (infer, refine, lpips, evaluate).
    """

    mode: str
    out: Path
    config: Config
    checkpoint: Optional[Path] = None
    images: Optional[Path] = None
    targets: Optional[Path] = None
    outputs: Optional[Path] = None
    synthetic: Optional[int] = None
    quiet: bool = False

    @property
    def infer(self):
        return self.config.infer

    @property
    def refine(self):
        return self.config.refine

    @property
    def lpips(self):
        return self.config.lpips

    @property
    def evaluate(self):
        return self.config.evaluate


def build_metrics(run: EvaluationRun, device: torch.device) -> ReconstructionMetrics:
    """The metric networks the config asks for (LPIPS unless ``evaluate.lpips`` is false, ArcFace
    when ``evaluate.arcface`` is set); a missing or unusable file raises its one-line CheckpointError."""
    lpips = None
    if run.evaluate.lpips:
        from psp.models.lpips import LPIPSLoss

        lpips = LPIPSLoss(run.lpips.net, weights_path=run.lpips.weights)
    arcface = None
    if run.evaluate.arcface is not None:
        from psp.models.official import load_arcface

        arcface = load_arcface(run.evaluate.arcface)
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def method_name(refine_steps: int) -> str:
    """The table row of an inversion: ``encoder`` or ``encoder + refine N``."""
    return f"encoder + refine {refine_steps}" if refine_steps > 0 else "encoder"


def pass_name(t: int) -> str:
    """The table row of a ReStyle model's codes after pass t (< its last, which is ``encoder``)."""
    return f"encoder pass {t}"


def pass_methods(engine: Engine) -> list[str]:
    """Rows for the intermediate passes of a ReStyle model (none for pSp and e4e)."""
    return [pass_name(t) for t in range(1, engine.iterations)]


def evaluate_folder(engine: Engine, metrics: ReconstructionMetrics, run: EvaluationRun,
                    rank_metric: str) -> dict[str, Scores]:
    """Invert every image under ``run.images`` and score each reconstruction against its resized input."""
    files = list_images(run.images)
    if not files:
        raise InputError(f"no images found in '{run.images}' (looked recursively)")
    rels = [f.relative_to(run.images).as_posix() for f in files]
    methods = pass_methods(engine) + [method_name(run.refine.steps)]
    results = {m: Scores(Extremes(rank_metric, run.evaluate.report_examples)) for m in methods}
    scores = results[methods[-1]]
    device = engine.device
    with progress_bar(len(files), "evaluating", run.quiet) as bar:
        for batch in stream_images([files], engine.model.input_size, run.infer.batch_size, run.infer.num_workers):
            for i, error in batch.failures:
                scores.fail(rels[i], error)
            if batch.images is not None:
                x = batch.images[:, 0].to(device)
                paths = [rels[i] for i in batch.indices]
                _sync(device)
                start = time.perf_counter()
                passes = engine.encode_iterations(x)
                y_hat = engine.decode(engine.refine_codes(x, passes[-1]))
                _sync(device)
                seconds = time.perf_counter() - start
                for method, codes in zip(methods, passes[:-1]):  # intermediate ReStyle passes, untimed
                    y_pass = engine.decode(codes)
                    results[method].add(paths, x, y_pass, metrics(y_pass, x))
                scores.add(paths, x, y_hat, metrics(y_hat, x), seconds)
            bar.update(len(batch.indices) + len(batch.failures))
    return results


def match_pairs(targets: Path, outputs: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Targets and outputs matched by relative path without extension: (pairs, targets without output).

    Two files in one folder with the same name but different extensions are a InputError.
    """
    def keyed(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in list_images(folder):
            rel = path.relative_to(folder).as_posix()
            key = PurePosixPath(rel).with_suffix("").as_posix()
            if key in found:
                raise InputError(f"'{folder}' has two images named '{key}' ({found[key].name} and {path.name}); "
                                 "keep one so targets and outputs pair up")
            found[key] = path
        return found

    target_files, output_files = keyed(targets), keyed(outputs)
    if not target_files:
        raise InputError(f"no images found in --targets '{targets}' (looked recursively)")
    pairs = [(target_files[k].relative_to(targets).as_posix(), target_files[k], output_files[k])
             for k in target_files if k in output_files]
    if not pairs:
        raise InputError(f"no file in --outputs '{outputs}' matches a target in '{targets}' "
                         "(matched by relative path without the extension)")
    missing = [target_files[k].relative_to(targets).as_posix() for k in target_files if k not in output_files]
    return pairs, missing


def evaluate_pairs(metrics: ReconstructionMetrics, run: EvaluationRun, device: torch.device,
                   rank_metric: str) -> dict[str, Scores]:
    """Score each output against its target, both resized to ``evaluate.size``."""
    pairs, missing = match_pairs(run.targets, run.outputs)
    scores = Scores(Extremes(rank_metric, run.evaluate.report_examples))
    for rel in missing:
        scores.fail(rel, f"no reconstruction in '{run.outputs}'")
    rels = [rel for rel, _, _ in pairs]
    lists = [[t for _, t, _ in pairs], [o for _, _, o in pairs]]
    with progress_bar(len(pairs), "scoring", run.quiet) as bar:
        for batch in stream_images(lists, run.evaluate.size, run.infer.batch_size, run.infer.num_workers):
            for i, error in batch.failures:
                scores.fail(rels[i], error)
            if batch.images is not None:
                y, y_hat = batch.images[:, 0].to(device), batch.images[:, 1].to(device)
                scores.add([rels[i] for i in batch.indices], y, y_hat, metrics(y_hat, y))
            bar.update(len(batch.indices) + len(batch.failures))
    return {"outputs": scores}


def evaluate_synthetic(engine: Engine, metrics: ReconstructionMetrics, run: EvaluationRun,
                       rank_metric: str) -> dict[str, Scores]:
    """Score the w_avg baseline, the encoder and (with refine steps) the refined codes on held-out samples.

    Returns ``{method: Scores}`` in table order; rows also hold ``latent_mse``, the mean squared
    error of the W+ codes against the true ones. The refined row's seconds include the encoder's.
    """
    from psp.models.synthetic import SyntheticDataset

    model, device = engine.model, engine.device
    data = SyntheticDataset(model.generator, run.synthetic, size=model.input_size, seed=run.evaluate.seed, fixed=True)
    refined = method_name(run.refine.steps)
    methods = ["w_avg", *pass_methods(engine), "encoder"] + ([refined] if run.refine.steps > 0 else [])
    results = {m: Scores(Extremes(rank_metric, run.evaluate.report_examples)) for m in methods}
    baseline = engine.decode(model.w_avg[None])
    with progress_bar(run.synthetic, "synthetic", run.quiet) as bar:
        for first in range(0, run.synthetic, run.infer.batch_size):
            samples = [data[i] for i in range(first, min(first + run.infer.batch_size, run.synthetic))]
            x = torch.stack([s["target"] for s in samples]).to(device)
            latents = torch.stack([s["latent"] for s in samples]).to(device)
            paths = [s["path"] for s in samples]
            b = len(samples)

            def score(method: str, codes: torch.Tensor, y_hat: torch.Tensor, seconds: Optional[float]) -> None:
                values = metrics(y_hat, x)
                values["latent_mse"] = (codes.float() - latents).pow(2).flatten(1).mean(1).cpu()
                results[method].add(paths, x, y_hat, values, seconds)

            score("w_avg", model.w_avg[None].expand(b, -1, -1), baseline.expand(b, -1, -1, -1), None)
            _sync(device)
            start = time.perf_counter()
            passes = engine.encode_iterations(x)
            codes = passes[-1]
            y_hat = engine.decode(codes)
            _sync(device)
            encoder_seconds = time.perf_counter() - start
            for t, pass_codes in enumerate(passes[:-1], start=1):  # intermediate ReStyle passes, untimed
                score(pass_name(t), pass_codes, engine.decode(pass_codes), None)
            score("encoder", codes, y_hat, encoder_seconds)
            if run.refine.steps > 0:
                start = time.perf_counter()
                codes = engine.refine_codes(x, codes)
                y_hat = engine.decode(codes)
                _sync(device)
                score(refined, codes, y_hat, encoder_seconds + time.perf_counter() - start)
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
    atomic_write_bytes(path, buffer.getvalue().encode())


def _checkpoint_info(path: Optional[Path]) -> Optional[dict]:
    if path is None:
        return None
    from stylegan2.io import sha256_file

    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _settings(run: EvaluationRun, mode: str, metric_names: Sequence[str]) -> dict:
    """The flags that shaped the numbers, for metrics.json."""
    settings = {"mode": mode, "metrics": list(metric_names), "batch_size": run.infer.batch_size, "device": run.infer.device,
                "lpips_weights": run.lpips.weights, "arcface": run.evaluate.arcface}
    if mode == "pairs":
        return {**settings, "targets": str(run.targets), "outputs": str(run.outputs), "size": run.evaluate.size}
    settings.update(refine_steps=run.refine.steps, iterations=run.infer.iterations)
    if run.refine.steps:
        settings.update(refine_lr=run.refine.lr, refine_l2=run.refine.l2,
                        refine_lpips=0.0 if not run.evaluate.lpips else run.refine.lpips)
    if mode == "synthetic":
        return {**settings, "n": run.synthetic, "seed": run.evaluate.seed}
    return {**settings, "images": str(run.images)}


def build_report(mode: str, run: EvaluationRun, metric_names: Sequence[str],
                 results: dict[str, Scores]) -> dict:
    """The content of metrics.json (schema in docs/evaluation.md, "Outputs"). The headline ``metrics``,
    ``seconds_per_image`` and ``failed`` are those of the last method (the full inversion)."""
    names = [*metric_names, "latent_mse"]
    table = summary_table(results, names)
    method, scores = list(results.items())[-1]
    return {"format": FORMAT, "version": FORMAT_VERSION, "mode": mode,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": _checkpoint_info(run.checkpoint),
            "config": _settings(run, mode, metric_names), "machine": describe_machine(),
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
    atomic_write_bytes(out / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())
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
    atomic_write_bytes(out / "report.png", buffer.getvalue())


def _summary_line(row: dict) -> str:
    """``encoder: 64 images, 0 failed · L2 0.0123 · ... · 0.052 s/image`` for the report header."""
    seconds = row["seconds_per_image"]
    return (f"{row['method']}: {row['n']} images, {row['n_failed']} failed"
            + "".join(f"  ·  {label(m)} {format_score(m, v['mean'])}" for m, v in row["metrics"].items())
            + (f"  ·  {seconds:.3f} s/image" if seconds else ""))


def title_of(run: EvaluationRun) -> str:
    """The report's title line."""
    mode = run.mode
    if mode == "pairs":
        return f"{run.outputs}  vs  {run.targets}"
    what = str(run.images) if mode == "checkpoint" else f"{run.synthetic} synthetic held-out images"
    return f"{run.checkpoint.name}: {what}"


def run_evaluation(run: EvaluationRun) -> tuple[dict, dict[str, Scores]]:
    """Evaluate as ``run`` says: (the metrics.json report, the per-method scores)."""
    from psp.inference.engine import load_inference_model, resolve_device

    device = resolve_device(run.infer.device)
    metrics = build_metrics(run, device)
    rank_metric = "lpips" if metrics.lpips is not None else "l2"
    if run.mode == "pairs":
        results = evaluate_pairs(metrics, run, device, rank_metric)
    else:
        engine = Engine(load_inference_model(run.checkpoint, device), device, run.infer.precision, run.refine,
                        iterations=run.infer.iterations)
        engine.lpips = metrics.lpips  # refinement scores with the metric's network (built once)
        engine.prepare(run.lpips)
        evaluate = evaluate_folder if run.mode == "checkpoint" else evaluate_synthetic
        results = evaluate(engine, metrics, run, rank_metric)
    return build_report(run.mode, run, metrics.names, results), results

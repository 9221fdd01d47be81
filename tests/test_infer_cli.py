"""infer.py end to end on a tiny model: latents, manifest, bad inputs, usage errors, render."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_PSP
from psp.cli.infer import main
from psp.config import load_config
from psp.io.images import load_rgb, to_tensor
from psp.models.model import PSP
from psp.inference.outputs import load_latent

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(checkpoint) -> PSP:
    return PSP.from_checkpoint(checkpoint, device="cpu").eval()


def _photo(path: Path, size=(40, 40), mode="RGB", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """5 images in a small tree: mixed sizes, modes and formats (an odd count: a partial last batch)."""
    root = tmp_path / "photos"
    _photo(root / "a.jpg", seed=1)
    _photo(root / "b.png", (64, 48), "RGBA", seed=2)
    _photo(root / "sub" / "c.webp", (50, 70), seed=3)
    _photo(root / "sub" / "d.png", (40, 40), "L", seed=4)
    _photo(root / "sub" / "deeper" / "e.bmp", (33, 90), seed=5)
    return root


def infer(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _encode(model: PSP, path: Path) -> torch.Tensor:
    x = to_tensor(load_rgb(path), model.input_size)[None]
    with torch.inference_mode():
        return model.encode(x)[0]


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Inversion


def test_latents_equal_encode_and_mirror_the_tree(photos, checkpoint, model, tmp_path):
    out = tmp_path / "out"
    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--batch-size", 2, "--workers", 0) == 0
    sources = sorted(p for p in photos.rglob("*") if p.is_file())
    for source in sources:
        stem = source.relative_to(photos).with_suffix("")
        w_plus, meta = load_latent(out / f"{stem}.pt")
        assert w_plus.shape == (model.n_styles, 512) and w_plus.dtype == torch.float32
        torch.testing.assert_close(w_plus, _encode(model, source), rtol=1e-5, atol=1e-5)
        assert meta["source"] == str(source) and meta["n_styles"] == model.n_styles
        assert meta["input_size"] == 32 and len(meta["checkpoint_sha256"]) == 64
        assert Path(meta["checkpoint"]) == checkpoint.resolve()
    header, *records = _records(out)
    assert header["type"] == "run" and header["infer"]["batch_size"] == 2 and header["inputs"] == 5
    assert [r["status"] for r in records] == ["ok"] * 5
    assert [r["input"] for r in records] == [str(s) for s in sorted(sources, key=lambda p: p.relative_to(photos).as_posix())]
    assert all(r["checkpoint_sha256"] == header["checkpoint_sha256"] for r in records)
    assert _tree(out) == ["a.pt", "b.pt", "manifest.jsonl", "sub", "sub/c.pt", "sub/d.pt", "sub/deeper",
                          "sub/deeper/e.pt"]


def test_workers_npy_and_batches_give_the_same_codes(photos, checkpoint, model, tmp_path):
    out = tmp_path / "out"
    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--format", "npy", "--batch-size", 3,
                 "--workers", 2) == 0
    codes = np.load(out / "sub" / "c.npy")
    assert codes.dtype == np.float32 and codes.shape == (model.n_styles, 512)
    torch.testing.assert_close(torch.from_numpy(codes), _encode(model, photos / "sub" / "c.webp"),
                               rtol=1e-5, atol=1e-5)


def test_images_and_side_by_side(photos, checkpoint, model, tmp_path):
    assert infer(photos / "a.jpg", "--out", tmp_path / "o1", "--checkpoint", checkpoint, "--save-images",
                 "--workers", 0) == 0
    assert infer(photos / "a.jpg", "--out", tmp_path / "o2", "--checkpoint", checkpoint, "--side-by-side",
                 "--workers", 0) == 0
    with torch.inference_mode():
        expected = model.decode(_encode(model, photos / "a.jpg")[None], resize=True)[0]
    with Image.open(tmp_path / "o1" / "a.png") as single, Image.open(tmp_path / "o2" / "a.png") as pair:
        h, w = expected.shape[-2:]
        assert single.size == (w, h) and pair.size == (2 * w, h)
        pixels = torch.from_numpy(np.array(single)).permute(2, 0, 1).float() / 127.5 - 1
        assert (pixels - expected.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6
        assert np.array_equal(np.asarray(pair)[:, w:], np.asarray(single))
    assert _records(tmp_path / "o1")[1]["image"] == "a.png"


def test_bad_inputs_are_recorded_and_skipped(photos, checkpoint, tmp_path, capsys):
    good = photos / "a.jpg"
    png = (photos / "b.png").read_bytes()
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (photos / "truncated.png").write_bytes(png[: len(png) // 2])
    (photos / "empty.png").write_bytes(b"")
    (photos / "text.jpg").write_text("hello, I am not a picture\n")
    _photo(photos / "tiny.png", (8, 8))
    (photos / "folder.png").mkdir()  # listed explicitly below: unreadable as a file
    listing = tmp_path / "list.txt"
    listing.write_text(f"{photos / 'folder.png'}\n{photos / 'gone.jpg'}\n")
    out = tmp_path / "out"
    code = infer(photos, f"@{listing}", "--out", out, "--checkpoint", checkpoint, "--workers", 2)
    assert code == 1
    records = {Path(r["input"]).name: r for r in _records(out)[1:]}
    reasons = {name: r["error"] for name, r in records.items() if r["status"] == "failed"}
    assert set(reasons) == {"corrupt.jpg", "truncated.png", "empty.png", "text.jpg", "tiny.png",
                            "folder.png", "gone.jpg"}
    assert reasons["empty.png"] == "empty file"
    assert reasons["truncated.png"] == "truncated image"
    assert reasons["text.jpg"].startswith("not an image")
    assert reasons["tiny.png"].startswith("too small")
    assert reasons["gone.jpg"] == "file not found"
    assert reasons["folder.png"].startswith("cannot read")
    assert {n for n, r in records.items() if r["status"] == "ok"} == {"a.jpg", "b.png", "c.webp", "d.png", "e.bmp"}
    assert (out / "a.pt").is_file() and not (out / "empty.pt").exists()
    stderr = capsys.readouterr().err
    assert f"failed: {photos / 'empty.png'}: empty file" in stderr
    assert "inverted 5, failed 7, skipped 0" in stderr
    assert good.is_file()


def test_same_stems_and_list_files(tmp_path, checkpoint):
    _photo(tmp_path / "in" / "x.jpg", seed=1)
    _photo(tmp_path / "in" / "x.png", seed=2)
    listing = tmp_path / "in" / "pick.txt"
    listing.write_text("# two of them\nx.jpg\n\nx.png\n")
    assert infer(f"@{listing}", "--out", tmp_path / "out", "--checkpoint", checkpoint, "--workers", 0) == 0
    assert _tree(tmp_path / "out") == ["manifest.jsonl", "x.jpg.pt", "x.png.pt"]
    a, b = (load_latent(tmp_path / "out" / n)[0] for n in ("x.jpg.pt", "x.png.pt"))
    assert not torch.equal(a, b)


def test_flags_win_over_overrides_and_config_files(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("infer:\n  batch_size: 16\n  format: npy\n  num_workers: 1\n")
    assert infer("--config", config, "infer.batch_size=8", "infer.device=cpu", "--batch-size", 3,
                 "--print-config") == 0
    printed = capsys.readouterr().out
    assert "batch_size: 3" in printed and "format: npy" in printed and "device: cpu" in printed
    assert "num_workers: 1" in printed


def test_bf16_on_cpu_is_close_to_fp32(photos, checkpoint, model, tmp_path):
    out = tmp_path / "out"
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--precision", "bf16",
                 "--workers", 0) == 0
    codes, reference = load_latent(out / "a.pt")[0], _encode(model, photos / "a.jpg")
    assert codes.dtype == torch.float32
    assert (codes - reference).abs().max() <= 0.05 * reference.abs().max()


def test_refine_hook_changes_the_codes(photos, checkpoint, model, tmp_path):
    out = tmp_path / "out"
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--refine-steps", 3,
                 "refine.lpips=0", "refine.lr=0.05", "--workers", 0) == 0
    codes, meta = load_latent(out / "a.pt")
    assert meta["refine_steps"] == 3
    assert not torch.allclose(codes, _encode(model, photos / "a.jpg"))


def test_align_failures_are_per_image(photos, checkpoint, tmp_path):
    pytest.importorskip("facenet_pytorch")
    out = tmp_path / "out"
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--align", "--workers", 0) == 1
    (record,) = _records(out)[1:]
    assert record["status"] == "failed" and record["error"] == "no face found in the image"


def test_infer_py_entry_point(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "infer.py"), "nothing.jpg", "--out", "o"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: input 'nothing.jpg' does not exist\n"


# ---------------------------------------------------------------------------------------------
# Usage errors: exit code 2, one line on stderr, nothing written


def _not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"some": torch.zeros(3)}, path)
    return path


USAGE_ERRORS = {
    "missing checkpoint": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", t / "nope.pt"],
                           "does not exist"),
    "checkpoint of random bytes": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint",
                                                 (t / "photos" / "a.jpg")], "not a readable PyTorch checkpoint"),
    "checkpoint that is not a model": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint",
                                                     _not_a_model(t)], "not a pSp model file"),
    "no input": (lambda t, c: ["--out", t / "out", "--checkpoint", c], "no input given"),
    "no --out": (lambda t, c: [t / "photos", "--checkpoint", c], "--out DIR is required"),
    "missing input": (lambda t, c: [t / "nope", "--out", t / "out", "--checkpoint", c], "does not exist"),
    "empty folder": (lambda t, c: [(t / "empty").mkdir() or t / "empty", "--out", t / "out", "--checkpoint", c],
                     "no images found"),
    "out inside input": (lambda t, c: [t / "photos", "--out", t / "photos" / "out", "--checkpoint", c],
                         "inside the input folder"),
    "out is a file": (lambda t, c: [t / "photos", "--out", t / "photos" / "a.jpg", "--checkpoint", c],
                      "is a file"),
    "list without @": (lambda t, c: [(t / "l.txt").write_text("a.jpg\n") and t / "l.txt", "--out", t / "out",
                                     "--checkpoint", c], "write @"),
    "unknown key": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "infer.batchsize=2"],
                    "did you mean 'infer.batch_size'"),
    "bad batch size": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "--batch-size", 0],
                       "infer.batch_size"),
    "bad flag value": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "--batch-size", "x"],
                       "invalid int value"),
    "bad precision": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "--precision", "fp8"],
                      "invalid choice"),
    "bad device": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "--device", "tpu"],
                   "use auto, cpu, cuda or cuda:N"),
    "fp16 on cpu": (lambda t, c: [t / "photos", "--out", t / "out", "--checkpoint", c, "--device", "cpu",
                                  "--precision", "fp16"], "fp16 needs a CUDA device"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_write_nothing(case, photos, checkpoint, tmp_path, capsys):
    make_argv, message = USAGE_ERRORS[case]
    argv = make_argv(tmp_path, checkpoint)
    before = _tree(tmp_path)
    assert infer(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert _tree(tmp_path) == before


def test_existing_manifest_needs_resume(photos, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--workers", 0) == 0
    manifest = (out / "manifest.jsonl").read_text()
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--workers", 0) == 2
    assert "--resume" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    PSP.from_config(load_config([], TINY_PSP, command="model").model).save(other)
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", other, "--resume", "--workers", 0) == 2
    assert "checkpoint sha256" in capsys.readouterr().err
    assert (out / "manifest.jsonl").read_text() == manifest


# ---------------------------------------------------------------------------------------------
# render


def test_render_reproduces_the_saved_reconstructions(photos, checkpoint, tmp_path):
    out = tmp_path / "out"
    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--save-images", "--workers", 0) == 0
    (out / "sub" / "broken.pt").write_bytes(b"not a latent")
    rendered = tmp_path / "rendered"
    # No --checkpoint: the one recorded in the latent files.
    assert main(["render", str(out), "--out", str(rendered), "--batch-size", "2", "--quiet"]) == 1
    for latent in out.rglob("*.pt"):
        if latent.name == "broken.pt":
            continue
        rel = latent.relative_to(out).with_suffix(".png")
        with Image.open(rendered / rel) as a, Image.open(out / rel) as b:
            # Other batch sizes may pick the other (equivalent) modulated-conv form: float noise.
            difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
            assert difference.max() <= 1 and difference.mean() < 0.01, rel
    assert not (rendered / "sub" / "broken.png").exists()


def test_render_npy_needs_a_checkpoint(photos, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer(photos / "a.jpg", "--out", out, "--checkpoint", checkpoint, "--format", "npy",
                 "--workers", 0) == 0
    assert main(["render", str(out / "a.npy"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "pass --checkpoint" in capsys.readouterr().err
    assert main(["render", str(out / "a.npy"), "--out", str(tmp_path / "r"), "--checkpoint", str(checkpoint),
                 "--full-resolution", "--quiet"]) == 0
    with Image.open(tmp_path / "r" / "a.png") as img:
        assert img.size == (32, 32)


# ---------------------------------------------------------------------------------------------
# A run killed mid-way, then resumed

# infer.py with a sleep in each encode, so the test can SIGKILL it part-way through.
SLOW_INFER = """
import sys, time
import psp.models.model
encode = psp.models.model.PSP.encode
psp.models.model.PSP.encode = lambda self, x: (time.sleep(0.25), encode(self, x))[1]
from psp.cli.infer import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_to_the_uninterrupted_result(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    for i in range(12):
        _photo(photos / f"{i // 4}" / f"{i:02d}.png", (40 + i, 40), seed=i)
    reference, out = tmp_path / "reference", tmp_path / "out"
    # Batch 1 and one thread everywhere: bit-identical results (other batch sizes agree to ~1e-6).
    assert infer(photos, "--out", reference, "--checkpoint", checkpoint, "--batch-size", 1, "--workers", 0) == 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INFER, str(photos), "--out", str(out), "--checkpoint",
                             str(checkpoint), "--batch-size", "1", "--workers", "1", "--quiet"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and manifest.read_text().count('"status": "ok"') >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done_before = sum(r.get("status") == "ok" for r in _records(out))
    assert 3 <= done_before < 12

    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--resume", "--batch-size", 1,
                 "--workers", 2) == 0
    assert _tree(out) == _tree(reference)  # every output, and no temporary files left behind
    for latent in reference.rglob("*.pt"):
        expected, _ = load_latent(latent)
        resumed, _ = load_latent(out / latent.relative_to(reference))
        assert torch.equal(resumed, expected), latent
    records = _records(out)
    runs = [i for i, r in enumerate(records) if r["type"] == "run"]
    assert len(runs) == 2
    first, second = records[runs[0] + 1:runs[1]], records[runs[1] + 1:]
    assert {r["status"] for r in first} == {"ok"}
    assert sorted(r["output"] for r in second) == sorted(r["output"] for r in _records(reference)[1:])
    assert sum(r["status"] == "skipped" for r in second) == done_before
    assert {r["output"] for r in second if r["status"] == "skipped"} == {r["output"] for r in first}
    assert {r["status"] for r in second} <= {"ok", "skipped"}
    # A second resume has nothing left to do.
    assert infer(photos, "--out", out, "--checkpoint", checkpoint, "--resume", "--workers", 0) == 0
    assert {r["status"] for r in _records(out)[len(records) + 1:]} == {"skipped"}

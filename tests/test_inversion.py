"""The inversion engine's parts: output naming, input lists, files, manifest, resume state, devices."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from psp.errors import InputError
from psp.inference.engine import autocast_for, resolve_device
from psp.inference.jobs import check_output_folder, collect_jobs, finished_outputs, plan_jobs
from psp.inference.outputs import LatentFileError, Manifest, load_latent, read_manifest, save_latent, save_png
from psp.inference.stream import stream_images
from psp.io.atomic import atomic_write


def _image(path: Path, size=(40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def _stems(jobs):
    return [job.stem for job in jobs]


# ---------------------------------------------------------------------------------------------
# Output naming


def test_outputs_mirror_a_single_folder(tmp_path):
    for rel in ("b.jpg", "sub/a.png", "sub/deeper/c.webp"):
        _image(tmp_path / "in" / rel)
    jobs, folders = collect_jobs([str(tmp_path / "in")])
    assert _stems(jobs) == ["b", "sub/a", "sub/deeper/c"]
    assert folders == [tmp_path / "in"]


def test_same_stem_keeps_the_extension(tmp_path):
    for rel in ("a.jpg", "a.png", "b.jpg"):
        _image(tmp_path / rel)
    jobs, _ = collect_jobs([str(tmp_path)])
    assert _stems(jobs) == ["a.jpg", "a.png", "b"]


def test_collisions_left_after_the_extension_rule_get_numbers(tmp_path):
    files = [tmp_path / "A.jpg", tmp_path / "a.jpg", tmp_path / "a.jpg.png"]
    jobs = plan_jobs(files, [tmp_path])
    stems = _stems(jobs)
    assert len({s.casefold() for s in stems}) == 3, stems
    assert stems[0] == "A.jpg"


def test_several_inputs_mirror_their_common_folder(tmp_path):
    _image(tmp_path / "clips/one/0001.png")
    _image(tmp_path / "clips/two/0001.png")
    _image(tmp_path / "clips/extra.jpg")
    jobs, _ = collect_jobs([str(tmp_path / "clips/one"), str(tmp_path / "clips/two"),
                            str(tmp_path / "clips/extra.jpg")])
    assert _stems(jobs) == ["one/0001", "two/0001", "extra"]


def test_the_same_file_twice_is_inverted_once(tmp_path):
    path = _image(tmp_path / "x.png")
    jobs, _ = collect_jobs([str(path), str(tmp_path)])
    assert [j.source for j in jobs] == [path]


# ---------------------------------------------------------------------------------------------
# Input lists and input errors


def test_list_file_entries_are_relative_to_the_list(tmp_path):
    _image(tmp_path / "data/p/one.png")
    _image(tmp_path / "data/q/two.png")
    listing = tmp_path / "data/list.txt"
    listing.write_text("# my photos\n\np/one.png\n  q/two.png  \n# q/skipped.png\nmissing.png\n")
    jobs, folders = collect_jobs([f"@{listing}"])
    assert [j.source for j in jobs] == [tmp_path / "data/p/one.png", tmp_path / "data/q/two.png",
                                        tmp_path / "data/missing.png"]
    assert _stems(jobs) == ["p/one", "q/two", "missing"]
    assert folders == []


@pytest.mark.parametrize("spec, message", [
    ("nothing-here", "does not exist"),
    ("@nothing.txt", "list file 'nothing.txt' does not exist"),
    ("empty", "no images found"),
    ("paths.txt", "write @"),
])
def test_input_mistakes_are_usage_errors(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("not an image")
    (tmp_path / "paths.txt").write_text("a.png\n")
    with pytest.raises(InputError, match=message):
        collect_jobs([spec])


def test_out_checks(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output_folder(tmp_path / "file", [tmp_path / "in"])
    with pytest.raises(InputError, match="inside the input folder"):
        check_output_folder(tmp_path / "in" / "out", [tmp_path / "in"])
    with pytest.raises(InputError, match="inside the input folder"):
        check_output_folder(tmp_path / "in", [tmp_path / "in"])
    check_output_folder(tmp_path / "new" / "out", [tmp_path / "in"])  # fine, created later


# ---------------------------------------------------------------------------------------------
# Files


def test_latent_files_round_trip(tmp_path):
    w = torch.randn(14, 512, dtype=torch.float64)
    save_latent(tmp_path / "a.pt", w, {"source": "x.jpg", "n_styles": 14})
    save_latent(tmp_path / "a.npy", w, {"ignored": True})
    loaded, meta = load_latent(tmp_path / "a.pt")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, w.float())
    assert meta["source"] == "x.jpg" and meta["format"] == "psp-latent"
    array = np.load(tmp_path / "a.npy")
    assert array.dtype == np.float32 and array.shape == (14, 512)
    assert torch.equal(load_latent(tmp_path / "a.npy")[0], w.float())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.pt"]  # no temporary files left


def test_a_latent_file_holds_only_its_own_row(tmp_path):
    batch = torch.randn(64, 14, 512)
    save_latent(tmp_path / "a.pt", batch[3], {})
    assert (tmp_path / "a.pt").stat().st_size < 2 * 14 * 512 * 4
    assert torch.equal(load_latent(tmp_path / "a.pt")[0], batch[3])


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable PyTorch checkpoint"),
    (b"garbage" * 10, "not a readable PyTorch checkpoint"),
    ({"other": torch.zeros(2)}, "no 'w_plus'"),
    (torch.zeros(3, 4, 5), "expected float W\\+ codes"),
])
def test_bad_latent_files(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(LatentFileError, match=message):
        load_latent(path)


def test_bad_npy_latent(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(LatentFileError, match="bad.npy: not a readable latent file"):
        load_latent(tmp_path / "bad.npy")


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_save_png(tmp_path):
    image = torch.linspace(-1, 1, 3 * 8 * 6).reshape(3, 8, 6)
    save_png(tmp_path / "sub" / "x.png", image)
    with Image.open(tmp_path / "sub" / "x.png") as img:
        assert img.size == (6, 8) and img.mode == "RGB"


# ---------------------------------------------------------------------------------------------
# Manifest and resume state


def test_manifest_is_locked_and_survives_a_torn_line(tmp_path):
    with Manifest(tmp_path) as manifest:
        manifest.write([{"type": "run", "checkpoint_sha256": "abc"}])
        with pytest.raises(BlockingIOError):
            Manifest(tmp_path)
    with open(tmp_path / Manifest.NAME, "a") as f:
        f.write('{"type": "input", "output": "torn')  # a run killed mid-line
    with Manifest(tmp_path) as manifest:
        manifest.write([{"type": "input", "output": "a.pt", "status": "ok"}])
    records = list(read_manifest(tmp_path / Manifest.NAME))
    assert records == [{"type": "run", "checkpoint_sha256": "abc"},
                        {"type": "input", "output": "a.pt", "status": "ok"}]


def _manifest(folder: Path, *records):
    (folder / Manifest.NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_finished_outputs_follow_the_latest_line(tmp_path):
    _manifest(tmp_path, {"type": "run", "checkpoint_sha256": "abc"},
              {"type": "input", "output": "a.pt", "status": "ok"},
              {"type": "input", "output": "b.pt", "status": "failed"},
              {"type": "input", "output": "c.pt", "status": "ok"},
              {"type": "run", "checkpoint_sha256": "abc"},
              {"type": "input", "output": "c.pt", "status": "failed"},
              {"type": "input", "output": "a.pt", "status": "skipped"})
    assert finished_outputs(tmp_path, resume=True, checkpoint_sha256="abc") == {"a.pt"}


def test_resume_rules(tmp_path):
    assert finished_outputs(tmp_path, resume=False, checkpoint_sha256="abc") == set()  # fresh folder
    _manifest(tmp_path, {"type": "run", "checkpoint_sha256": "abc"})
    with pytest.raises(InputError, match="--resume"):
        finished_outputs(tmp_path, resume=False, checkpoint_sha256="abc")
    with pytest.raises(InputError, match="checkpoint sha256"):
        finished_outputs(tmp_path, resume=True, checkpoint_sha256="def")


# ---------------------------------------------------------------------------------------------
# Devices, precision, streaming


def test_devices_and_precisions():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(InputError, match="fp16 needs a CUDA device"):
        autocast_for(torch.device("cpu"), "fp16")
    with autocast_for(torch.device("cpu"), "bf16")():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_keeps_order_reports_failures_and_the_last_batch(tmp_path, workers):
    paths = [_image(tmp_path / f"{i}.png") for i in range(5)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "bad.png")
    batches = list(stream_images([paths], 32, batch_size=4, num_workers=workers))
    assert [b.indices for b in batches] == [[0, 1, 3], [4, 5]]
    assert batches[0].failures == [(2, "not an image (unknown or unsupported format)")]
    assert batches[0].images.shape == (3, 1, 3, 32, 32) and batches[1].images.shape == (2, 1, 3, 32, 32)
    assert batches[0].images.min() >= -1 and batches[0].images.max() <= 1

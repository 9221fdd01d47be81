"""Sharded inversion: ranks from the environment, exactly-once splits, manifest parts and merging,
a 2-process CPU run against a single-process one, a killed rank, resume with another rank count."""
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

from psp.cli.infer import main
from psp.errors import InputError
from psp.inference.outputs import Manifest, load_latent
from psp.inference.shards import (PARTS_DIR, Shard, ShardFiles, current_shard, history, latest_status, merge_parts,
                                  parse_shard, ranks_from_environment, remove_coordination_files, wait_for_shards)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Ranks and splits


def test_ranks_from_torchrun_srun_and_none():
    assert ranks_from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    step = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16"}
    assert ranks_from_environment(step) == (5, 16, 1)
    # A batch script sees the allocation's task count but is one process: not a launch.
    assert ranks_from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}) == (0, 1, 0)
    assert ranks_from_environment({}) == (0, 1, 0)
    with pytest.raises(InputError, match="RANK/WORLD_SIZE = 2/2"):
        ranks_from_environment({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(InputError, match="WORLD_SIZE='two'"):
        ranks_from_environment({"RANK": "0", "WORLD_SIZE": "two"})


def test_shard_flag_and_its_combination_with_ranks():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)
    assert current_shard(None, {}) == Shard(0, 1)
    assert current_shard(None, {"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2, launched=True)
    # Array task 1 of 3, each with 4 ranks: global shard 1 * 4 + 2 of 12; array shards never wait.
    combined = current_shard("1/3", {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"})
    assert combined == Shard(6, 12, local_rank=2, launched=True, array=True) and not combined.waits_for_others
    assert current_shard("1/3", {}) == Shard(1, 3, array=True)
    assert Shard(0, 2, launched=True).waits_for_others and not Shard(1, 2, launched=True).waits_for_others


@pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
def test_shards_cover_every_job_exactly_once(count):
    jobs = list(range(17))
    picked = [job for index in range(count) for job in Shard(index, count).select(jobs)]
    assert sorted(picked) == jobs
    sizes = [len(Shard(index, count).select(jobs)) for index in range(count)]
    assert max(sizes) - min(sizes) <= 1


# ---------------------------------------------------------------------------------------------
# Parts, merging and waiting


def _part(out: Path, index: int, count: int, started: str, *records: dict) -> Path:
    path = out / PARTS_DIR / f"rank-{index:05d}-of-{count:05d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"type": "run", "started": started, "checkpoint_sha256": "abc"}
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in (header, *records))
    return path


def _input(output: str, status: str) -> dict:
    return {"type": "input", "output": output, "status": status}


def test_merge_orders_runs_by_start_and_leaves_running_parts(tmp_path):
    (tmp_path / Manifest.NAME).write_text(json.dumps({"type": "run", "started": "2020"}) + "\n"
                                          + json.dumps(_input("a.pt", "failed")) + "\n")
    # The later run (rank 0 of 3) must come after the earlier one (rank 1 of 2), whatever the names.
    _part(tmp_path, 0, 3, "2022", _input("b.pt", "ok"))
    late = _part(tmp_path, 1, 2, "2021", _input("b.pt", "failed"), _input("a.pt", "ok"))
    with open(late, "a") as f:
        f.write('{"type": "input", "output": "c.pt", "sta')  # torn by a kill
    with Manifest(tmp_path, f"{PARTS_DIR}/rank-00001-of-00003.jsonl") as running:
        running.write([{"type": "run", "started": "2023"}, _input("c.pt", "ok")])
        result = merge_parts(tmp_path)
        assert result.merged == ["rank-00000-of-00003.jsonl", "rank-00001-of-00002.jsonl"]
        assert result.running == ["rank-00001-of-00003.jsonl"]
        assert latest_status(history(tmp_path)) == {"a.pt": "ok", "b.pt": "ok", "c.pt": "ok"}
        remove_coordination_files(tmp_path)
        assert (tmp_path / PARTS_DIR).is_dir()  # a part is left: keep the folder
    merged = [json.loads(line) for line in (tmp_path / Manifest.NAME).read_text().splitlines()]
    assert [r.get("started") for r in merged if r["type"] == "run"] == ["2020", "2021", "2022"]
    assert merge_parts(tmp_path).merged == ["rank-00001-of-00003.jsonl"]
    remove_coordination_files(tmp_path)
    assert not (tmp_path / PARTS_DIR).exists()
    assert latest_status(history(tmp_path))["c.pt"] == "ok"


def test_wait_takes_markers_and_gives_up_on_a_silent_rank(tmp_path):
    files = ShardFiles(tmp_path, Shard(0, 3, launched=True))
    files.folder.mkdir()
    ShardFiles(tmp_path, Shard(1, 3)).write_done("list-a", {"ok": 1})
    ShardFiles(tmp_path, Shard(2, 3)).write_done("list-b", {"ok": 1})  # another job list: not ours
    files.write_done("list-a", {"ok": 2})
    start = time.monotonic()
    done, stopped = wait_for_shards(files, "list-a", timeout=0.3, poll=0.05)
    assert sorted(done) == [0, 1] and stopped == [2]
    assert 0.3 <= time.monotonic() - start < 5


# ---------------------------------------------------------------------------------------------
# End to end on a tiny model


def _photo(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def photos(tmp_path) -> Path:
    """11 good images in three folders, and two bad ones."""
    root = tmp_path / "photos"
    for i in range(11):
        _photo(root / f"{i % 3}" / f"{i:02d}.png", (36 + i, 40), seed=i)
    (root / "bad.jpg").write_bytes(b"not an image")
    good = (root / "0" / "00.png").read_bytes()
    (root / "2" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


BAD = {"bad.pt", "2/truncated.pt"}

# infer.py with a sleep in each encode (rank 1 of the kill test is slow enough to be killed mid-way).
SLOW = """
import sys, time
import psp.models.inference
encode = psp.models.inference.InferenceModel.encode
psp.models.inference.InferenceModel.encode = lambda self, x: (time.sleep(0.4), encode(self, x))[1]
from psp.cli.infer import main
sys.exit(main(sys.argv[1:]))
"""
FAST = "import sys\nfrom psp.cli.infer import main\nsys.exit(main(sys.argv[1:]))\n"


def _launch(rank: int, world: int, args: list, code: str = FAST) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args), "--quiet"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / Manifest.NAME).read_text().splitlines()]


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _assert_same_latents(out: Path, reference: Path) -> None:
    assert _tree(out) == _tree(reference)  # same files, no parts, markers or temporary files left
    for latent in reference.rglob("*.pt"):
        expected, _ = load_latent(latent)
        torch.testing.assert_close(load_latent(out / latent.relative_to(reference))[0], expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.fixture
def reference(photos, checkpoint, tmp_path) -> Path:
    out = tmp_path / "reference"
    assert main([str(photos), "--out", str(out), "--checkpoint", str(checkpoint), "--batch-size", "2",
                 "--workers", "0", "--quiet"]) == 1  # the two bad images
    return out


def test_two_ranks_equal_one_process(photos, checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    args = [photos, "--out", out, "--checkpoint", checkpoint, "--batch-size", 2, "--workers", 1]
    procs = [_launch(rank, 2, args) for rank in (1, 0)]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], errors  # each rank got one bad image
    assert "all 2 shards done: 11 of 13 inputs inverted, 2 failed" in errors[1]
    _assert_same_latents(out, reference)
    records = [r for r in _records(out) if r["type"] == "input"]
    expected = {r["output"]: r["status"] for r in _records(reference) if r["type"] == "input"}
    assert len(records) == len(expected) == 13  # every input exactly once
    assert {r["output"]: r["status"] for r in records} == expected
    assert {o for o, s in expected.items() if s == "failed"} == BAD
    headers = [r for r in _records(out) if r["type"] == "run"]
    assert sorted(h["shard"]["index"] for h in headers) == [0, 1] and {h["inputs"] for h in headers} == {6, 7}


def test_killed_rank_then_resume_with_three_shards(photos, checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    args = [photos, "--out", out, "--checkpoint", checkpoint, "--batch-size", 1, "--workers", 0,
            "infer.shard_timeout=3"]
    rank0, rank1 = _launch(0, 2, args), _launch(1, 2, args, SLOW)
    part = out / PARTS_DIR / "rank-00001-of-00002.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and rank1.poll() is None:
        if part.is_file() and part.read_text().count('"status": "ok"') >= 2:
            break
        time.sleep(0.05)
    assert rank1.poll() is None, rank1.stderr.read()
    rank1.send_signal(signal.SIGKILL)
    rank1.communicate()
    _, error = rank0.communicate(timeout=240)
    assert rank0.returncode == 3, error  # incomplete; the message says what is missing
    assert "inputs missing (shard(s) 1 of 2 stopped before finishing)" in error and "--resume" in error
    status = latest_status(history(out))
    assert 2 <= sum(s == "ok" for o, s in status.items() if o not in BAD) < 11

    # Resume with another number of shards (array-style, one after the other): only the rest is done.
    codes = [main([str(a) for a in args] + ["--resume", "--shard", f"{i}/3", "--quiet"]) for i in range(3)]
    assert codes == [1, 0, 1]  # the bad images fail again (shards 0 and 2); 2, the last, reports the run
    _assert_same_latents(out, reference)
    records = _records(out)
    resumed = [r for r in records if r["type"] == "input" and r.get("status") != "skipped"]
    # Across both launches, every good input was inverted exactly once.
    ok = [r["output"] for r in records if r["type"] == "input" and r["status"] == "ok"]
    assert sorted(ok) == sorted(o for o, s in latest_status(iter(_records(reference))).items() if s == "ok")
    assert {r["output"] for r in resumed if r["status"] == "failed"} == BAD


def test_array_shards_merge_on_the_last_and_merge_command(photos, checkpoint, reference, tmp_path, capsys):
    out = tmp_path / "out"
    base = [str(photos), "--out", str(out), "--checkpoint", str(checkpoint), "--batch-size", "2", "--workers", "0",
            "--quiet"]
    assert main(base + ["--shard", "2/3"]) in (0, 1)
    assert "not finished yet: shard(s) 0-1" in capsys.readouterr().err
    assert main(base + ["--shard", "0/3", "--profile"]) in (0, 1)
    err = capsys.readouterr().err
    for stage in ("load", "encode", "write"):
        assert f"  {stage} " in err and "images/s" in err
    assert main(["--merge", str(out)]) == 1  # shard 2/3's bad image
    assert "merged 0 part(s)" in capsys.readouterr().err  # each shard already merged what had ended
    done_two = latest_status(history(out))
    assert len(done_two) == 9 and (out / PARTS_DIR / "rank-00000-of-00003.done").is_file()
    # Without --resume a shard of another rank count is an earlier run: refused, nothing written.
    assert main(base + ["--shard", "1/2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(base + ["--shard", "1/3"]) == 1
    assert "all 3 shards done: 11 of 13 inputs inverted, 2 failed" in capsys.readouterr().err
    _assert_same_latents(out, reference)
    assert len([r for r in _records(out) if r["type"] == "input"]) == 13

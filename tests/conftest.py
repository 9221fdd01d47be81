"""Shared pytest set-up: one CPU thread, CUDA marker handling, a fixed seed."""
import os

# Tiny test models gain nothing from threads, and OpenMP threads on a busy 2-core machine spin
# against each other (measured 20-100x slower). Set before torch starts its thread pool;
# subprocesses started by tests inherit it through the environment.
os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `cuda` when no CUDA device is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# Overrides of a tiny pSp model (32 px generator, 4-stage encoder of width 8..64): builds in a second.
TINY_PSP = ["model.generator.size=32", "model.generator.channel_max=16", "model.encoder.layers=[1,1,1,1]",
            "model.encoder.widths=[8,16,32,64]", "model.encoder.input_size=32",
            "model.w_avg.source=estimate", "model.w_avg.n_samples=256"]


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random pSp model file in our format (``PSP.save``), made once per session."""
    from psp.config import load_config
    from psp.models.model import PSP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    PSP.from_config(load_config([], TINY_PSP, command="model").model).save(path)
    return path

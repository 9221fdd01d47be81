"""Shared pytest set-up: one CPU thread, CUDA marker handling, a fixed seed."""
import os

# Tiny test models gain nothing from threads, and OpenMP threads on a busy 2-core machine spin
# against each other (measured 20-100x slower). Set before torch starts its thread pool;
# subprocesses started by tests inherit it through the environment.
os.environ["OMP_NUM_THREADS"] = "1"

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

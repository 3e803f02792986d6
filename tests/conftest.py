"""Shared fixtures: tiny MNIST-format IDX files so the real torchvision loader is exercised."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file (LeCun's format): magic 0x0000 08 <ndim>, big-endian int32 dims, uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def fake_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images: a bright bar whose position encodes the label, plus noise."""
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28))
    for i, y in enumerate(labels):
        r = 3 + 2 * y
        images[i, r:r + 3, 4:24] = rng.integers(180, 256, (3, 20))
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_mnist_root(root: Path, n_train: int = 600, n_test: int = 200, folder: str = "MNIST", seed: int = 0) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fake_digits(n, rng)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return make_mnist_root(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def relaxrun_exe() -> str:
    exe = shutil.which("relaxrun", path=os.path.dirname(sys.executable)) or shutil.which("relaxrun")
    if exe is None:
        pytest.fail("the relaxrun console script is not installed (pip install -e '.[dev]')")
    return exe


# --------------------------------------------------------------------------------------------------
# RELAXRUN_TEST_DEVICE=cuda (scripts/device_check.sh sets it): tensors the tests make without naming a
# device are made there (torch.set_default_device), so the in-process tests run on the GPU; whole
# relaxrun processes pick CUDA by themselves (device=auto) unless a test names device=cpu.

def pytest_sessionstart(session):
    device = os.environ.get("RELAXRUN_TEST_DEVICE", "")
    if not device:
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError(f"RELAXRUN_TEST_DEVICE={device} but torch.cuda.is_available() is False here")
    torch.set_default_device(device)

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
# Test tiers. `pytest` runs the default tier (quick: the mathematics, the configs, in-process runs);
# `pytest -m slow` runs the slow tier: whole relaxrun processes (sweeps, launchers, Ctrl-C through a
# pipe, kill -9, console scripts), TensorBoard's server, the benchmark smoke run, every method's
# resumed run. CI runs both. A test joins the slow tier here, by its file or its name.

SLOW_FILES = {"test_sweeps.py", "test_interrupt.py", "test_benchmark_smoke.py", "test_resume.py"}
SLOW_TESTS = {
    "test_cli.py": ("test_train_logs_checkpoints_and_resumes", "test_default_output_folders_and_nothing_else_in_cwd",
                    "test_multirun_job_folders_are_named_by_the_swept_keys", "test_missing_data_offline_names_the_files",
                    "test_bad_config_is_one_line_without_traceback"),
    "test_cli_ux.py": ("test_sweep_reports_jobs_done_and_names_jobs_by_swept_keys",
                       "test_saved_data_root_is_absolute_so_eval_works_from_anywhere",
                       "test_a_key_typo_names_the_key_and_suggests_the_right_one",
                       "test_an_output_folder_that_cannot_be_made_is_refused_before_hydra_writes"),
    "test_method_contract.py": ("test_twenty_steps_stay_finite_and_a_resumed_run_is_exact",),
    "test_evaluate.py": ("test_relaxrun_eval_updates_metrics_and_tensorboard",),
    "test_method_rebar.py": ("test_fit_control_lowers_the_variance_and_stays_unbiased",
                             "test_unbiased_at_fixed_control_parameters"),
    "test_bad_input.py": ("test_two_runs_in_one_folder_then_kill_9_leaves_no_stale_lock",
                          "test_a_sweep_killed_in_one_job_keeps_the_others_and_a_rerun_fills_the_gap",
                          "test_console_scripts_refuse_empty_and_nan_checkpoints", "test_numeric_keys_at_the_command_line",
                          "test_relaxrun_refuses_a_wrong_checksum_file_in_one_line",
                          "test_blocked_checkpoint_path_at_the_command_line"),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: the slow tier (whole processes); run with pytest -m slow")


def pytest_collection_modifyitems(config, items):
    for item in items:
        file = Path(str(item.fspath)).name
        name = item.originalname or item.name
        if file in SLOW_FILES or name in SLOW_TESTS.get(file, ()):
            item.add_marker(pytest.mark.slow)


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

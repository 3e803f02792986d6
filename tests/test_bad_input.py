"""Bad input is refused in one line naming the file or key, and nothing earlier is lost: damaged
checkpoints (resume and relaxrun-eval), damaged MNIST files, a full or read-only disk, every
numeric config key, two processes in one run folder, kill -9 during a checkpoint write and during
a sweep. TESTING.md lists every case with what the user sees.

In-process where the refusal is the point (fast), through the installed console scripts where the
command line's behaviour is (one stderr line, exit status, no traceback)."""

from __future__ import annotations

import copy
import csv
import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from relaxrun import config as config_module
from relaxrun import data as data_module
from relaxrun import runtime
from relaxrun.config import ConfigError, method_config, register_configs, validate
from relaxrun.data import DataError, load_images
from relaxrun.evaluate import main as eval_main
from relaxrun.methods import available_methods, get_method_class
from relaxrun.runtime import (CHECKPOINT, CHECKPOINT_VERSION, RunFolderBusy, TrainingError, WriteError,
                              load_checkpoint, run_folder_lock)
from relaxrun.train import train

from conftest import make_mnist_root, write_idx

register_configs()

FAST = ["model.hidden=[16]", "trainer.max_steps=2", "trainer.progress=false", "eval.iwae_samples=0",
        "trainer.images=2", "trainer.log_every=1", "device=cpu"]


def overrides(root, *extra) -> list[str]:
    """A tiny run on ``root``; ``extra`` overrides replace FAST's values of the same key."""
    keys = {e.split("=", 1)[0] for e in extra}
    fast = [f for f in FAST if f.split("=", 1)[0] not in keys]
    return ["method=relaxed_bernoulli", "method.latent_dim=8", f"data.root={root}", *fast, *extra]


def composed(*ov):
    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(ov))


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder, by relative path (the lock file is a run's own, and goes)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != runtime.LOCK}


def console(name: str) -> str:
    exe = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"the {name} console script is not installed (pip install -e '.[dev]')")
    return exe


def cli(exe: str, args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    env.pop("RELAXRUN_DATA_ROOT", None)
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(p, prefix: str) -> str:
    """The single stderr line of a refused command (exit status != 0, no traceback anywhere)."""
    assert p.returncode != 0, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(mnist_root, tmp_path_factory) -> Path:
    """A finished 2-step run: checkpoint.pt, metrics.json, tb/."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(composed(*overrides(mnist_root)), run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


# -- damaged checkpoints -------------------------------------------------------------------------

def _edit(change):
    def damage(good: bytes) -> bytes:
        ck = torch.load(io.BytesIO(good), weights_only=True)
        change(ck)
        buf = io.BytesIO()
        torch.save(ck, buf)
        return buf.getvalue()
    return damage


def _first(ck, prefix: str = "") -> str:
    return next(k for k in ck["model"] if k.startswith(prefix))


def _nan_param(ck):
    ck["model"][_first(ck)][0, 0] = float("nan")


def _inf_param(ck):
    ck["model"][_first(ck, "decoder")].view(-1)[-1] = float("inf")


def _nan_optimizer_state(ck):
    state = next(iter(ck["optimizers"]["main"]["state"].values()))
    state["exp_avg"].view(-1)[0] = float("nan")


def _drop_entries(ck):
    del ck["state"], ck["rng"]


DAMAGED = {
    "empty": (lambda good: b"", "is empty (0 bytes)"),
    "truncated": (lambda good: good[: len(good) // 2], "truncated or not a relaxrun checkpoint"),
    "nan_parameter": (_edit(_nan_param), "holds NaN values in model.encoder"),
    "inf_parameter": (_edit(_inf_param), "holds Inf values in model.decoder"),
    "nan_optimizer_state": (_edit(_nan_optimizer_state), "holds NaN values in optimizers.main.state"),
    "newer_version": (_edit(lambda ck: ck.update(format_version=CHECKPOINT_VERSION + 1)),
                      f"has format version {CHECKPOINT_VERSION + 1}; this relaxrun reads format version "
                      f"{CHECKPOINT_VERSION} (a newer relaxrun"),
    "version_0": (_edit(lambda ck: ck.update(format_version=0)), "has format version 0; this relaxrun reads"),
    "missing_entries": (_edit(_drop_entries), "not a complete relaxrun checkpoint (missing rng, state)"),
    "not_a_dict": (lambda good: _saved([1, 2, 3]), "holds a list, not a relaxrun checkpoint"),
}


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_checkpoints_carry_the_format_version(finished):
    ck = torch.load(finished / CHECKPOINT, weights_only=True)
    assert ck["format_version"] == CHECKPOINT_VERSION
    del ck["format_version"]  # written before the entry existed: the layout of version 1, still read
    legacy = finished.parent / "legacy.pt"
    torch.save(ck, legacy)
    assert load_checkpoint(legacy)["state"]["step"] == 2


@pytest.mark.parametrize("case", list(DAMAGED))
def test_resume_from_a_damaged_checkpoint_is_refused_and_nothing_changes(mnist_root, run_copy, case):
    damage, needle = DAMAGED[case]
    ckpt = run_copy / CHECKPOINT
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = snapshot(run_copy)
    with pytest.raises(TrainingError) as err:
        train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
    msg = str(err.value)
    assert needle in msg and str(ckpt) in msg and "\n" not in msg, msg
    assert snapshot(run_copy) == before  # the checkpoint byte for byte, metrics.json, tb/


@pytest.mark.parametrize("case", list(DAMAGED) + ["config_unreadable"])
def test_relaxrun_eval_of_a_damaged_checkpoint_is_refused_and_nothing_changes(run_copy, case, capsys):
    ckpt = run_copy / CHECKPOINT
    if case == "config_unreadable":
        damage, needle = _edit(lambda ck: ck.update(config="{not json")), "has no readable config"
    else:
        damage, needle = DAMAGED[case]
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = snapshot(run_copy)
    assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("relaxrun-eval: error:") and needle in err[0], err
    assert str(ckpt) in err[0]
    assert snapshot(run_copy) == before


def test_console_scripts_refuse_empty_and_nan_checkpoints(relaxrun_exe, mnist_root, run_copy, tmp_path):
    """The cases as first reported: relaxrun-eval printed a traceback for a zero-byte checkpoint and
    exited 0 with `kl: nan` for NaN parameters; resume=true trained on from NaN parameters."""
    ckpt = run_copy / CHECKPOINT
    good = ckpt.read_bytes()
    for case in ("empty", "nan_parameter"):
        damage, needle = DAMAGED[case]
        ckpt.write_bytes(damage(good))
        before = snapshot(run_copy)
        p = cli(console("relaxrun-eval"), [str(run_copy), "eval.iwae_samples=0"], cwd=tmp_path)
        assert p.returncode == 2 and needle in one_line_error(p, "relaxrun-eval: error:")
        assert snapshot(run_copy) == before
    before = {k: v for k, v in snapshot(run_copy).items() if not k.startswith(".hydra")}
    p = cli(relaxrun_exe, overrides(mnist_root, "resume=true", "trainer.max_steps=4", f"hydra.run.dir={run_copy}"),
            cwd=tmp_path)
    assert DAMAGED["nan_parameter"][1] in one_line_error(p, "relaxrun: error:")
    after = snapshot(run_copy)
    assert all(after[k] == v for k, v in before.items())  # error.txt and .hydra/ aside, all as before


def test_relaxrun_eval_refuses_bad_overrides_a_bad_metrics_file_and_nan_results(run_copy, capsys, monkeypatch):
    before = snapshot(run_copy)
    for args, needle in [(["eval.iwae_samples=abc"], "eval.iwae_samples"),
                         (["eval.iwae_samples=-1"], "eval.iwae_samples must be an integer >= 0"),
                         (["trainer.epoch=3"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
                         (["iwae"], "overrides must look like key=value")]:
        assert eval_main([str(run_copy), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (args, err)
    assert snapshot(run_copy) == before

    (run_copy / "metrics.json").write_text("{not json")
    before = snapshot(run_copy)
    assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 2
    assert "metrics.json" in capsys.readouterr().err
    assert snapshot(run_copy) == before

    # a checkpoint of finite numbers whose evaluation still comes out NaN: reported, nothing written
    import relaxrun.evaluate as evaluate_module

    nan = {k: float("nan") for k in ("neg_elbo", "recon", "kl", "relaxed_objective", "relaxed_recon", "relaxed_kl")}
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: nan)
    (run_copy / "metrics.json").write_text("{}")
    before = snapshot(run_copy)
    assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "non-finite neg_elbo" in err[-1]
    assert snapshot(run_copy) == before


def test_relaxrun_eval_with_damaged_data_files_names_the_file(run_copy, tmp_path, capsys):
    root = make_mnist_root(tmp_path / "data", 100, 50)
    bad = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    before = snapshot(run_copy)
    assert eval_main([str(run_copy), "eval.iwae_samples=0", f"data.root={root}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "truncated" in err[0]
    assert snapshot(run_copy) == before


# -- MNIST checksums -----------------------------------------------------------------------------

def _full_size_labels(raw: Path, split: str, n: int) -> Path:
    """A generated labels file of the original's size (so it is checked against the original's MD5)."""
    path = raw / f"{split}-labels-idx1-ubyte"
    write_idx(path, np.random.default_rng(1).integers(0, 10, n))
    return path


@pytest.mark.parametrize("name,n", [("train-labels-idx1-ubyte", 60000), ("t10k-labels-idx1-ubyte", 10000),
                                    ("t10k-images-idx3-ubyte", 10000)])
def test_a_file_of_the_original_size_with_another_md5_is_refused(tmp_path, name, n):
    root = make_mnist_root(tmp_path, 100, 50)
    path = root / "MNIST" / "raw" / name
    rng = np.random.default_rng(2)
    write_idx(path, rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n))
    size, md5 = data_module.ORIGINAL_FILES["mnist"][name]
    assert path.stat().st_size == size
    with pytest.raises(DataError) as err:
        load_images("mnist", str(root), "train" in name, download=False)
    msg = str(err.value)
    assert str(path) in msg and "MD5" in msg and md5 in msg and "damaged" in msg


def test_checksums_apply_only_to_files_of_the_original_size(tmp_path, monkeypatch):
    root = make_mnist_root(tmp_path, 100, 50)
    path = _full_size_labels(root / "MNIST" / "raw", "t10k", 10000)
    import hashlib

    size, _ = data_module.ORIGINAL_FILES["mnist"][path.name]
    table = dict(data_module.ORIGINAL_FILES["mnist"])
    table[path.name] = (size, hashlib.md5(path.read_bytes()).hexdigest())  # as if it were the original
    monkeypatch.setitem(data_module.ORIGINAL_FILES, "mnist", table)
    assert load_images("mnist", str(root), False, download=False).shape == (50, 784)
    # the other datasets have no table: a file of MNIST's size is checked as an IDX file only
    fashion = make_mnist_root(tmp_path / "f", 100, 50, folder="FashionMNIST")
    _full_size_labels(fashion / "FashionMNIST" / "raw", "t10k", 10000)
    assert load_images("fashion_mnist", str(fashion), False, download=False).shape == (50, 784)


def test_relaxrun_refuses_a_wrong_checksum_file_in_one_line(relaxrun_exe, tmp_path):
    root = make_mnist_root(tmp_path / "data", 100, 50)
    bad = _full_size_labels(root / "MNIST" / "raw", "train", 60000)
    p = cli(relaxrun_exe, overrides(root, f"hydra.run.dir={tmp_path / 'run'}"), cwd=tmp_path)
    line = one_line_error(p, "relaxrun: error:")
    assert str(bad) in line and "MD5" in line
    assert not (tmp_path / "run" / CHECKPOINT).exists()


# -- a full or read-only disk --------------------------------------------------------------------

class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a part is written first)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def disk_full_for(monkeypatch, name: str, room: int = 100) -> None:
    """Writes of ``<name>.tmp`` (relaxrun's atomic writes of ``name``) fail with ENOSPC."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f, room) if os.path.basename(path) == name + runtime.TMP_SUFFIX else f
    monkeypatch.setattr(runtime, "open", fake_open, raising=False)


@pytest.mark.parametrize("name", [CHECKPOINT, "metrics.json"])
def test_disk_full_while_writing_checkpoint_or_metrics_keeps_the_previous_file(mnist_root, run_copy, monkeypatch,
                                                                             name):
    before = snapshot(run_copy)
    disk_full_for(monkeypatch, name)
    with pytest.raises(WriteError) as err:
        train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
    msg = str(err.value)
    assert f"cannot write the {'checkpoint' if name == CHECKPOINT else 'file'} {run_copy / name}" in msg
    assert "No space left on device" in msg and "previous one is kept" in msg
    after = snapshot(run_copy)
    assert after[name] == before[name] and not (run_copy / (name + ".tmp")).exists()
    if name == CHECKPOINT:
        assert after["metrics.json"] == before["metrics.json"]
    monkeypatch.undo()
    assert load_checkpoint(run_copy / CHECKPOINT)["state"]["step"] == (2 if name == CHECKPOINT else 4)


def test_disk_full_while_writing_tensorboard_events(mnist_root, run_copy, monkeypatch, capfd):
    from tensorboard.summary.writer import record_writer

    before = snapshot(run_copy)
    real = record_writer.RecordWriter.write
    calls = {"n": 0}

    def write(self, data):
        calls["n"] += 1
        if calls["n"] > 3:  # the new events file is opened; the disk fills up a few records later
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    with pytest.raises(WriteError) as err:
        train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
    msg = str(err.value)
    assert f"cannot write the TensorBoard events in {run_copy / 'tb'}" in msg and "No space left" in msg, msg
    after = snapshot(run_copy)
    assert all(after[k] == v for k, v in before.items())  # new events file aside, everything as it was
    assert "Traceback" not in capfd.readouterr().err  # the writer thread's error is not printed


def test_read_only_run_folder_is_refused_before_any_work(mnist_root, run_copy, monkeypatch, capsys):
    real = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run_copy)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    before = snapshot(run_copy)
    with pytest.raises(WriteError, match=r"the run folder .* is not writable \(\[Errno 30\] Read-only file system"):
        train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
    assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert eval_main([str(run_copy), "eval.iwae_samples=0", "--no-write"]) == 0  # reading needs no lock
    assert snapshot(run_copy) == before


def test_check_run_folder_refuses_unwritable_and_busy_folders_creating_nothing(run_copy, tmp_path, monkeypatch):
    """The check a command line makes before Hydra writes .hydra/ and the log into the run folder."""
    from relaxrun.runtime import check_run_folder

    (tmp_path / "a_file").write_text("")
    with pytest.raises(WriteError, match=f"cannot create the run folder {tmp_path}/a_file/run: .* is a file"):
        check_run_folder(tmp_path / "a_file" / "run")
    check_run_folder(tmp_path / "new" / "run")  # can be made: fine, and nothing made yet
    assert not (tmp_path / "new").exists()
    before = snapshot(run_copy)
    with run_folder_lock(run_copy):
        with pytest.raises(RunFolderBusy, match=f"in use by another relaxrun process \\(pid {os.getpid()}\\)"):
            check_run_folder(run_copy)
    check_run_folder(run_copy)
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(WriteError, match=r"the run folder .* is not writable \(\[Errno 30\] Read-only file system"):
        check_run_folder(run_copy)
    with pytest.raises(WriteError, match=r"cannot create the run folder .*: .* is not writable \(\[Errno 30\]"):
        check_run_folder(tmp_path / "new" / "run")
    assert snapshot(run_copy) == before and not [n for n in os.listdir(run_copy) if n.startswith(".relaxrun-probe")]


def test_relaxrun_eval_on_a_full_disk_keeps_metrics(run_copy, monkeypatch, capsys):
    before = snapshot(run_copy)
    disk_full_for(monkeypatch, "metrics.json")
    assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert f"cannot write the file {run_copy / 'metrics.json'}" in err[-1] and "No space left" in err[-1]
    assert snapshot(run_copy)["metrics.json"] == before["metrics.json"]


def test_blocked_checkpoint_path_at_the_command_line(relaxrun_exe, mnist_root, run_copy, tmp_path):
    """A checkpoint that cannot be written (here its temporary path is taken by a folder): one line,
    the previous checkpoint and metrics.json kept."""
    (run_copy / (CHECKPOINT + ".tmp")).mkdir()
    before = snapshot(run_copy)
    p = cli(relaxrun_exe, overrides(mnist_root, "resume=true", "trainer.max_steps=4", f"hydra.run.dir={run_copy}"),
            cwd=tmp_path)
    line = one_line_error(p, "relaxrun: error:")
    assert f"cannot write the checkpoint {run_copy / CHECKPOINT}" in line and "Is a directory" in line
    after = snapshot(run_copy)
    assert after[CHECKPOINT] == before[CHECKPOINT] and after["metrics.json"] == before["metrics.json"]


# -- one process per run folder; kill -9 --------------------------------------------------------

def test_a_second_process_in_a_busy_run_folder_is_refused(mnist_root, run_copy, capsys):
    before = snapshot(run_copy)
    with run_folder_lock(run_copy):
        with pytest.raises(RunFolderBusy, match=f"the run folder {run_copy} is in use by another relaxrun process "
                                                f"\\(pid {os.getpid()}\\)"):
            train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
        assert eval_main([str(run_copy), "eval.iwae_samples=0"]) == 2
        assert "is in use by another relaxrun process" in capsys.readouterr().err
    assert snapshot(run_copy) == before
    assert not (run_copy / runtime.LOCK).exists()  # released and removed at exit
    train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)  # free again


def test_two_runs_in_one_folder_then_kill_9_leaves_no_stale_lock(relaxrun_exe, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(mnist_root, f"hydra.run.dir={run_dir}")
    first = subprocess.Popen([relaxrun_exe, *args, "trainer.max_steps=0", "trainer.epochs=100000",
                              "trainer.threads=1"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run_dir / CHECKPOINT).exists():  # the first run is training, holding the lock
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.1)
        before = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
        log_before = (run_dir / "relaxrun.log").read_bytes()
        p = cli(relaxrun_exe, args, cwd=tmp_path)
        line = one_line_error(p, "relaxrun: error:")
        assert f"the run folder {run_dir} is in use by another relaxrun process (pid {first.pid})" in line
        assert first.poll() is None  # the first run goes on, untouched
        # refused before Hydra starts: nothing of the second run is written into the first's folder
        assert {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == before
        assert not (run_dir / "error.txt").exists()
        assert (run_dir / "relaxrun.log").read_bytes().startswith(log_before)
        assert "in use by another" not in (run_dir / "relaxrun.log").read_text()
        step = load_checkpoint(run_dir / CHECKPOINT)["state"]["step"]
        time.sleep(0.5)
    finally:
        first.kill()  # SIGKILL: the kernel drops its flock; the lock file itself stays behind
        first.wait()
    assert (run_dir / runtime.LOCK).exists()
    assert load_checkpoint(run_dir / CHECKPOINT)["state"]["step"] >= step  # the last checkpoint loads
    runtime.check_run_folder(run_dir)  # not busy: the dead process's lock went with it
    metrics = train(composed(*overrides(mnist_root, "resume=true", "trainer.epochs=100000", "trainer.max_steps=1")),
                    run_dir)  # resumes (at a later step than asked for: nothing to train, finishes)
    assert metrics["steps"] >= step and not (run_dir / runtime.LOCK).exists()


KILL_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from relaxrun import runtime

path = Path(sys.argv[1])
state = runtime.load_checkpoint(path)
state["state"]["step"] = 99

class Dying:
    def __init__(self, f):
        self.f = f
    def write(self, data):
        data = bytes(data)
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.f.close()

runtime.open = lambda p, mode="r": Dying(open(p, mode))
runtime.save_checkpoint(path, state)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_checkpoint(mnist_root, run_copy):
    ckpt = run_copy / CHECKPOINT
    good = ckpt.read_bytes()
    p = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(ckpt)], capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    tmp = run_copy / (CHECKPOINT + ".tmp")
    assert tmp.exists() and 0 < tmp.stat().st_size < len(good)  # the half-written temporary file
    assert ckpt.read_bytes() == good and load_checkpoint(ckpt)["state"]["step"] == 2
    metrics = train(composed(*overrides(mnist_root, "resume=true", "trainer.max_steps=4")), run_copy)
    assert metrics["steps"] == 4 and not tmp.exists()  # resumed from the old checkpoint; the leftover removed


def test_a_sweep_killed_in_one_job_keeps_the_others_and_a_rerun_fills_the_gap(relaxrun_exe, mnist_root, tmp_path):
    """The default launcher runs the jobs one after the other in one process: kill -9 lands in the
    second job (as soon as Hydra has made its folder); the first job's files survive byte for byte,
    relaxrun-report summarises what is there, the same command with resume=true completes the sweep."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1,2", *overrides(mnist_root, f"hydra.sweep.dir={sweep}", "trainer.max_steps=4")]
    proc = subprocess.Popen([relaxrun_exe, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (sweep / "seed=1" / ".hydra").exists():  # the second job has started
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    first = snapshot(sweep / "seed=0")
    assert "metrics.json" in first and CHECKPOINT in first
    assert not (sweep / "seed=1" / "metrics.json").exists() and not (sweep / "seed=2").exists()

    # a summary of what survived: the finished job, the killed one as incomplete
    from relaxrun.report import main as report_main

    report_main([str(sweep), "-q"])  # relaxrun-report, in-process
    with open(sweep / "summary.csv", newline="") as f:
        status = {r["run"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"seed=0": "ok", "seed=1": "incomplete"}
    assert snapshot(sweep / "seed=0") == first

    p = cli(relaxrun_exe, [*args, "resume=true"], cwd=tmp_path, timeout=400)
    assert p.returncode == 0, p.stderr
    with open(sweep / "summary.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["seed=0", "seed=1", "seed=2"] and all(r["status"] == "ok" for r in rows.values())
    again, before = (json.loads(m) for m in ((sweep / "seed=0" / "metrics.json").read_bytes(), first["metrics.json"]))
    assert again["history"] == before["history"] and again["test_neg_elbo"] == before["test_neg_elbo"]
    assert (sweep / "seed=0" / CHECKPOINT).read_bytes() == first[CHECKPOINT]  # the finished job: not retrained


# -- every numeric config key: a wrong type and out-of-range values ------------------------------

#: top-level numeric keys -> values out of range (each refused by validate with a message naming the key)
TOP_LEVEL = {
    "data.val_size": ["-1", "60000"], "data.eval_seed": ["-1", str(2**32)],
    "optim.lr": ["0", "-1", "inf"], "optim.weight_decay": ["-1", "inf"],
    "trainer.epochs": ["0"], "trainer.max_steps": ["-1", str(2**31)], "trainer.batch_size": ["0", str(2**40)],
    "trainer.eval_batch_size": ["0"], "trainer.log_every": ["0"], "trainer.tau_min": ["0", "nan"],
    "trainer.tau_rate": ["-1", "inf"], "trainer.grad_clip": ["-1", "inf", "nan"], "trainer.patience": ["-1"],
    "trainer.threads": ["-1", str(2**31)], "trainer.images": ["0"], "eval.iwae_samples": ["-1"],
    "eval.iwae_batch": ["0"], "diagnostics.grad_every": ["-1"], "diagnostics.grad_samples": ["1"],
    "tau": ["0", "-0.5", "inf", "nan"], "seed": ["-1", str(2**32)], "model.hidden": ["[0]", "[]", f"[{2**31}]"],
}


def _schema_numeric_keys() -> list[str]:
    groups = {"data": config_module.DataConfig, "model": config_module.ModelConfig, "optim": config_module.OptimConfig,
              "trainer": config_module.TrainerConfig, "eval": config_module.EvalConfig,
              "diagnostics": config_module.DiagnosticsConfig}
    keys = [f"{g}.{f.name}" for g, cls in groups.items() for f in dataclasses.fields(cls)
            if f.type in ("int", "float", "list[int]")]
    return keys + [f.name for f in dataclasses.fields(config_module.RunConfig)
                   if f.type in ("int", "float", "Optional[float]")]


def test_the_table_covers_every_numeric_key_of_the_schema():
    assert sorted(TOP_LEVEL) == sorted(_schema_numeric_keys())


@pytest.fixture(scope="module")
def default_cfg():
    return composed()


@pytest.mark.parametrize("key", sorted(TOP_LEVEL))
def test_every_top_level_numeric_key_refuses_a_wrong_type_and_out_of_range_values(key, default_cfg):
    with pytest.raises(ConfigCompositionException) as err:  # Hydra refuses the type while composing
        composed(f"{key}={'[abc]' if key == 'model.hidden' else 'abc'}")
    assert key in str(err.value.__cause__) or key in str(err.value), err.value
    for value in TOP_LEVEL[key]:  # set as Hydra would parse the override, on the composed config
        cfg = copy.deepcopy(default_cfg)
        OmegaConf.update(cfg, key, json.loads(value.replace("inf", "Infinity").replace("nan", "NaN")), merge=False)
        with pytest.raises(ConfigError, match=f"^{key.replace('.', '[.]')} must be ") as err:
            validate(cfg)
        assert "\n" not in str(err.value)


def _method_numeric_keys() -> list[tuple[str, str, str]]:
    out = []
    for m in available_methods():
        for f in dataclasses.fields(get_method_class(m).Config):
            if f.type in ("int", "float", "Optional[int]", "list[int]"):
                out.append((m, f.name, f.type))
    return out


@pytest.fixture(scope="module")
def method_cfgs():
    return {m: composed(f"method={m}", *(["tau=1.5"] if m == "reinmax" else [])) for m in available_methods()}


@pytest.mark.parametrize("method,key,kind", _method_numeric_keys(), ids=lambda v: str(v))
def test_every_method_numeric_key_refuses_a_wrong_type_and_out_of_range_values(method, key, kind, method_cfgs):
    """Wrong type ("abc"), NaN and infinity for every number; below the range and beyond 2**31 - 1 for
    every integer (Hydra hands an override's value to the method node as parsed, as set here)."""
    cfg = method_cfgs[method]
    if kind == "list[int]":
        bad = [["abc"], [0], [2**31]]
    elif "int" in kind:
        bad = ["abc", 2.5, -1, 2**31]
    else:
        bad = ["abc", float("nan"), float("inf")]
    old = cfg.method[key]
    try:
        for value in bad:
            cfg.method[key] = value
            with pytest.raises(ConfigError, match=f"method[.]{key}") as err:
                method_config(cfg)  # the method part of validate()
            assert "\n" not in str(err.value), (value, err.value)
    finally:
        cfg.method[key] = old
    assert validate(cfg)[1].name == method  # the defaults themselves are valid


@pytest.mark.parametrize("override,needle", [
    ("method.latent_dim=3000000000", "method.latent_dim must be an integer <= 2147483647"),
])
def test_numeric_keys_at_the_command_line(relaxrun_exe, tmp_path, override, needle):
    p = cli(relaxrun_exe, [override, "trainer.progress=false"], cwd=tmp_path)
    assert needle in one_line_error(p, "relaxrun: error:")
    assert not (tmp_path / "outputs").exists()

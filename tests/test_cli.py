"""The installed ``relaxrun`` console script, end to end on tiny generated IDX data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

FAST = ["model.hidden=[64,32]", "trainer.progress=false", "trainer.log_every=2", "trainer.images=4"]


def run(exe, args, cwd, env=None, check=True):
    full_env = dict(os.environ, HYDRA_FULL_ERROR="0", **(env or {}))
    full_env.pop("RELAXRUN_DATA_ROOT", None)
    p = subprocess.run([exe, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"relaxrun {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_train_logs_checkpoints_and_resumes(relaxrun_exe, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    args = ["method=gumbel_softmax", "tau=0.5", f"data.root={mnist_root}", f"hydra.run.dir={run_dir}", *FAST]
    run(relaxrun_exe, [*args, "trainer.epochs=2"], cwd=tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["steps"] == 12  # 600 images / batch 100 = 6 steps per epoch
    assert metrics["test_neg_elbo_kind"] == "discrete"
    for key in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "seconds", "device", "config"):
        assert metrics[key] is not None, key
    assert metrics["config"]["method"]["tau"] == 0.5
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ck["state"]["step"] == 12 and ck["state"]["epoch"] == 2

    acc = events(run_dir)
    tags = acc.Tags()
    for tag in ("train/loss", "train/recon", "train/kl", "train/tau", "train/lr", "test/neg_elbo",
                "test/relaxed_objective"):
        assert tag in tags["scalars"], tag
    assert {"images/reconstructions", "images/samples"} <= set(tags["images"])
    assert [e.step for e in acc.Scalars("test/neg_elbo")] == [6, 12]

    p = run(relaxrun_exe, [*args, "trainer.epochs=3", "resume=true"], cwd=tmp_path)
    assert "resuming" in p.stdout + p.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["steps"] == 18
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    steps = [e.step for e in events(run_dir).Scalars("test/neg_elbo")]
    assert steps == [6, 12, 18]  # no duplicated steps after the resume


def test_default_output_folders_and_nothing_else_in_cwd(relaxrun_exe, mnist_root, tmp_path):
    run(relaxrun_exe, ["method=relaxed_bernoulli", f"data.root={mnist_root}", "trainer.max_steps=2", *FAST],
        cwd=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["outputs"]
    (day,) = os.listdir(tmp_path / "outputs")
    (stamp,) = os.listdir(tmp_path / "outputs" / day)
    assert "." in stamp  # sub-second part: two runs in the same second do not collide
    assert (tmp_path / "outputs" / day / stamp / "metrics.json").exists()


def test_multirun_job_folders_are_named_by_the_swept_keys(relaxrun_exe, mnist_root, tmp_path):
    run(relaxrun_exe, ["-m", "method=relaxed_bernoulli,gumbel_softmax", "tau=0.5", f"data.root={mnist_root}",
                       "trainer.max_steps=2", *FAST], cwd=tmp_path)
    (day,) = os.listdir(tmp_path / "outputs" / "multirun")
    (stamp,) = os.listdir(tmp_path / "outputs" / "multirun" / day)
    sweep = tmp_path / "outputs" / "multirun" / day / stamp
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    # the swept key only: tau=0.5, trainer.max_steps and the FAST overrides are the same for every job
    assert jobs == ["method=gumbel_softmax", "method=relaxed_bernoulli"]
    assert all((sweep / j / "metrics.json").exists() for j in jobs)


@pytest.mark.parametrize("override,needle", [
    ("method=nonexistent", "available: "),
    ("tau=-1", "tau must be"),
    ("tau=abc", "tau=abc"),
    ("optim.lr=0", "optim.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.nonsense=1", "nonsense"),
    ("method.latent_dim=0", "method.latent_dim"),
    ("method.hard=maybe", "method.hard"),
])
def test_bad_config_is_one_line_without_traceback(relaxrun_exe, tmp_path, override, needle):
    p = run(relaxrun_exe, [override], cwd=tmp_path, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relaxrun: error:"), p.stderr
    assert needle in lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    assert not (tmp_path / "outputs").exists()  # refused before any work started
    if override == "method=nonexistent":
        assert "gumbel_softmax" in lines[0] and "relaxed_bernoulli" in lines[0]


def test_missing_data_offline_names_the_files(relaxrun_exe, tmp_path):
    # a closed local port stands in for "offline": every download attempt fails at once
    closed = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": ""}
    p = run(relaxrun_exe, [f"data.root={tmp_path / 'empty'}", "trainer.progress=false"], cwd=tmp_path, env=closed,
            check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte", str(tmp_path / "empty" / "MNIST" / "raw")):
        assert f in lines[0]
    assert "Traceback" not in p.stdout + p.stderr
    # the failed download leaves no empty dataset folders; the run folder keeps only the explanation
    assert not (tmp_path / "empty").exists()
    (run_dir,) = [d for d in (tmp_path / "outputs").glob("*/*") if d.is_dir()]
    assert (run_dir / "error.txt").is_file() and not (run_dir / "tb").exists()
    assert not (run_dir / "checkpoint.pt").exists()


def test_help_lists_groups_and_cfg_prints_config(relaxrun_exe, tmp_path):
    h = run(relaxrun_exe, ["--help"], cwd=tmp_path).stdout
    assert "method: " in h and "gumbel_softmax" in h and "relaxed_bernoulli" in h and "data: " in h
    c = run(relaxrun_exe, ["--cfg", "job", "method=relaxed_bernoulli", "tau=0.3"], cwd=tmp_path).stdout
    assert "name: relaxed_bernoulli" in c and "tau: 0.3" in c
    assert not (tmp_path / "outputs").exists()

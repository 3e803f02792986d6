"""The command line a user meets first: --help and --cfg without torch, typo suggestions, sweep
progress lines, job folders named by the swept keys, run paths saved absolute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAST = ["model.hidden=[16]", "trainer.max_steps=2", "trainer.progress=false", "trainer.images=1",
        "eval.iwae_samples=0", "method=straight_through", "method.latent_dim=4"]


def run(args: list[str], cwd: Path, exe: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    env.pop("RELAXRUN_DATA_ROOT", None)
    cmd = [exe, *args] if exe else args
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


PRINT_ONLY = """
import os, sys
os.environ["COMP_LINE"] = "relaxrun meth"  # what bash passes a completion query
sys.argv = ["relaxrun", *{args!r}]
from relaxrun.cli import main
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
heavy = sorted(m for m in ("torch", "torchvision") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["method=gst", "--cfg", "job", "--resolve"],
                                  ["--shell-completion", "query=bash"]], ids=["help", "cfg", "cfg-resolve", "complete"])
def test_printing_commands_import_no_torch(tmp_path, args):
    p = run([sys.executable, "-c", PRINT_ONLY.format(args=args)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "HEAVY=\n" in p.stdout or p.stdout.rstrip().endswith("HEAVY="), p.stdout[-300:]


def test_help_lists_the_launchers_and_resolve(relaxrun_exe, tmp_path):
    p = run(["--help"], tmp_path, relaxrun_exe)
    assert p.returncode == 0
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("hydra/launcher:"))
    assert {"basic", "joblib", "slurm", "submitit_local"} <= {o.strip() for o in line.split(":", 1)[1].split(",")}
    assert "--resolve" in p.stdout
    p = run(["method=gst", "--cfg", "job", "--resolve"], tmp_path, relaxrun_exe)
    assert p.returncode == 0 and "${" not in p.stdout and "tau: 1.0" in p.stdout


@pytest.mark.parametrize("override,suggestion", [
    ("trainer.epoch=3", "trainer.epochs"), ("+trainer.epoch=3", "trainer.epochs"), ("method.tua=2", "method.tau"),
    ("modle.hidden=[8]", "model.hidden"), ("optim.learning_rate=0.1", None),
])
def test_a_key_typo_names_the_key_and_suggests_the_right_one(relaxrun_exe, tmp_path, override, suggestion):
    p = run([override], tmp_path, relaxrun_exe)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("relaxrun: error:") and override.lstrip("+").split("=")[0].split(".")[-1] in line
    if suggestion:
        assert line.endswith(f"did you mean {suggestion}?"), line
    else:
        assert "did you mean" not in line, line
    assert not (tmp_path / "outputs").exists()


def test_sweep_reports_jobs_done_and_names_jobs_by_swept_keys(relaxrun_exe, mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    p = run(["-m", f"data.root={mnist_root}", *FAST, "seed=1,2", f"hydra.sweep.dir={sweep}"], tmp_path, relaxrun_exe)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in sweep.iterdir() if x.is_dir()) == ["seed=1", "seed=2"]
    out = p.stdout
    assert "relaxrun: sweep job 1/2: seed=1" in out and "relaxrun: sweep job 2/2: seed=2" in out
    assert "relaxrun: sweep: 1/2 jobs done (seed=1: ok)" in out and "relaxrun: sweep: 2/2 jobs done (seed=2: ok)" in out
    # a multirun that sweeps nothing: one job, job0
    p = run(["-m", f"data.root={mnist_root}", *FAST, f"hydra.sweep.dir={tmp_path / 'one'}"], tmp_path, relaxrun_exe)
    assert p.returncode == 0 and (tmp_path / "one" / "job0" / "metrics.json").is_file()


def test_saved_data_root_is_absolute_so_eval_works_from_anywhere(relaxrun_exe, mnist_root, tmp_path):
    """A relative data.root is saved resolved against the folder the run started in."""
    work = tmp_path / "work"
    (work / "datasets").mkdir(parents=True)
    os.symlink(mnist_root / "MNIST", work / "datasets" / "MNIST")
    p = run(["data.root=datasets", *FAST, f"hydra.run.dir={tmp_path / 'run'}"], work, relaxrun_exe)
    assert p.returncode == 0, p.stderr
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["data"]["root"]
    assert saved == str((work / "datasets").resolve())
    import torch

    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert json.loads(ck["config"])["data"]["root"] == saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exe = str(Path(relaxrun_exe).with_name("relaxrun-eval"))
    p = run([str(tmp_path / "run"), "eval.iwae_samples=0", "--no-write"], elsewhere, exe)
    assert p.returncode == 0, p.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written where it was run from


def test_an_older_runs_relative_data_root_resolves_against_where_it_started(tmp_path):
    from omegaconf import OmegaConf

    from relaxrun.evaluate import _saved_data_root

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  runtime:\n    cwd: {tmp_path / 'start'}\n")
    cfg = OmegaConf.create({"data": {"root": "../shared/data", "download": True}})
    _saved_data_root(cfg, run_dir)
    assert cfg.data.root == str(tmp_path / "shared" / "data") and cfg.data.download is True
    bare = tmp_path / "bare"
    bare.mkdir()
    cfg = OmegaConf.create({"data": {"root": "data", "download": True}})
    _saved_data_root(cfg, bare)  # start folder unknown: no download into today's folder
    assert cfg.data.root == "data" and cfg.data.download is False
    cfg = OmegaConf.create({"data": {"root": "/abs/data", "download": True}})
    _saved_data_root(cfg, bare)
    assert cfg.data.root == "/abs/data" and cfg.data.download is True


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_hydra_writes(relaxrun_exe, tmp_path, multirun):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = (["-m", "seed=1,2"] if multirun else []) + [f"{key}={blocker / 'x'}", *FAST]
    p = run(args, tmp_path, relaxrun_exe)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line == f"relaxrun: error: cannot create the run folder {blocker / 'x'}: {blocker} is a file, not a folder"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a_file"]

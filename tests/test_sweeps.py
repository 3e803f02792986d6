"""Sweeps end to end: named job folders, failure isolation, the sweep summary (callback and
``relaxrun-report``), TensorBoard's HTTP API over a sweep, the joblib and submitit launchers,
experiment presets, and the per-job thread / device rule. All on tiny generated IDX data."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

FAST = ["model.hidden=[64,32]", "trainer.max_steps=2", "trainer.progress=false", "trainer.log_every=1",
        "trainer.images=4"]
REST = "model.hidden=[64,32],tau={tau},trainer.max_steps=2"
# a job folder is named by the swept keys only; its setting (summary) holds every override
JOBS = {(m, t): f"method={m},tau={t}" for m in ("relaxed_bernoulli", "gumbel_softmax") for t in ("0.5", "1.0")}
SETTINGS = {(m, t): f"method={m},{REST.format(tau=t)}" for m, t in JOBS}
FAILING = ("gumbel_softmax", "1.0")
TIME_COLUMNS = {"seconds", "seconds_per_epoch"}


def relaxrun(exe: str, args: list[str], cwd: Path, check: bool = True, timeout: float = 300):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", RELAXRUN_SWEEP_POLL_SECONDS="0.5")
    env.pop("RELAXRUN_DATA_ROOT", None)
    p = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{Path(exe).name} {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def sibling_exe(name: str) -> str:
    exe = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"the {name} executable is not installed (pip install -e '.[dev]')")
    return exe


def run_sweep(exe: str, root: Path, sweep: Path, cwd: Path, *extra: str):
    """2 methods x 2 taus; the gumbel_softmax/tau=1.0 job fails on purpose: its folder already holds
    a corrupt checkpoint and the sweep resumes (resume=true), so that job raises while reading it.
    The other jobs find no checkpoint and start from scratch."""
    bad = sweep / JOBS[FAILING]
    bad.mkdir(parents=True)
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return relaxrun(exe, ["-m", "method=relaxed_bernoulli,gumbel_softmax", "tau=0.5,1.0", f"data.root={root}",
                          *FAST, "resume=true", f"hydra.sweep.dir={sweep}", *extra], cwd=cwd)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_table(path: Path) -> list[list[str]]:
    """Rows (cells) of the first Markdown table in summary.md, header and rule left out."""
    rows, started = [], False
    for line in path.read_text().splitlines():
        if line.startswith("|"):
            if started:
                rows.append([c.strip() for c in line.strip("|").split(" | ")])
            started = True
        elif started:
            break
    return rows[1:]


@pytest.fixture(scope="module")
def sweep(relaxrun_exe, mnist_root, tmp_path_factory):
    """The sweep, run once with the default (sequential) launcher."""
    cwd = tmp_path_factory.mktemp("seq")
    folder = cwd / "sweep"
    p = run_sweep(relaxrun_exe, mnist_root, folder, cwd)
    return folder, p


def test_sweep_names_jobs_isolates_the_failure_and_writes_the_summary(sweep):
    folder, p = sweep
    jobs = sorted(x.name for x in folder.iterdir() if x.is_dir())
    assert jobs == sorted(JOBS.values())
    bad = folder / JOBS[FAILING]
    assert not (bad / "metrics.json").exists()
    assert "cannot read checkpoint" in (bad / "error.txt").read_text().splitlines()[0]
    for key, job in JOBS.items():
        if key != FAILING:
            assert (folder / job / "metrics.json").exists() and not (folder / job / "error.txt").exists(), job
    assert "sweep summary in" in p.stdout and "1 of 4 runs without results" in p.stdout

    rows = read_csv(folder / "summary.csv")
    assert sorted(r["run"] for r in rows) == sorted(JOBS.values())
    for r in rows:
        key = (r["method"], r["tau"])
        assert r["setting"] == SETTINGS[key]  # the overrides that identify the run (no seed override)
        assert r["seed"] == "0" and r["lr"] == "0.001"
        assert r["latent"] == ("20x10" if r["method"] == "gumbel_softmax" else "200")
        if key == FAILING:
            assert r["status"] == "failed" and "cannot read checkpoint" in r["error"]
            assert r["test_neg_elbo"] == ""
            continue
        m = json.loads((folder / r["run"] / "metrics.json").read_text())
        assert r["status"] == "ok" and r["error"] == ""
        for k in ("test_neg_elbo", "test_relaxed_objective", "train_objective", "seconds", "seconds_per_epoch"):
            assert float(r[k]) == m[k], k  # full precision
        assert r["test_neg_elbo_kind"] == m["test_neg_elbo_kind"] == "discrete"
        assert int(r["steps"]) == m["steps"] == 2
        # a step-capped run: s/epoch is per epoch of steps, not the time of 2 steps
        assert 0 < m["epochs_run"] < 1 and math.isclose(m["seconds_per_epoch"], m["seconds"] / m["epochs_run"])

    table = md_table(folder / "summary.md")
    assert len(table) == 4
    ok = sorted((float(r["test_neg_elbo"]), r["method"], float(r["tau"])) for r in rows if r["status"] == "ok")
    # rank, method, tau, runs, test -ELBO, ...: sorted by the test -ELBO, the failed setting last
    assert [(c[0], c[1], float(c[2])) for c in table[:3]] == [(str(i + 1), m, t) for i, (_, m, t) in enumerate(ok)]
    assert [float(c[4]) for c in table[:3]] == [round(v, 2) for v, _, _ in ok]
    assert table[3][:2] == ["–", "gumbel_softmax"] and table[3][3] == "0/1 ok" and table[3][4] == "failed"
    md = (folder / "summary.md").read_text()
    assert "4 runs in 4 settings: 3 finished, 1 failed" in md
    assert f"`{JOBS[FAILING]}` | failed | cannot read checkpoint" in md
    assert "Common overrides: `model.hidden=[64,32]`, `trainer.max_steps=2`" in md

    import matplotlib.image

    png = folder / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05  # a drawn figure


def test_relaxrun_report_rebuilds_the_summary_and_combines_folders(sweep, relaxrun_exe, mnist_root, tmp_path):
    folder, _ = sweep
    report = sibling_exe("relaxrun-report")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for name in ("summary.csv", "summary.md", "summary.png"):
        (copy / name).unlink()
    p = relaxrun(report, [str(copy)], cwd=tmp_path)
    assert "| 1 | " in p.stdout and "relaxrun-report: 4 runs" in p.stdout
    for name in ("summary.csv", "summary.md"):
        assert (copy / name).read_text() == (folder / name).read_text(), name
    assert (copy / "summary.png").stat().st_size > 1000

    # a single run with another seed of one sweep setting: combined, that setting has two seeds
    single = tmp_path / "single"
    relaxrun(relaxrun_exe, ["method=relaxed_bernoulli", "tau=0.5", "seed=1", f"data.root={mnist_root}", *FAST,
                            f"hydra.run.dir={single}"], cwd=tmp_path)
    out = tmp_path / "combined"
    relaxrun(report, [str(copy), str(single), "-o", str(out), "-q"], cwd=tmp_path)
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 5 and sorted(r["seed"] for r in rows) == ["0", "0", "0", "0", "1"]
    values = [json.loads((d / "metrics.json").read_text())["test_neg_elbo"]
              for d in (copy / JOBS[("relaxed_bernoulli", "0.5")], single)]
    row = next(c for c in md_table(out / "summary.md") if c[1] == "relaxed_bernoulli" and float(c[2]) == 0.5)
    assert row[3] == "2"
    assert row[4] == f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"

    empty = tmp_path / "empty"
    empty.mkdir()
    p = relaxrun(report, [str(empty)], cwd=tmp_path, check=False)
    assert p.returncode == 1 and p.stderr.strip().startswith("relaxrun-report: error: no run folders")


def test_rerunning_a_sweep_with_resume_completes_it(sweep, relaxrun_exe, mnist_root, tmp_path):
    folder, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    (copy / JOBS[FAILING] / "checkpoint.pt").unlink()  # the cause of the failure is gone
    before = {job: json.loads((copy / job / "metrics.json").read_text()) for key, job in JOBS.items() if key != FAILING}
    relaxrun(relaxrun_exe, ["-m", "method=relaxed_bernoulli,gumbel_softmax", "tau=0.5,1.0", f"data.root={mnist_root}",
                            *FAST, "resume=true", f"hydra.sweep.dir={copy}"], cwd=tmp_path)
    rows = read_csv(copy / "summary.csv")
    assert sorted(r["status"] for r in rows) == ["ok"] * 4
    assert not (copy / JOBS[FAILING] / "error.txt").exists()
    for job, m in before.items():  # finished jobs resume at their last step: same results
        again = json.loads((copy / job / "metrics.json").read_text())
        assert again["test_neg_elbo"] == m["test_neg_elbo"] and again["steps"] == m["steps"] == 2, job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


def test_tensorboard_serves_runs_tags_and_hparams_of_the_sweep(sweep, tmp_path):
    folder, _ = sweep
    ok_runs = {f"{job}/tb": key for key, job in JOBS.items() if key != FAILING}
    port = _free_port()
    log = open(tmp_path / "tensorboard.log", "w")
    proc = subprocess.Popen([sibling_exe("tensorboard"), "--logdir", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--reload_interval", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/data"
    groups_request = {"experimentName": "", "startIndex": 0, "sliceSize": 100,
                      "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}
    state = {}
    try:
        deadline = time.monotonic() + 120
        while True:  # the server starts, then loads the event files progressively: poll, bounded
            assert proc.poll() is None, "tensorboard exited:\n" + (tmp_path / "tensorboard.log").read_text()
            try:
                state["runs"] = _get(base + "/runs")
                state["scalars"] = _get(base + "/plugin/scalars/tags")
                state["images"] = _get(base + "/plugin/images/tags")
                state["experiment"] = _get(base + "/plugin/hparams/experiment", {"experimentName": ""})
                state["groups"] = _get(base + "/plugin/hparams/session_groups", groups_request)
                if (set(ok_runs) <= set(state["runs"]) and set(ok_runs) <= set(state["images"])
                        and len(state["groups"].get("sessionGroups", [])) >= len(ok_runs)):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            assert time.monotonic() < deadline, f"tensorboard did not list the sweep in time; last: {state}"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()

    assert set(state["runs"]) <= {f"{job}/tb" for job in JOBS.values()}
    for run in ok_runs:
        assert {"train/loss", "train/tau", "test/neg_elbo", "test/relaxed_objective",
                "final/test_neg_elbo", "final/seconds_per_epoch"} <= set(state["scalars"][run]), run
        assert {"images/reconstructions", "images/samples"} <= set(state["images"][run]), run

    infos = state["experiment"]["hparamInfos"]
    names = {h["name"] for h in infos}
    assert {"method", "tau", "seed", "lr", "latent", "method.options", "epochs", "steps"} <= names
    # what distinguishes the runs comes first (TensorBoard shows the first 5 columns by default)
    differing = [h["name"] for h in infos if h.get("differs")]
    assert {"method", "tau"} <= set(differing) and [h["name"] for h in infos[:len(differing)]] == differing
    assert {"method", "tau"} <= {h["name"] for h in infos[:5]}
    metrics = {m["name"]["tag"] for m in state["experiment"]["metricInfos"]}
    assert {"final/test_neg_elbo", "final/test_relaxed_objective", "final/seconds_per_epoch"} <= metrics

    groups = state["groups"]["sessionGroups"]
    sessions = [s["name"] for g in groups for s in g["sessions"]]
    assert sorted(sessions) == sorted(ok_runs)  # one session per finished run, no duplicates
    for g in groups:
        (session,) = g["sessions"]
        method, tau = ok_runs[session["name"]]
        hp = g["hparams"]
        assert (hp["method"], hp["tau"], hp["seed"], hp["lr"]) == (method, float(tau), 0, 0.001)
        assert hp["steps"] == 2 and 0 < hp["epochs"] < 1  # what the run did (capped by max_steps)
        assert hp["latent"] == ("20x10" if method == "gumbel_softmax" else "200")
        assert names <= set(hp)  # every run has every column
        m = json.loads((folder / session["name"] / ".." / "metrics.json").read_text())
        final = {v["name"]["tag"]: v["value"] for v in session["metricValues"]}
        assert math.isclose(final["final/test_neg_elbo"], m["test_neg_elbo"], rel_tol=1e-6)


def _comparable(rows: list[dict], folder: Path) -> dict:
    """Rows by run, without the timings, with the sweep folder's path (in error messages) made neutral."""
    return {r["run"]: {k: v.replace(str(folder), "<sweep>") for k, v in r.items() if k not in TIME_COLUMNS}
            for r in rows}


def _same_summary(a: Path, b: Path) -> None:
    ra, rb = _comparable(read_csv(a / "summary.csv"), a), _comparable(read_csv(b / "summary.csv"), b)
    assert ra.keys() == rb.keys()
    for run in ra:
        for k, va in ra[run].items():
            vb = rb[run][k]
            try:
                fa, fb = float(va), float(vb)
            except ValueError:
                assert va == vb, (run, k)
            else:  # different thread counts may reorder float sums
                assert math.isclose(fa, fb, rel_tol=1e-5, abs_tol=1e-4), (run, k, va, vb)
    order = lambda folder: [(c[0], c[1], c[2], c[3]) for c in md_table(folder / "summary.md")]  # noqa: E731
    assert order(a) == order(b)


def test_joblib_launcher_gives_the_same_summary(sweep, relaxrun_exe, mnist_root, tmp_path):
    folder, _ = sweep
    par = tmp_path / "sweep"
    p = run_sweep(relaxrun_exe, mnist_root, par, tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    assert "relaxrun: sweep: 4/4 jobs done" in p.stdout  # the count, polled while the workers run
    _same_summary(folder, par)
    assert "cannot read checkpoint" in (par / JOBS[FAILING] / "error.txt").read_text()
    # the per-job thread rule: max(1, cores // n_jobs), recorded in the run's config
    cores = len(os.sched_getaffinity(0))
    for key, job in JOBS.items():
        if key != FAILING:
            cfg = json.loads((par / job / "metrics.json").read_text())["config"]
            assert cfg["trainer"]["threads"] == max(1, cores // 2), job
            assert "joblib workers" in (par / job / "relaxrun.log").read_text()


def test_submitit_local_launcher_runs_a_sweep(relaxrun_exe, mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    p = relaxrun(relaxrun_exe, ["-m", "method=relaxed_bernoulli,gumbel_softmax", "tau=0.5", f"data.root={mnist_root}",
                                *FAST, "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    # progress while the jobs run elsewhere (polled from the job folders), and the last count
    assert "relaxrun: sweep: 2/2 jobs done" in p.stdout, p.stdout
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    assert not [p.name for p in (sweep / ".submitit").iterdir() if "%" in p.name]  # no empty template folder
    rows = read_csv(sweep / "summary.csv")
    # tau=0.5 is not swept (one value): the job folders are named by the method alone
    assert sorted(r["run"] for r in rows) == ["method=gumbel_softmax", "method=relaxed_bernoulli"]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        cfg = json.loads((sweep / r["run"] / "metrics.json").read_text())["config"]
        assert cfg["trainer"]["threads"] == 1  # all jobs start at once: one thread each
        assert r["device"] == "cpu"  # submitit_local hides the GPUs unless gpus_per_node is set


# ---------------------------------------------------------------------------------------------
# in-process: presets, hparams keys, the thread/device rule, seed aggregation


def _compose(overrides, hydra_cfg=False):
    from hydra import compose, initialize_config_module

    from relaxrun.cli import CONFIG_MODULE, _register_resolvers
    from relaxrun.config import register_configs

    register_configs()
    _register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=hydra_cfg)


def test_experiment_presets():
    from relaxrun.cli import group_options
    from relaxrun.config import validate

    assert {"jang2017", "bernoulli200", "compare_all"} <= set(group_options("experiment"))
    run, m = validate(_compose(["experiment=jang2017"]))
    assert (m.name, m.latent_dim, m.categories, m.tau) == ("gumbel_softmax", 20, 10, 1.0)
    assert run.model.hidden == [512, 256] and run.optim.lr == 1e-3 and run.trainer.batch_size == 100
    assert (run.trainer.tau_schedule, run.trainer.tau_min, run.trainer.tau_rate) == ("exponential", 0.5, 3e-5)

    run, m = validate(_compose(["experiment=bernoulli200"]))
    assert (m.name, m.latent_dim) == ("relaxed_bernoulli", 200) and run.model.hidden == [200, 200]
    run, m = validate(_compose(["experiment=bernoulli200", "method=straight_through"]))
    assert (m.name, m.latent_dim) == ("straight_through", 200)  # the command line picks the method

    cfg = _compose(["experiment=compare_all"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = OverridesParser.create().parse_override(f"method={params.method}").value()
    # every method, also new ones (reinmax's tau < 1 jobs are skipped: test_sweep_skips_...)
    assert swept.filter(group_options("method")) == group_options("method") and "reinmax" in group_options("method")
    assert params.tau == "0.1,0.5,1.0"
    validate(_compose(["experiment=compare_all"]))


def test_sweep_skips_grid_points_a_method_does_not_take(relaxrun_exe, mnist_root, tmp_path):
    """ReinMax takes tau >= 1 only. In a grid crossing it with tau=0.5 that job is skipped (skipped.txt,
    listed apart in the summary, exit 0), the others train; a single run at tau=0.5 is still refused,
    and a sweep in which every job would be skipped is refused before anything starts."""
    sweep = tmp_path / "sweep"
    # the preset's grid, narrowed from the command line as docs/sweeps.md shows
    p = relaxrun(relaxrun_exe, ["-m", "experiment=compare_all", "method=reinmax,gumbel_softmax", "tau=0.5,1.0",
                                f"data.root={mnist_root}",
                                *FAST, "model.hidden=[16]", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert "1 job(s) of the sweep will be skipped" in p.stderr and "method.tau must be" in p.stderr
    rows = {(r["method"], r["tau"]): r for r in read_csv(sweep / "summary.csv")}
    assert rows[("reinmax", "0.5")]["status"] == "skipped"
    assert "Liu et al. 2023" in rows[("reinmax", "0.5")]["error"]
    assert {k: r["status"] for k, r in rows.items() if k != ("reinmax", "0.5")} == {
        ("reinmax", "1.0"): "ok", ("gumbel_softmax", "0.5"): "ok", ("gumbel_softmax", "1.0"): "ok"}
    skipped_dir = sweep / rows[("reinmax", "0.5")]["run"]
    assert (skipped_dir / "skipped.txt").is_file() and not (skipped_dir / "error.txt").exists()
    assert not (skipped_dir / "checkpoint.pt").exists()
    md = (sweep / "summary.md").read_text()
    assert "1 skipped" in md and "## Skipped jobs" in md and "## Runs without results" not in md
    assert [c[1] for c in md_table(sweep / "summary.md")].count("reinmax") == 1  # only the tau=1.0 job ranks

    single = relaxrun(relaxrun_exe, ["method=reinmax", "tau=0.5", f"data.root={mnist_root}", *FAST,
                                     f"hydra.run.dir={tmp_path / 'single'}"], cwd=tmp_path, check=False)
    assert single.returncode == 2 and "method.tau must be a finite number >= 1" in single.stderr
    assert "Traceback" not in single.stderr and not (tmp_path / "single").exists()
    every = relaxrun(relaxrun_exe, ["-m", "method=reinmax", "tau=0.1,0.5", f"data.root={mnist_root}", *FAST,
                                    f"hydra.sweep.dir={tmp_path / 'none'}"], cwd=tmp_path, check=False)
    assert every.returncode == 2 and "every job of the sweep would be skipped" in every.stderr
    assert not (tmp_path / "none").exists()


def test_slurm_preset_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """The `slurm` preset, turned into an sbatch script by submitit the way the Hydra plugin does
    (no cluster here: a dummy `srun` on PATH only satisfies submitit's check; nothing is submitted)."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra_cfg=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params["_target_"].endswith("SlurmLauncher")
    assert (params["gpus_per_node"], params["cpus_per_task"], params["timeout_min"], params["array_parallelism"]) == (
        1, 4, 120, 16)
    for key in ("_target_", "submitit_folder"):
        params.pop(key)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params["name"] = "relaxrun"  # ${hydra.job.name}, resolved by Hydra at launch
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("relaxrun", "0")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--time=120", "--mem=16GB"):
        assert f"#SBATCH {line}" in script, line
    assert executor._executor.parameters["array_parallelism"] == 16


def test_a_launcher_that_is_not_installed_is_refused_in_one_line(relaxrun_exe, mnist_root, tmp_path):
    p = relaxrun(relaxrun_exe, ["-m", "method=relaxed_bernoulli,gumbel_softmax", f"data.root={mnist_root}", *FAST,
                                "hydra/launcher=joblib", "hydra.launcher._target_=hydra_plugins.not_there.Launcher",
                                f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert "relaxrun: error: the launcher hydra_plugins.not_there.Launcher is not installed" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "sweep").exists()


def test_hparams_have_the_same_keys_for_every_method():
    from relaxrun.cli import group_options
    from relaxrun.config import validate
    from relaxrun.logging import flat_hparams

    keys = None
    for method in group_options("method"):
        tau = 1.5 if method == "reinmax" else 0.5  # ReinMax's temperature must be >= 1
        run, m = validate(_compose([f"method={method}", f"tau={tau}"]))
        hp = flat_hparams(run, m)
        assert hp["method"] == method and hp["tau"] == tau and hp["latent"]
        assert all(isinstance(v, (int, float, str, bool)) for v in hp.values())
        keys = keys or set(hp)
        assert set(hp) == keys, method
    run, m = validate(_compose(["method=gumbel_softmax", "method.hard=true"]))
    assert flat_hparams(run, m)["latent"] == "20x10" and "hard=true" in flat_hparams(run, m)["method.options"]


@pytest.mark.parametrize("launcher,job,threads,device,cores,n_cuda,expected", [
    ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, 0, 0, "auto", 2, 0, (1, "auto")),
    ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, 0, 0, "auto", 8, 0, (4, "auto")),
    ({"_target_": "x.JoblibLauncher", "n_jobs": -1}, 0, 0, "auto", 8, 0, (1, "auto")),
    ({"_target_": "x.JoblibLauncher", "n_jobs": -3}, 0, 0, "auto", 8, 0, (1, "auto")),  # 6 workers
    ({"_target_": "x.JoblibLauncher", "n_jobs": 3}, 0, 0, "auto", 8, 0, (2, "auto")),
    ({"_target_": "x.JoblibLauncher", "n_jobs": 16}, 0, 0, "auto", 4, 0, (1, "auto")),
    ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, 5, 3, "auto", 8, 2, (3, "cuda:1")),  # threads given
    ({"_target_": "x.JoblibLauncher", "n_jobs": 2}, 4, 0, "cuda", 8, 2, (4, "cuda")),  # device given
    ({"_target_": "x.submitit_launcher.LocalLauncher", "cpus_per_task": 2}, 3, 0, "auto", 8, 4, (2, "cuda:3")),
    ({"_target_": "x.submitit_launcher.LocalLauncher", "cpus_per_task": None}, 1, 0, "auto", 8, 0, (1, "auto")),
    ({"_target_": "x.submitit_launcher.SlurmLauncher", "cpus_per_task": 4}, 3, 0, "auto", 64, 2, (4, "auto")),
    ({"_target_": "x.submitit_launcher.SlurmLauncher", "cpus_per_task": None}, 3, 0, "auto", 64, 1, (0, "auto")),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1, 0, "auto", 8, 2, (0, "auto")),
])
def test_job_resources_rule(launcher, job, threads, device, cores, n_cuda, expected):
    from relaxrun.callbacks import job_resources

    got = job_resources(launcher, job, threads, device, cores=cores, n_cuda=n_cuda)
    assert got[:2] == expected


def _fake_run(folder: Path, overrides: list[str], metrics: dict | None = None, error: str | None = None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    method = next(o.split("=")[1] for o in overrides if o.startswith("method="))
    tau = float(next(o.split("=")[1] for o in overrides if o.startswith("tau=")))
    seed = int(next((o.split("=")[1] for o in overrides if o.startswith("seed=")), 0))
    cfg = {"method": {"name": method, "tau": tau, "latent_dim": 200}, "tau": tau, "seed": seed,
           "optim": {"lr": 0.001}}
    (folder / ".hydra" / "config.yaml").write_text(json.dumps(cfg))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(dict(
            {"test_neg_elbo_kind": "discrete", "method": method, "config": cfg, "epochs": 1, "steps": 6,
             "seconds": 1.0, "seconds_per_epoch": 1.0, "device": "cpu"}, **metrics)))
    if error is not None:
        (folder / "error.txt").write_text(error + "\nTraceback ...\n")


def test_report_aggregates_seeds_and_sorts(tmp_path):
    from relaxrun.report import write_summary

    values = {0: 101.0, 1: 103.0, 2: 105.5}
    for seed, v in values.items():
        _fake_run(tmp_path / "s" / f"a{seed}", ["method=relaxed_bernoulli", "tau=0.5", f"seed={seed}", "data.root=/x"],
                  {"test_neg_elbo": v, "test_relaxed_objective": v - 10, "train_objective": v + 1})
    _fake_run(tmp_path / "s" / "b", ["method=gumbel_softmax", "tau=0.5"],
              {"test_neg_elbo": 99.0, "test_relaxed_objective": 80.0, "train_objective": 100.0, "test_iwae": 97.0})
    _fake_run(tmp_path / "s" / "c", ["method=gumbel_softmax", "tau=1.0"], error="non-finite loss at step 3")
    _fake_run(tmp_path / "s" / "d", ["method=hard_concrete", "tau=1.0"])  # killed: no metrics, no error
    rows, groups, paths = write_summary([tmp_path / "s"])
    assert [g["setting"] for g in groups] == ["method=gumbel_softmax,tau=0.5", "method=relaxed_bernoulli,tau=0.5",
                                              "method=gumbel_softmax,tau=1.0", "method=hard_concrete,tau=1.0"]
    assert {r["run"]: r["status"] for r in rows} == {"a0": "ok", "a1": "ok", "a2": "ok", "b": "ok", "c": "failed",
                                                     "d": "incomplete"}
    table = md_table(paths["summary.md"])
    # rank, method, tau, runs, test -ELBO, kind, relaxed, IWAE (shown: one run has it), train, s/epoch
    assert table[0][:8] == ["1", "gumbel_softmax", "0.5", "1", "99.00", "discrete", "80.00", "97.00"]
    mean, std = statistics.fmean(values.values()), statistics.stdev(values.values())
    assert table[1][:5] == ["2", "relaxed_bernoulli", "0.5", "3", f"{mean:.2f} ± {std:.2f}"]
    assert table[1][7] == "–"  # no IWAE for these runs
    assert table[2][:5] == ["–", "gumbel_softmax", "1", "0/1 ok", "failed"]
    assert table[3][:5] == ["–", "hard_concrete", "1", "0/1 ok", "incomplete"]
    md = paths["summary.md"].read_text()
    assert "| `c` | failed | non-finite loss at step 3 |" in md and "| `d` | incomplete |" in md


def test_a_joblib_worker_killed_stops_the_sweep_in_one_line_and_keeps_the_rest(relaxrun_exe, mnist_root, tmp_path):
    """kill -9 of a joblib worker breaks joblib's pool: relaxrun says so in one line (no traceback),
    the finished job and the summary of what is on disk survive, and rerunning with resume=true
    completes the sweep."""
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"data.root={mnist_root}", "model.hidden=[16]",
            "trainer.progress=false", "trainer.images=1", "eval.iwae_samples=0", "trainer.epochs=100000",
            "trainer.max_steps=3,2000", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, HYDRA_FULL_ERROR="0", RELAXRUN_SWEEP_POLL_SECONDS="0.5")
    env.pop("RELAXRUN_DATA_ROOT", None)
    proc = subprocess.Popen([relaxrun_exe, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    short, long = sweep / "trainer.max_steps=3", sweep / "trainer.max_steps=2000"
    deadline = time.monotonic() + 180
    while not ((short / "metrics.json").is_file() and (long / "checkpoint.pt").is_file()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    workers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_loky_worker_of(int(pid), proc.pid)]
    assert workers, "no joblib worker found"
    os.kill(int(workers[0]), signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1
    assert "Traceback" not in err and "relaxrun: error: the sweep stopped: TerminatedWorkerError" in err, err
    assert "the sweep stopped before its end; the results on disk are kept (1 of 2 jobs finished)" in out, out
    rows = {r["run"]: r["status"] for r in read_csv(sweep / "summary.csv")}
    assert rows == {"trainer.max_steps=3": "ok", "trainer.max_steps=2000": "incomplete"}
    ck_step = torch_load_step(long / "checkpoint.pt")

    p = subprocess.run([relaxrun_exe, *args, "resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    rows = {r["run"]: r["status"] for r in read_csv(sweep / "summary.csv")}
    assert rows == {"trainer.max_steps=3": "ok", "trainer.max_steps=2000": "ok"}
    assert json.loads((long / "metrics.json").read_text())["steps"] == 2000 and ck_step < 2000
    assert json.loads((short / "metrics.json").read_text())["steps"] == 3
    assert "resuming from" in (long / "relaxrun.log").read_text()  # from its checkpoint, not from scratch


def torch_load_step(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["state"]["step"])


def _is_loky_worker_of(pid: int, root: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return b"popen_loky" in cmd and int(stat[1]) == root

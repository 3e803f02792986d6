"""Ctrl-C never loses work, piped or not, in a single run and inside a sweep; every long phase
reports progress (plain log lines when not on a terminal). Real processes, real pipes, real SIGINT
to the process group (as a terminal's Ctrl-C sends it to ``relaxrun`` and ``tee`` alike)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

FAST = ["model.hidden=[16]", "trainer.log_every=1", "trainer.images=1", "eval.iwae_samples=0",
        "method=straight_through", "method.latent_dim=4"]


def start_piped(cmd: str, cwd: Path) -> subprocess.Popen:
    """``cmd`` under bash in its own process group, so SIGINT reaches relaxrun and tee together."""
    env = dict(os.environ, RELAXRUN_PROGRESS_SECONDS="0.2", HYDRA_FULL_ERROR="0")
    env.pop("RELAXRUN_DATA_ROOT", None)
    # SIGINT as a terminal delivers it: default disposition (a shell's background job would ignore it)
    return subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"finished before {text!r} appeared in {path}: {proc.communicate()}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{text!r} never appeared in {path}")


def interrupt(proc: subprocess.Popen) -> tuple[int, str, str]:
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


@pytest.mark.parametrize("redirect", ["| tee", "2>&1 | tee"], ids=["stdout-piped", "both-piped"])
def test_ctrl_c_through_tee_leaves_a_resumable_checkpoint_and_one_line(relaxrun_exe, mnist_root, tmp_path, redirect):
    run = tmp_path / "run"
    log = tmp_path / "tee.log"
    cmd = (f"{relaxrun_exe} data.root={mnist_root} {' '.join(FAST)} trainer.epochs=100000 "
           f"hydra.run.dir={run} {redirect} {log}")
    proc = start_piped(cmd, tmp_path)
    wait_for(run / "relaxrun.log", "step/s", proc)  # a plain progress line: training is under way
    rc, _, err = interrupt(proc)
    assert rc == 130, err  # bash reports the pipeline's last command; tee dies of SIGINT too
    assert "Traceback" not in err and "Logging error" not in err and "BrokenPipe" not in err
    assert (run / "checkpoint.pt").is_file() and not (run / "error.txt").exists()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    step = ck["state"]["step"]
    assert step >= 1
    text = (run / "relaxrun.log").read_text()
    assert text.count("interrupted by SIGINT") == 1 and f"at step {step};" in text
    assert "resume=true hydra.run.dir=" in text
    if redirect == "| tee":  # stderr still on our pipe: the one line is there, once
        assert err.count("interrupted by SIGINT") == 1, err

    resumed = subprocess.run([relaxrun_exe, f"data.root={mnist_root}", *FAST, f"trainer.max_steps={step + 3}",
                              "trainer.progress=false", "resume=true", f"hydra.run.dir={run}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == step + 3


def test_ctrl_c_inside_a_sweep_job_checkpoints_it(relaxrun_exe, mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = (f"{relaxrun_exe} -m data.root={mnist_root} {' '.join(FAST)} trainer.epochs=100000 seed=1,2 "
           f"hydra.sweep.dir={sweep} | tee {tmp_path / 'tee.log'}")
    proc = start_piped(cmd, tmp_path)
    job = sweep / "seed=1"
    wait_for(job / "relaxrun.log", "step/s", proc)
    rc, _, err = interrupt(proc)
    assert rc == 130 and "Traceback" not in err, err
    assert (job / "checkpoint.pt").is_file() and not (job / "error.txt").exists()
    assert not (sweep / "seed=2").exists()  # the sweep stopped with the job
    assert err.count("interrupted by SIGINT") == 1 and f"resume=true hydra.sweep.dir={sweep}" in err


def test_ctrl_c_during_the_iwae_bound_keeps_the_training_and_writes_metrics(relaxrun_exe, mnist_root, tmp_path):
    run = tmp_path / "run"
    args = [a for a in FAST if not a.startswith("eval.iwae_samples")]
    cmd = (f"{relaxrun_exe} data.root={mnist_root} {' '.join(args)} trainer.max_steps=2 eval.iwae_samples=20000 "
           f"eval.iwae_batch=1 hydra.run.dir={run} | tee {tmp_path / 'tee.log'}")
    proc = start_piped(cmd, tmp_path)
    wait_for(run / "relaxrun.log", "IWAE-20000:", proc)  # its progress line
    rc, _, err = interrupt(proc)
    assert rc == 130 and "Traceback" not in err, err
    assert "metrics.json written without the IWAE-20000 bound" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "test_iwae" not in metrics and metrics["test_iwae_interrupted"] is True
    assert (run / "checkpoint.pt").is_file()


def test_plain_progress_lines_when_not_on_a_terminal(relaxrun_exe, mnist_root, tmp_path):
    """Not a TTY: no tqdm bar (no carriage returns), periodic log lines with rate and ETA instead."""
    env = dict(os.environ, RELAXRUN_PROGRESS_SECONDS="0")
    env.pop("RELAXRUN_DATA_ROOT", None)
    p = subprocess.run([relaxrun_exe, f"data.root={mnist_root}", *FAST, "trainer.max_steps=5",
                        f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "\r" not in p.stdout
    lines = [ln for ln in p.stdout.splitlines() if "straight_through:" in ln and "step" in ln]
    assert lines and "5/5" in lines[-1] and "<" in lines[-1], p.stdout  # elapsed<remaining


def test_progress_never_raises_when_its_stream_is_gone(monkeypatch):
    from relaxrun import progress

    class Gone:
        def isatty(self):
            return True

        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(progress.sys, "stderr", Gone())
    bar = progress.Progress(10, "x", enabled=True)
    for _ in range(10):
        bar.update(1)
    bar.set_postfix(loss="1.0")
    bar.close()
    assert bar.n == 10
    stop = [signal.SIGINT]
    with pytest.raises(progress.StopRequested):
        progress.Progress(10, "x", enabled=False, stop=stop).update(1)


def test_on_a_terminal_a_bar_with_eta_and_log_lines_on_their_own_lines(relaxrun_exe, mnist_root, tmp_path):
    """Under a pseudo-terminal: tqdm bars (carriage returns, rate, ETA) for training and the test
    evaluation, and the epoch's log line is never glued to a bar (tqdm's logging redirection)."""
    code, out = run_on_a_terminal([relaxrun_exe, f"data.root={mnist_root}", *FAST, "trainer.max_steps=30",
                                   f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert code == 0, out[-2000:]
    assert "\r" in out and "straight_through:" in out and "30/30" in out and "step/s" in out, out[-2000:]
    assert "<00:" in out  # elapsed<remaining: the ETA
    assert "sweep job" not in out  # a single run is not a sweep
    import re

    logged = [seg for seg in re.split(r"[\r\n]", out) if "epoch 1  step" in seg]
    assert logged, out[-2000:]
    for seg in logged:  # the log line stands alone: no bar text glued before or after it
        assert "step/s" not in seg and "%|" not in seg, repr(seg)


def test_joblib_jobs_side_by_side_each_keep_their_own_bar_line(relaxrun_exe, mnist_root, tmp_path):
    """Two joblib jobs on one terminal: each bar is labelled by its job and drawn on its own line
    (tqdm positions 0 and 1: the second bar is drawn one line down and the cursor moved back up)."""
    code, out = run_on_a_terminal([relaxrun_exe, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                   f"data.root={mnist_root}", *FAST, "trainer.max_steps=60", "seed=1,2",
                                   f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert code == 0, out[-2000:]
    assert "seed=1 straight_through:" in out and "seed=2 straight_through:" in out, out[-2000:]
    # the job at position 1 draws below the other and moves the cursor back up (ESC [A)
    assert "\x1b[A" in out


def run_on_a_terminal(argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run ``argv`` on a 120-column pseudo-terminal; (exit code, everything it wrote)."""
    import fcntl
    import pty
    import struct
    import termios

    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    env.pop("RELAXRUN_DATA_ROOT", None)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on the terminal
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")

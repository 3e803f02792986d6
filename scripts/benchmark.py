#!/usr/bin/env python
"""relaxrun's benchmark suite; writes BENCHMARKS.md (and, with --json, the raw figures).

    python scripts/benchmark.py --data-root ../shared/data --out BENCHMARKS.md   # full: ~20-30 min, quiet machine
    python scripts/benchmark.py --smoke --out /tmp/BENCHMARKS.md                  # CI: 1 repeat, tiny, < 60 s

Everything is measured in this one run, so the ratios compare figures taken side by side; where two
pipelines are compared, their repeats are interleaved (A B A B ...) so that a change in machine load
hits both. Every figure is the median of ``--repeats`` timed repeats after ``--warmup`` untimed
ones, with min and max, and the machine's state during it: the 1-minute load average (start -> end)
and the CPU time other processes used, in cores (from /proc/stat minus this process and its
waited-for children). On a quiet 2-core machine the load average reads about the number of threads
the benchmark itself runs; "other cores" near 0 is what a clean figure looks like.

Sections (``--sections``, comma separated; all by default):

* ``throughput`` -- seconds per epoch and steps/s of ``relaxrun.train.train`` (the real loop, the
  ``seconds`` it writes to metrics.json: training only, evaluation excluded) for the default config
  and the relaxit-demo-sized model, against a baseline in this file: the same model and method fed
  by torchvision.datasets.MNIST + ToTensor() + DataLoader(shuffle=True, default workers) with
  per-batch binarization, torch's default Adam and ``loss.item()`` per step, the pipeline public
  demos use; and the same baseline with relaxrun's Adam, which splits the gain into data pipeline
  and optimizer.
* ``cli`` -- wall time of ``relaxrun --help`` and ``relaxrun --cfg job`` (whole processes; with
  ``--against REV`` also that revision's), beside ``python -c "import torch"``.
* ``against`` -- only with ``--against REV``: the default epoch of this tree and of git revision
  REV (exported with ``git archive``), each a whole ``relaxrun`` process, interleaved.
* ``breakdown`` -- relaxrun's step cut into data (index + binarize), forward, backward, optimizer,
  logging (per-step bookkeeping + the periodic log), timed on the real step (``relaxrun.train.build``,
  ``Setup.step`` with a ``tools.phase`` hook, the loop's ``StepLog``); and the host synchronisations per step, counted in
  the real ``train()`` by wrapping Tensor.item/tolist/__bool__/__float__/__int__/numpy and keeping
  the calls made from relaxrun's own code (two runs of A and B steps; the difference / (B - A)).
* ``kernels`` -- for every registered method, ``method.loss(params, identity decoder, x, tau)`` +
  backward at batch 100 x 200 Bernoulli units / 100 x 20x10 categories; and the raw Binary Concrete
  and Concrete kernels (rsample + log_prob + backward) beside torch.distributions' RelaxedBernoulli,
  RelaxedOneHotCategorical and F.gumbel_softmax, with the share of non-finite log-densities and
  gradients at small temperatures.
* ``sweep`` -- wall time of the real ``relaxrun -m`` command running 4 short jobs, sequentially
  (Hydra's basic launcher) and with ``hydra/launcher=joblib hydra.launcher.n_jobs=2``.
* ``rss`` -- peak resident memory of a ``relaxrun`` training process (os.wait4 of the child).
* ``threads`` -- steps/s of the training step at torch.set_num_threads(1) and (cores).
* ``denormals`` -- the training step after ``--denormal-warmup`` steps of training, when Adam's
  first moments of always-blank pixels have decayed into the subnormal range: two runs from the
  same seed, without and with ``torch.set_flush_denormal(True)`` (x86 FTZ/DAZ), at 1 thread.
* ``optimizer`` -- Adam's step for the default model: torch's default implementation for the
  device, ``foreach=True`` and ``fused=True``, and which one relaxrun.train.build_optimizer picks.
* ``compile`` -- ``relaxrun trainer.compile=true`` vs eager, per-epoch times from metrics.json, a
  cold compile cache (fresh TORCHINDUCTOR_CACHE_DIR), projected to a 10-epoch run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import linecache
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout; the sweep still needs relaxrun installed

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import relaxrun  # noqa: E402
from relaxrun.config import method_options, register_configs, validate  # noqa: E402
from relaxrun.data import load_data, load_images  # noqa: E402
from relaxrun.methods import available_methods, build_method, get_method_class  # noqa: E402
from relaxrun.methods.base import _no_phase  # noqa: E402
from relaxrun.models import build_model  # noqa: E402
from relaxrun.train import Interrupted, StepLog, build, build_optimizer, pick_device, train  # noqa: E402

SECTIONS = ("throughput", "against", "cli", "breakdown", "methods", "kernels", "sweep", "rss", "threads", "optimizer", "denormals", "compile", "iwae", "peers", "gpu")

CONFIGS = {
    "default": {
        "label": "default config: gumbel_softmax 20x10, MLP 784-512-256, batch 100",
        "overrides": [],
    },
    "relaxit": {
        "label": "relaxit-demo size: relaxed_bernoulli 20 units, MLP 784-400-20, batch 128",
        "overrides": ["method=relaxed_bernoulli", "method.latent_dim=20", "model.hidden=[400]",
                      "trainer.batch_size=128"],
    },
}

TARGETS = {
    "epoch_speedup": 3.0,  # default-config epoch vs the DataLoader baseline
    "data_share": 0.05,  # data work as a share of step time
    "kernel_speedup": 1.5,  # Binary Concrete / Gumbel-Softmax vs torch.distributions
    "kernel_vs_gs": 3.0,  # any method's kernel at most this many times Gumbel-Softmax's
    "sweep_speedup": 1.7,  # joblib n_jobs=2 vs sequential
    "help_s": 1.5,  # relaxrun --help, whole process, seconds
    "iwae_gemm_share": 0.70,  # the IWAE bound's decoder work as a share of the float32 GEMM rate
}

log = logging.getLogger("benchmark")

# relaxrun's train() turns on flush-to-zero before any parallel work (trainer.flush_denormal=true),
# so that torch's OpenMP threads inherit it; this process does the same at start-up, for every
# section alike (the DataLoader baseline included), to time what a relaxrun process runs.
FLUSH_DENORMAL = True


# ------------------------------------------------------------------------------------------------
# machine state and figures
# ------------------------------------------------------------------------------------------------

def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Probe:
    """The machine's state over one measurement window."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.load0 = os.getloadavg()[0]
        self.busy0 = _busy_cpu_seconds()
        self.own0 = _own_cpu_seconds()

    def close(self) -> dict:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        busy = _busy_cpu_seconds()
        other = None
        if busy is not None and self.busy0 is not None:
            other = max(0.0, (busy - self.busy0 - (_own_cpu_seconds() - self.own0)) / wall)
        return {"load1_start": self.load0, "load1_end": os.getloadavg()[0], "other_cores": other, "wall_s": wall}


def summarize(values: list[float], probes: list[dict]) -> dict:
    others = [p["other_cores"] for p in probes if p["other_cores"] is not None]
    return {
        "median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
        "values": values,
        "load1_start": probes[0]["load1_start"], "load1_end": probes[-1]["load1_end"],
        "load1_max": max(max(p["load1_start"], p["load1_end"]) for p in probes),
        "other_cores": statistics.median(others) if others else None,
    }


def measure(fns: dict[str, Callable[[], float | dict]], repeats: int, warmup: int) -> dict:
    """Run every fn ``warmup`` times untimed, then ``repeats`` times interleaved (A B A B ...).

    A fn returns a number or a dict of numbers; the result maps name (or name/key) -> figure.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    values: dict[str, list] = {k: [] for k in fns}
    probes: dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            p = Probe()
            values[name].append(fn())
            probes[name].append(p.close())
    out = {}
    for name in fns:
        first = values[name][0]
        if isinstance(first, dict):
            for key in first:
                out[f"{name}/{key}"] = summarize([v[key] for v in values[name]], probes[name])
        else:
            out[name] = summarize(values[name], probes[name])
    return out


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import torchvision

    info = {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(), "device": str(device),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "relaxrun": str(Path(relaxrun.__file__).parent),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# data and configs
# ------------------------------------------------------------------------------------------------

def write_idx(path: Path, data: bytes, dims: tuple[int, ...]) -> None:
    """An IDX file: magic 00 00 08 <ndim>, big-endian uint32 dims, uint8 data."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, len(dims)]))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(data)


def generate_mnist(root: Path, n_train: int = 1000, n_test: int = 200, seed: int = 0) -> Path:
    """Digit-sized random images in torchvision's MNIST layout, for --smoke without real data."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
        for k in range(10):  # a bright stroke whose row encodes the label
            sel = labels == k
            images[sel, 3 + 2 * k:6 + 2 * k, 4:24] = 220
        write_idx(raw / f"{split}-images-idx3-ubyte", images.numpy().tobytes(), (n, 28, 28))
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels.numpy().tobytes(), (n,))
    return root


class Context:
    """Options and shared state of one benchmark run."""

    def __init__(self, args, data_root: str, tmp: Path):
        register_configs()  # the schema node that configs/config.yaml's defaults list names
        self.args = args
        self.data_root = data_root
        self.tmp = tmp
        self.device = pick_device(args.device)
        self.n_train = load_images("mnist", data_root, True, False).shape[0]
        self.notes: list[str] = []
        self.exe = relaxrun_command()
        self.data_root_shown = "<generated>" if args.data_root is None else args.data_root

    def base_overrides(self, iwae: bool = False) -> list[str]:
        """Overrides of every run. The end-of-run IWAE bound (eval.iwae_samples) is off unless asked
        for: it is evaluation, not training, and costs about as much as a few epochs."""
        ov = [f"data.root={self.data_root}", "data.download=false", "trainer.progress=false",
              "trainer.epochs=1", f"device={self.args.device}"] + ([] if iwae else ["eval.iwae_samples=0"])
        if self.args.threads:
            ov.append(f"trainer.threads={self.args.threads}")
        return ov

    def compose(self, overrides: list[str]):
        from hydra import compose, initialize_config_module

        with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
            return compose(config_name="config", overrides=self.base_overrides() + list(overrides))

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)

    def tmpdir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))


def relaxrun_command() -> list[str]:
    exe = shutil.which("relaxrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "relaxrun.cli"]


@contextlib.contextmanager
def num_threads(n: int | None):
    """torch.set_num_threads(n) inside the block (train() sets it process-wide when asked to)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------
# 1. training throughput: relaxrun's train() vs the DataLoader pipeline of public demos
# ------------------------------------------------------------------------------------------------

def relaxrun_epoch(ctx: Context, key: str, info: dict) -> dict:
    """Seconds per epoch of relaxrun.train.train (training loop only, as metrics.json reports it)."""
    steps = ctx.args.steps
    cfg = ctx.compose(CONFIGS[key]["overrides"] + ([f"trainer.max_steps={steps}"] if steps else []))
    run_dir = ctx.tmpdir("train-")
    with num_threads(None):
        t0 = time.perf_counter()
        metrics = train(cfg, run_dir)
        call = time.perf_counter() - t0
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds, done = metrics["history"][0]["seconds"], metrics["steps"]
    spe = ctx.steps_per_epoch(cfg.trainer.batch_size)
    info.update(steps_timed=done, steps_per_epoch=spe)
    # call_s - loop_s: data loading, model setup, the end-of-epoch evaluation, images, checkpoint
    return {"epoch_s": seconds * spe / done, "loop_s": seconds, "call_s": call}


class Baseline:
    """The pipeline of the public demos: torchvision MNIST + ToTensor + DataLoader(shuffle=True),
    binarized per batch, ``loss.item()`` every step; same model and method as relaxrun, with torch's
    default Adam (``relaxrun_adam=False``, as the demos build it) or relaxrun's."""

    def __init__(self, ctx: Context, key: str, relaxrun_adam: bool = False):
        import torchvision
        from torchvision import transforms

        self.ctx = ctx
        cfg = ctx.compose(CONFIGS[key]["overrides"])
        self.run, self.mcfg = validate(cfg)
        self.dataset = torchvision.datasets.MNIST(ctx.data_root, train=True, download=False,
                                                  transform=transforms.ToTensor())
        torch.manual_seed(self.run.seed)
        self.method = build_method(self.mcfg).to(ctx.device)
        self.model = build_model(self.run.model, self.method.param_dim, self.method.latent_dim).to(ctx.device)
        params = [*self.model.parameters(), *self.method.parameters()]
        if relaxrun_adam:
            self.optimizer = build_optimizer(params, self.run.optim)
        else:
            self.optimizer = torch.optim.Adam(params, lr=self.run.optim.lr, weight_decay=self.run.optim.weight_decay)

    def epoch(self, info: dict) -> float:
        from torch.utils.data import DataLoader

        bs, device, steps = self.run.trainer.batch_size, self.ctx.device, self.ctx.args.steps
        loader = DataLoader(self.dataset, batch_size=bs, shuffle=True)
        tau = self.mcfg.tau
        total, n = 0.0, 0
        with num_threads(self.run.trainer.threads or None):
            t0 = time.perf_counter()
            for images, _ in loader:
                x = torch.bernoulli(images.view(images.shape[0], -1).to(device))
                terms = self.method.loss(self.model.encoder(x), self.model.decode, x, tau)
                self.optimizer.zero_grad()
                terms.loss.backward()
                self.optimizer.step()
                total += terms.loss.item()
                n += 1
                if steps and n >= steps:
                    break
            seconds = time.perf_counter() - t0
        spe = len(loader)
        info.update(steps_timed=n, steps_per_epoch=spe)
        return seconds * spe / n


def bench_throughput(ctx: Context) -> dict:
    out = {}
    for key in CONFIGS:
        baseline, baseline_adam = Baseline(ctx, key), Baseline(ctx, key, relaxrun_adam=True)
        info_r, info_b, info_a = {}, {}, {}
        figs = measure({"relaxrun": lambda: relaxrun_epoch(ctx, key, info_r),
                        "baseline": lambda: baseline.epoch(info_b),
                        "baseline_adam": lambda: baseline_adam.epoch(info_a)}, ctx.args.repeats, ctx.args.warmup)
        r, b, ba = figs["relaxrun/epoch_s"], figs["baseline"], figs["baseline_adam"]
        out[key] = {
            "label": CONFIGS[key]["label"], "relaxrun": r, "baseline": b, "baseline_adam": ba,
            "baseline_adam_steps_per_s": info_a["steps_per_epoch"] / ba["median"],
            "speedup_same_adam": ba["median"] / r["median"],
            "relaxrun_call_s": figs["relaxrun/call_s"], "relaxrun_loop_s": figs["relaxrun/loop_s"],
            "relaxrun_steps_timed": info_r["steps_timed"], "baseline_steps_timed": info_b["steps_timed"],
            "steps_per_epoch": info_r["steps_per_epoch"],
            "relaxrun_steps_per_s": info_r["steps_per_epoch"] / r["median"],
            "baseline_steps_per_s": info_b["steps_per_epoch"] / b["median"],
            "speedup": b["median"] / r["median"],
            "speedup_range": [b["min"] / r["max"], b["max"] / r["min"]],
        }
    return out


# ------------------------------------------------------------------------------------------------
# 1b. this tree against another revision of relaxrun (--against REV), side by side
# ------------------------------------------------------------------------------------------------

_REVISION_CHILD = r"""
import os, sys
tree = sys.argv[1]
sys.path.insert(0, tree)
# an editable install maps relaxrun (and relaxrun.configs, which lives in the repository's configs/)
# to its own checkout: drop that mapping, so the package *and its configs* come from this tree
sys.meta_path = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
import relaxrun
relaxrun.__path__.append(os.path.join(tree))  # relaxrun.configs = <tree>/configs
assert os.path.realpath(relaxrun.__file__).startswith(os.path.realpath(tree)), relaxrun.__file__
import relaxrun.configs
assert os.path.realpath(relaxrun.configs.__file__).startswith(os.path.realpath(tree)), relaxrun.configs.__file__
from relaxrun.cli import main
sys.argv = ["relaxrun", *sys.argv[2:]]
main()
"""


def export_revision(rev: str, dest: Path) -> str:
    """``git archive`` of ``rev`` unpacked into ``dest``; returns the full commit hash."""
    import io
    import tarfile

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return commit


def bench_against(ctx: Context) -> dict:
    """Seconds per default epoch of this tree and of revision ``--against``, each a whole ``relaxrun``
    CLI process on its own source tree (the same overrides), interleaved A B A B. The figure is the
    loop's own clock from metrics.json, as in section 1."""
    rev = ctx.args.against
    other = ctx.tmpdir("rev-")
    commit = export_revision(rev, other)
    trees = {"this tree": REPO, f"revision {rev}": other}
    overrides = ctx.base_overrides() + CONFIGS["default"]["overrides"]
    if ctx.args.steps:
        overrides.append(f"trainer.max_steps={ctx.args.steps}")
    spe = ctx.steps_per_epoch(ctx.compose(CONFIGS["default"]["overrides"]).trainer.batch_size)

    def fn(tree: Path):
        def run():
            run_dir = ctx.tmpdir("against-")
            log_path = run_dir.with_suffix(".log")
            env = dict(os.environ, PYTHONPATH=str(tree), HYDRA_FULL_ERROR="1")
            res = run_child([sys.executable, "-c", _REVISION_CHILD, str(tree), *overrides,
                             f"hydra.run.dir={run_dir}"], log_path, env=env, cwd=ctx.tmp)
            if res["rc"] != 0:
                raise RuntimeError(f"relaxrun from {tree} failed: {child_failed(res, log_path)}")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            shutil.rmtree(run_dir, ignore_errors=True)
            return metrics["history"][0]["seconds"] * spe / metrics["steps"]
        return run

    figs = measure({name: fn(tree) for name, tree in trees.items()}, ctx.args.repeats, ctx.args.warmup)
    this, then = figs["this tree"], figs[f"revision {rev}"]
    return {"label": CONFIGS["default"]["label"], "revision": rev, "commit": commit, "figures": figs,
            "ratio": this["median"] / then["median"]}


# ------------------------------------------------------------------------------------------------
# 1c. the commands that only print: --help and --cfg job (and python -c "import torch" beside them)
# ------------------------------------------------------------------------------------------------

CLI_COMMANDS = {"relaxrun --help": ["--help"], "relaxrun --cfg job": ["--cfg", "job"]}


def bench_cli(ctx: Context) -> dict:
    """Wall seconds of ``relaxrun --help`` and ``relaxrun --cfg job`` as whole processes (start to
    exit, output discarded), for this tree and, with ``--against REV``, for that revision, beside
    ``python -c "import torch"``; interleaved."""
    trees = {"this tree": REPO}
    commit = None
    if ctx.args.against:
        other = ctx.tmpdir("cli-rev-")
        commit = export_revision(ctx.args.against, other)
        trees[f"revision {ctx.args.against}"] = other

    def wall(cmd: list[str], env: dict) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            p = subprocess.run(cmd, env=env, cwd=ctx.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
            elapsed = time.perf_counter() - t0
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[-2:])} failed ({p.returncode}): {p.stderr[-500:]}")
            return elapsed
        return run

    fns = {}
    for tname, tree in trees.items():
        env = dict(os.environ, PYTHONPATH=str(tree))
        for cname, args in CLI_COMMANDS.items():
            fns[f"{cname}|{tname}"] = wall([sys.executable, "-c", _REVISION_CHILD, str(tree), *args], env)
    fns["python -c \"import torch\""] = wall([sys.executable, "-c", "import torch"], dict(os.environ))
    figs = measure(fns, ctx.args.repeats, ctx.args.warmup)
    return {"figures": figs, "revision": ctx.args.against, "commit": commit}


# ------------------------------------------------------------------------------------------------
# 2. where the time goes, and host syncs per step
# ------------------------------------------------------------------------------------------------

PHASES = ("data", "forward", "backward", "optimizer", "logging")


class InstrumentedLoop:
    """The real training step with a timer between its parts: the objects ``relaxrun.train.build``
    makes, ``Setup.step`` (the method's own ``training_step``, whose ``tools.phase`` hook marks the
    end of its forward, backward and optimizer parts) and the loop's ``StepLog`` (the per-step
    bookkeeping and the log every trainer.log_every steps). Only the batch iteration is driven from
    here (``Data.batches`` + ``Data.train_batch``, as train() calls them)."""

    def __init__(self, ctx: Context, key: str, extra: list[str] = (), data=None):
        from torch.utils.tensorboard import SummaryWriter

        cfg = ctx.compose(CONFIGS[key]["overrides"] + list(extra))
        self.run, self.mcfg = validate(cfg)
        self.device = ctx.device
        self.setup = build(self.run, self.mcfg, self.device, data=data)
        self.model, self.method = self.setup.model, self.setup.method
        self.optimizer = self.setup.tools.optimizers["main"]
        self.writer = SummaryWriter(str(ctx.tmpdir("tb-")))
        self.log = StepLog(self.writer, self.run.trainer.log_every, 0, self.optimizer)
        self.log.start_epoch([0.0, 0.0, 0.0], self.device)
        self.step = 0
        self.batches = None
        self.marks: list[tuple[str, float]] = []

    def close(self) -> None:
        self.writer.close()

    def next_batch(self):
        tr = self.run.trainer
        while True:
            if self.batches is None:
                self.batches = self.data.batches(tr.batch_size, self.setup.gens["data"])
            try:
                return next(self.batches)
            except StopIteration:
                self.batches = None

    @property
    def data(self):
        return self.setup.data

    def steps(self, n: int, timed: bool = True, threads: int | None = None) -> dict:
        """``n`` training steps; per-phase times. ``threads`` overrides trainer.threads."""
        dev, s = self.device, self.setup
        t = dict.fromkeys(PHASES, 0.0)
        pc = time.perf_counter
        marks = self.marks

        def phase(name: str) -> None:
            if timed:
                sync(dev)
            marks.append((name, pc()))

        s.tools.phase = phase
        try:
            with num_threads(threads or self.run.trainer.threads or None):
                for _ in range(n):
                    marks.clear()
                    t0 = pc()
                    _, _, idx = self.next_batch()
                    x = self.data.train_batch(idx, s.gens["binarize"])
                    phase("data")
                    terms = s.step(x, self.step)
                    self.step += 1
                    self.log.record(terms, self.step, lambda: self.method.tau)
                    phase("logging")
                    prev = t0
                    for name, at in marks:  # a method with several backward/optimizer parts adds them up
                        t[name] += at - prev
                        prev = at
        finally:
            s.tools.phase = _no_phase
        total = sum(t.values())
        out = {f"{k}_ms": 1e3 * v / n for k, v in t.items()}
        out["total_ms"] = 1e3 * total / n
        out.update({f"{k}_share": v / total for k, v in t.items()})
        return out


SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@contextlib.contextmanager
def count_host_syncs(counter: dict):
    """Count Tensor.item/tolist/__bool__/__float__/__int__/numpy calls made from relaxrun's code,
    keyed by (file:line, method). Each is a device->host copy that stalls a GPU's queue."""
    pkg = str(Path(relaxrun.__file__).resolve().parent)
    prefix = pkg + os.sep
    saved = {}
    for name in SYNC_METHODS:
        saved[name] = torch.Tensor.__dict__.get(name, None)
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, __original=original, __name=name, **k):
            caller = sys._getframe(1)
            filename = os.path.abspath(caller.f_code.co_filename)
            if filename.startswith(prefix):
                key = (f"{os.path.relpath(filename, os.path.dirname(pkg))}:{caller.f_lineno}", __name)
                counter[key] = counter.get(key, 0) + 1
            return __original(self, *a, **k)

        setattr(torch.Tensor, name, wrapper)
    try:
        yield counter
    finally:
        for name, old in saved.items():
            if old is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, old)


def syncs_per_step(ctx: Context, key: str) -> dict:
    """Host syncs issued by relaxrun code per training step of the real train(): runs of A and B
    steps within one epoch share every once-per-run and once-per-epoch call, so the difference of
    their counts over B - A steps is the per-step rate."""
    cfg = ctx.compose(CONFIGS[key]["overrides"])
    spe = ctx.steps_per_epoch(cfg.trainer.batch_size)
    log_every = cfg.trainer.log_every
    extra = []
    if 3 * log_every >= spe:
        log_every = max(1, (spe - 1) // 3)
        extra.append(f"trainer.log_every={log_every}")
    a, b = log_every, 3 * log_every
    counts = []
    for steps in (a, b):
        cfg = ctx.compose(CONFIGS[key]["overrides"] + extra + [f"trainer.max_steps={steps}"])
        counter: dict = {}
        run_dir = ctx.tmpdir("syncs-")
        with num_threads(None), count_host_syncs(counter):
            train(cfg, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        counts.append(counter)
    keys = sorted(set(counts[0]) | set(counts[1]))
    per_line = []
    for k in keys:
        d = counts[1].get(k, 0) - counts[0].get(k, 0)
        if d:
            file_line, method = k
            path, line = file_line.rsplit(":", 1)
            code = linecache.getline(str(Path(relaxrun.__file__).resolve().parents[1] / path), int(line)).strip()
            per_line.append({"where": file_line, "call": method, "per_step": d / (b - a), "code": code})
    return {"per_step": sum(p["per_step"] for p in per_line), "lines": per_line, "log_every": log_every,
            "steps": [a, b], "total_per_run": [sum(c.values()) for c in counts]}


def bench_breakdown(ctx: Context, throughput: dict | None) -> dict:
    out = {}
    for key in CONFIGS:
        loop = InstrumentedLoop(ctx, key)
        n = ctx.args.breakdown_steps
        figs = measure({"step": lambda: loop.steps(n)}, ctx.args.repeats, ctx.args.warmup)
        loop.close()
        res = {"label": CONFIGS[key]["label"], "steps": n,
               "phases": {k.split("/", 1)[1]: v for k, v in figs.items()},
               "matmul_gflop": model_matmul_flops(loop.model, loop.run.trainer.batch_size) / 1e9}
        if throughput and key in throughput:
            t = throughput[key]
            res["train_ms_per_step"] = 1e3 * t["relaxrun"]["median"] / t["steps_per_epoch"]
        out[key] = res
    out["syncs"] = syncs_per_step(ctx, "default")
    out["gemm_peak"] = gemm_peak(ctx)
    return out


def model_matmul_flops(model: torch.nn.Module, batch: int) -> float:
    """Multiply-add work of one training step's matrix products, in FLOPs (2 per multiply-add):
    forward ``2 B in out`` per linear layer; backward twice that (input and weight gradients), less
    the input gradient of the encoder's first layer, whose input (the images) needs none. Elementwise
    work is left out: this is the part a CPU can run at its GEMM rate."""
    def flops(m):
        return 2 * batch * m.in_features * m.out_features

    fwd = sum(flops(m) for m in model.modules() if isinstance(m, torch.nn.Linear))
    first = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    return 3 * fwd - flops(first)


def gemm_peak(ctx: Context, n: int = 1024) -> dict:
    """This CPU's float32 matrix-product rate at the default threads: a square n x n x n sgemm."""
    a = torch.randn(n, n, device=ctx.device)
    b = torch.randn(n, n, device=ctx.device)

    def fn():
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        sync(ctx.device)
        return 5 * 2 * n ** 3 / (time.perf_counter() - t0) / 1e9

    return {"n": n, "gflops": measure({"gemm": fn}, ctx.args.repeats, ctx.args.warmup)["gemm"]}


# ------------------------------------------------------------------------------------------------
# 2b. every method's training step on the default model
# ------------------------------------------------------------------------------------------------

#: where a method's step spends more than the default's (decoder passes per input, extra backward passes)
STEP_NOTES = {
    "reinforce": "`samples=2` hard draws per input, each decoded: 2 decoder passes forward and back",
    "vimco": "`samples=2` draws per input, each decoded (2 decoder passes), plus the k x k leave-one-out bounds",
    "arm": "the antithetic pair b, b~: 2 decoder passes per input",
    "disarm": "the antithetic pair b, b~: 2 decoder passes per input",
    "rebar": "3 decoder passes per input (f(b), f(sigma(z)), f(sigma(z~))) and a second, double backward "
             "pass through them for the variance gradient of the temperature and eta",
    "relax": "as rebar, plus the control-variate MLP at z and z~ and its parameters in the double backward",
    "gumbel_topk": "`kl_samples=8` hard top-k draws per input for the score-function KL",
    "correlated_bernoulli": "the 200 x 200 Gaussian-copula factor per batch",
}


def bench_methods(ctx: Context) -> dict:
    """ms per training step of every registered method at its default options on the default model
    and batch (``Setup.step`` + the loop's StepLog, as section 2 times it), interleaved."""
    n = ctx.args.method_steps
    loops, skipped, data = {}, {}, None
    for name in available_methods():
        try:
            loops[name] = InstrumentedLoop(ctx, "default", [f"method={name}"], data=data)
            data = loops[name].data
        except Exception as err:  # noqa: BLE001 - a method being written must not sink the suite
            skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    figs = measure({name: (lambda lp=lp: lp.steps(n)) for name, lp in loops.items()}, ctx.args.repeats,
                   ctx.args.warmup)
    out = {}
    for name, lp in loops.items():
        lp.close()
        out[name] = {"latent": lp.method.latent_type, "param_dim": lp.method.param_dim,
                     "phases": {k.split("/", 1)[1]: v for k, v in figs.items() if k.startswith(f"{name}/")}}
    ref = out.get("gumbel_softmax", {}).get("phases", {}).get("total_ms", {}).get("median")
    for m in out.values():
        m["vs_gumbel_softmax"] = m["phases"]["total_ms"]["median"] / ref if ref else None
    return {"steps": n, "methods": out, "skipped": skipped}


# ------------------------------------------------------------------------------------------------
# 3. distribution kernels
# ------------------------------------------------------------------------------------------------

KERNEL_BATCH = 100
BERNOULLI_UNITS = 200
CATEGORICAL = (20, 10)


def method_kernel_case(name: str, device: torch.device | None = None):
    """(callable doing loss + backward, description) for method ``name`` at the fixed size on ``device``
    (the CPU by default), or a string saying why it cannot run."""
    device = device or torch.device("cpu")
    try:
        cls = get_method_class(name)
        fields = {f.name for f in dataclasses.fields(cls.Config)}
        # categorical sizes for a categorical method, or one whose default `latent` option is categorical
        if "categories" in fields and getattr(method_options(name), "latent", "categorical") == "categorical":
            kwargs = {"latent_dim": CATEGORICAL[0], "categories": CATEGORICAL[1]}
            size = f"{KERNEL_BATCH} x {CATEGORICAL[0]}x{CATEGORICAL[1]}"
        elif "latent_dim" in fields:
            kwargs = {"latent_dim": BERNOULLI_UNITS}
            size = f"{KERNEL_BATCH} x {BERNOULLI_UNITS}"
        else:
            return f"its config has no latent_dim option (fields: {', '.join(sorted(fields))})"
        method = cls(method_options(name, **kwargs)).to(device)
        g = torch.Generator().manual_seed(0)
        params = torch.randn(KERNEL_BATCH, method.param_dim, generator=g).to(device).requires_grad_()
        x = torch.bernoulli(torch.full((KERNEL_BATCH, method.latent_dim), 0.5), generator=g).to(device)

        def decode(z):  # identity: the decoder costs nothing, the kernel is all that is timed
            return z

        def call():
            params.grad = None
            method.zero_grad(set_to_none=True)
            method.loss(params, decode, x, 1.0).loss.backward()

        call()  # fails here rather than inside the timing
        return call, size
    except Exception as err:  # noqa: BLE001 - a method still being written must not sink the suite
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def raw_kernel_cases(device: torch.device | None = None) -> dict:
    """name -> (make(tau) -> callable, family, description), the tensors on ``device`` (CPU by default)."""
    device = device or torch.device("cpu")
    from torch.distributions import RelaxedBernoulli as TorchRelaxedBernoulli
    from torch.distributions import RelaxedOneHotCategorical

    from relaxrun.distributions.binary_concrete import RelaxedBernoulli
    from relaxrun.distributions.concrete import GumbelSoftmax

    def case(shape, body):
        def make(tau: float):
            g = torch.Generator().manual_seed(0)
            logits = (2 * torch.randn(shape, generator=g)).to(device).requires_grad_()
            w = torch.randn(shape, generator=g).to(device)
            state = {}

            def call():
                logits.grad = None
                z, lp = body(logits, tau)
                loss = (z * w).sum() + (lp.sum() if lp is not None else 0.0)
                loss.backward()
                state.update(lp=lp, grad=logits.grad)

            return call, state
        return make

    bshape, cshape = (KERNEL_BATCH, BERNOULLI_UNITS), (KERNEL_BATCH, *CATEGORICAL)
    t = torch.tensor

    def rr_bc(lg, tau):
        q = RelaxedBernoulli(tau, logits=lg, validate_args=False)
        z = q.rsample()
        return z, q.log_prob(z)

    def rr_bc_checked(lg, tau):
        q = RelaxedBernoulli(tau, logits=lg, validate_args=True)
        z = q.rsample()
        return z, q.log_prob(z)

    def rr_gs_checked(lg, tau):
        q = GumbelSoftmax(tau, logits=lg, validate_args=True)
        z = q.rsample()
        return z, q.log_prob(z)

    def rr_bc_logit(lg, tau):
        q = RelaxedBernoulli(tau, logits=lg, validate_args=False)
        y = q.rsample_logit()
        return torch.sigmoid(y), q.log_prob_logit(y)

    def torch_bc(lg, tau):
        q = TorchRelaxedBernoulli(t(tau), logits=lg, validate_args=False)
        z = q.rsample()
        return z, q.log_prob(z)

    def rr_gs(lg, tau):
        q = GumbelSoftmax(tau, logits=lg, validate_args=False)
        z = q.rsample()
        return z, q.log_prob(z)

    def rr_gs_log(lg, tau):
        q = GumbelSoftmax(tau, logits=lg, validate_args=False)
        log_z = q.rsample_log()
        return log_z.exp(), q.log_prob_log_value(log_z)

    def torch_gs(lg, tau):
        q = RelaxedOneHotCategorical(t(tau), logits=lg, validate_args=False)
        z = q.rsample()
        return z, q.log_prob(z)

    def f_gs(lg, tau):
        return F.gumbel_softmax(lg, tau=tau), None

    return {
        "relaxrun RelaxedBernoulli: rsample, log_prob": (case(bshape, rr_bc), "binary", "relaxrun"),
        "relaxrun RelaxedBernoulli: rsample_logit, log_prob_logit (the method's path)":
            (case(bshape, rr_bc_logit), "binary", "relaxrun"),
        "relaxrun RelaxedBernoulli: rsample, log_prob, validate_args=True":
            (case(bshape, rr_bc_checked), "binary", "relaxrun"),
        "torch.distributions.RelaxedBernoulli: rsample, log_prob": (case(bshape, torch_bc), "binary", "torch"),
        "relaxrun GumbelSoftmax: rsample, log_prob": (case(cshape, rr_gs), "categorical", "relaxrun"),
        "relaxrun GumbelSoftmax: rsample_log, log_prob_log_value (the method's path)":
            (case(cshape, rr_gs_log), "categorical", "relaxrun"),
        "relaxrun GumbelSoftmax: rsample, log_prob, validate_args=True":
            (case(cshape, rr_gs_checked), "categorical", "relaxrun"),
        "torch.distributions.RelaxedOneHotCategorical: rsample, log_prob":
            (case(cshape, torch_gs), "categorical", "torch"),
        "F.gumbel_softmax: rsample only (no density)": (case(cshape, f_gs), "categorical", "torch"),
    }


ACCURACY_TAUS = (0.1, 0.05)

# what makes a method's kernel costlier than Gumbel-Softmax's, from torch.profiler on this suite's
# kernel case; INHERENT_KERNELS are exempt from the 3x target (the cost is in the method's definition)
SLOWER_KERNELS = {
    "correlated_bernoulli": "the Gaussian copula: a 200 x 200 correlation factor built and applied per batch "
                            "(O(D²) per sample, triangular solves for the density) and a probit per unit. "
                            "Inherent to the method.",
    "gumbel_topk": "the exact Plackett-Luce KL by score function: `kl_samples=8` hard top-k draws per input, "
                   "each with its log-probability (a top-k and k successive masked log-sum-exps), plus k = 3 "
                   "successive softmaxes for the relaxed sample: about 8 + 3 times the work of one softmax. "
                   "The estimator's sample count sets it (`method.kl_samples`).",
    "stochastic_gates": "the exact mixed law: two Gaussian log-CDFs per entry for the atoms "
                        "(`torch.special.log_ndtr`, about 20 ns an entry on this CPU, the largest single "
                        "cost), the Gaussian density inside and their 0/1-weighted combination.",
    "hard_concrete": "the exact mixed law: two log-sigmoid atoms per entry, the stretched Binary Concrete "
                     "density inside (softplus terms) and their 0/1-weighted combination.",
}
# the unbiased estimators: several decoder passes (here identity ones) and score-function terms per
# input; allowed to cost more than a relaxation, reported with where the time goes
SCORE_FUNCTION_KERNELS = {
    "reinforce": "`samples=2` hard draws per input, their log q and the leave-one-out baseline: two decoder "
                 "passes per input (identity here); in a real step the second decoder pass dominates "
                 "(section 2b).",
    "vimco": "`samples=2` draws per input, their log-weights (log q, log prior and the decoder pass each), the "
             "k x k leave-one-out bounds (log-sum-exps) and the softmax of the weights.",
    "arm": "the antithetic pair b, b~ from one uniform: two decoder passes per input.",
    "disarm": "the antithetic pair b, b~ from one uniform: two decoder passes per input, plus sigma(|a|).",
    "rebar": "three decoder passes per input (f(b), f(sigma(z)), f(sigma(z~))), the conditional resample z~, "
             "and an extra autograd pass to the logits for d c(z) - d c(z~) (create_graph in training, for "
             "the variance objective's second-order gradient).",
    "relax": "as rebar, plus the control-variate MLP (200 hidden units) at sigma(z) and sigma(z~) in the same "
             "extra autograd pass.",
}
SLOWER_KERNELS.update(SCORE_FUNCTION_KERNELS)
SLOWER_KERNELS.update({
    "gumbel_rao": "`samples=10` Gumbel draws conditioned on the argmax per input (a log-sum-exp, a truncated "
                  "Gumbel per entry in log space) and 10 softmaxes averaged for the backward pass: the "
                  "Rao-Blackwellisation is the cost, and it scales with `method.samples`.",
    "generalized_gumbel": "a Gumbel-Softmax over the whole truncated support of every count unit (K = 29 at "
                          "the default tolerance: 20 x 29 entries against Gumbel-Softmax's 20 x 10), the "
                          "truncated Poisson log-probabilities (log-gamma terms) and the exact KL summed over "
                          "the support.",
})
INHERENT_KERNELS = {"correlated_bernoulli", "gumbel_rao", "generalized_gumbel", *SCORE_FUNCTION_KERNELS}


def per_call_ms(call: Callable[[], None], calls: int, device: torch.device | None = None) -> float:
    if device is not None:
        sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        call()
    if device is not None:
        sync(device)  # the GPU's queue drained: the time of the work, not of its launch
    return 1e3 * (time.perf_counter() - t0) / calls


def bench_kernels(ctx: Context) -> dict:
    calls = ctx.args.kernel_calls
    methods, skipped, fns = {}, {}, {}
    with num_threads(ctx.args.threads or None):
        for name in available_methods():
            case = method_kernel_case(name, ctx.device)
            if isinstance(case, str):
                skipped[name] = case
                continue
            call, size = case
            methods[name] = {"size": size}
            fns[f"method:{name}"] = (lambda c=call: per_call_ms(c, calls, ctx.device))
        raw = raw_kernel_cases(ctx.device)
        accuracy = {}
        for name, (make, family, lib) in raw.items():
            call, _ = make(1.0)
            call()
            fns[f"raw:{name}"] = (lambda c=call: per_call_ms(c, calls, ctx.device))
            acc = {}
            for tau in ACCURACY_TAUS:
                c, state = make(tau)
                c()
                lp, grad = state["lp"], state["grad"]
                acc[str(tau)] = {
                    "logprob_nonfinite": None if lp is None else float((~torch.isfinite(lp)).float().mean()),
                    "grad_nonfinite": float((~torch.isfinite(grad)).float().mean()),
                }
            accuracy[name] = {"family": family, "lib": lib, "small_tau": acc}
        figs = measure(fns, ctx.args.repeats, ctx.args.warmup)
    for name in methods:
        methods[name]["ms"] = figs[f"method:{name}"]
    gs = methods.get("gumbel_softmax", {}).get("ms", {}).get("median")
    for name, m in methods.items():
        m["vs_gumbel_softmax"] = m["ms"]["median"] / gs if gs else None
    raw_out = {name: dict(accuracy[name], ms=figs[f"raw:{name}"]) for name in raw}
    return {"calls_per_repeat": calls, "methods": methods, "skipped": skipped, "raw": raw_out}


# ------------------------------------------------------------------------------------------------
# 4./5. subprocess runs: sweep throughput, peak RSS, compile
# ------------------------------------------------------------------------------------------------

# Started by a small Python process rather than by the benchmark itself: on Linux a child's ru_maxrss
# starts at the resident size of the process it was forked from (exec records the old address
# space's high-water mark), so a child of this ~1 GB process would report at least ~1 GB.
_SPAWNER = r"""
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
kib = ru.ru_maxrss / 1024 if sys.platform == "darwin" else ru.ru_maxrss
with open(sys.argv[1], "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t0,
               "maxrss_mib": kib / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}, f)
"""


def run_child(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd``: exit code, wall time, CPU time and the child's own peak RSS (os.wait4 on it)."""
    result = log_path.with_suffix(".rusage.json")
    with open(log_path, "wb") as logf:
        p = subprocess.run([sys.executable, "-c", _SPAWNER, str(result), *cmd], stdout=logf,
                           stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if not result.exists():
        return {"rc": p.returncode or 1, "wall_s": float("nan"), "maxrss_mib": float("nan"), "cpu_s": float("nan")}
    return json.loads(result.read_text())


def child_failed(res: dict, log_path: Path) -> str:
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    return f"exit {res['rc']}: " + " | ".join(tail)


def joblib_available() -> bool:
    try:
        return importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None
    except (ImportError, ValueError):
        return False


SWEEP = ["method=relaxed_bernoulli,gumbel_softmax", "tau=0.5,1.0"]


def bench_sweep(ctx: Context) -> dict:
    steps = ctx.args.sweep_steps
    base = ctx.exe + ["-m", *SWEEP, f"trainer.max_steps={steps}"] + [
        o for o in ctx.base_overrides() if not o.startswith("trainer.threads=")]
    own = [f"trainer.threads={ctx.args.threads}"] if ctx.args.threads else []
    variants = {"sequential (basic launcher)": own}
    notes = []
    if ctx.args.smoke:  # three more Python processes importing torch: too slow for a CI smoke run
        notes.append("--smoke: the joblib launcher is not run")
    elif joblib_available():
        variants["joblib, n_jobs=2"] = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] + own
        variants["joblib, n_jobs=2, trainer.threads=1"] = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                                           "trainer.threads=1"]
    else:
        notes.append("hydra-joblib-launcher is not installed (pip install 'relaxrun[sweep]'): joblib not measured")
    rss = {}

    def make(name, extra):
        def fn():
            d = ctx.tmpdir("sweep-")
            logp = d / "log.txt"
            res = run_child(base + extra + [f"hydra.sweep.dir={d / 'multirun'}"], logp, cwd=d)
            jobs = len(list((d / "multirun").rglob("metrics.json")))
            if res["rc"] != 0 or jobs != 4:
                raise RuntimeError(f"sweep '{name}' failed ({jobs}/4 jobs wrote metrics.json; "
                                   f"{child_failed(res, logp)})")
            rss.setdefault(name, []).append(res["maxrss_mib"])
            shutil.rmtree(d, ignore_errors=True)
            return res["wall_s"]
        return fn

    figs = measure({name: make(name, extra) for name, extra in variants.items()}, ctx.args.repeats,
                   ctx.args.sweep_warmup)
    seq = figs["sequential (basic launcher)"]["median"]
    shown = [c.replace(ctx.data_root, ctx.data_root_shown) for c in base[len(ctx.exe):]]
    out = {"jobs": 4, "steps_per_job": steps, "command": " ".join(shlex.quote(c) for c in ["relaxrun", *shown]),
           "variants": {}, "notes": notes}
    for name, fig in figs.items():
        out["variants"][name] = {"wall": fig, "jobs_per_min": 4 * 60 / fig["median"], "speedup": seq / fig["median"],
                                 "parent_maxrss_mib": statistics.median(rss[name])}
    return out


def bench_rss(ctx: Context) -> dict:
    steps = ctx.args.rss_steps
    out = {"steps": steps, "runs": {}}
    fns = {}
    runs = {key: (CONFIGS[key]["label"], CONFIGS[key]["overrides"] + ctx.base_overrides()) for key in CONFIGS}
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        iwae = compose(config_name="config", overrides=ctx.base_overrides(iwae=True)).eval.iwae_samples
    if iwae:
        runs["default+iwae"] = (f"default config with its end-of-run IWAE bound (eval.iwae_samples={iwae})",
                                ctx.base_overrides(iwae=True))
    keys = ["default"] if ctx.args.smoke else list(runs)
    for key in keys:
        def fn(key=key):
            d = ctx.tmpdir("rss-")
            logp = d / "log.txt"
            res = run_child(ctx.exe + runs[key][1] + [f"trainer.max_steps={steps}", f"hydra.run.dir={d / 'run'}"],
                            logp, cwd=d)
            if res["rc"] != 0:
                raise RuntimeError(f"relaxrun ({key}) failed: {child_failed(res, logp)}")
            shutil.rmtree(d, ignore_errors=True)
            return res["maxrss_mib"]
        fns[key] = fn
    # the IWAE run takes minutes, and a peak RSS hardly varies between runs: measured once
    slow = {k: fns.pop(k) for k in ["default+iwae"] if k in fns}
    figs = measure(fns, ctx.args.repeats, 0)
    if slow:
        figs.update(measure(slow, 1, 0))
    for key in keys:
        out["runs"][key] = {"label": runs[key][0], "maxrss_mib": figs[key]}
    return out


# ------------------------------------------------------------------------------------------------
# 6. the end-of-run IWAE-K bound against the machine's GEMM rate
# ------------------------------------------------------------------------------------------------

def decoder_flops_per_sample(model: torch.nn.Module) -> int:
    """Multiply-add work of one decoder pass for one latent draw, in FLOPs (2 per multiply-add)."""
    return sum(2 * m.in_features * m.out_features for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))


@torch.no_grad()
def iwae_reference(model, method, x: torch.Tensor, k: int, batch_size: int, seed: int, chunk: int = 100) -> float:
    """The IWAE bound as relaxrun computed it before its evaluation path was batched for the GEMM rate
    (revision 7a13899, categorical family): the same draws, in the same order, each chunk of ``chunk``
    samples decoded in one call, ``binary_cross_entropy_with_logits`` on the whole chunk, one-hots by
    ``gumbel_max_one_hot``. Kept here so that the speed-up and the equality of the values are measured
    side by side."""
    from relaxrun.distributions.gumbel import gumbel_max_one_hot
    from relaxrun.evaluate import log_mean_exp
    from relaxrun.methods.base import bernoulli_nll
    from relaxrun.runtime import seeded

    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with seeded(seed, x.device):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            logits = method.split(model.encoder(xb))
            parts = []
            for j in range(0, k, chunk):
                c = gumbel_max_one_hot(logits, (min(chunk, k - j),))
                log_px = -bernoulli_nll(model.decode(c.flatten(-2)), xb)
                log_q = (c * torch.log_softmax(logits, -1)).sum((-1, -2))
                parts.append(log_px - method.cfg.latent_dim * math.log(method.cfg.categories) - log_q)
            total += -log_mean_exp(torch.cat(parts, 0).to(torch.float64), 0).sum()
    return float(total / x.shape[0])


def iwae_profile(fn: Callable[[], object]) -> list[dict]:
    """Self CPU (or CUDA) time by operator of one call of ``fn`` (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) if torch.cuda.is_available() else e.self_cpu_time_total
        if t > 0:
            rows.append({"op": e.key, "self_us": float(t), "calls": e.count})
    total = sum(r["self_us"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["self_us"] / total
    return sorted(rows, key=lambda r: -r["self_us"])


def bench_iwae(ctx: Context) -> dict:
    """The end-of-run IWAE-K bound of the default config (relaxrun.evaluate.iwae_bound, K and the image
    batch from the config, the data's eval seed) on the first ``--iwae-images`` test images, beside the
    float32 GEMM rate of this device (an n x n x n torch.mm at the same threads) and the previous
    implementation (:func:`iwae_reference`), interleaved. The decoder's matrix products are counted
    exactly (2 FLOPs per multiply-add per layer per draw) and the time extrapolated linearly to the
    whole test set (the bound's work is the same for every image)."""
    from relaxrun.evaluate import iwae_bound

    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="relaxrun.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=ctx.base_overrides(iwae=True) + CONFIGS["default"]["overrides"]
                      + (["eval.iwae_samples=50"] if ctx.args.smoke else []))
    run, mcfg = validate(cfg)
    data = load_data(run.data, ctx.device)
    torch.manual_seed(run.seed)
    method = build_method(mcfg, run.trainer).to(ctx.device)
    model = build_model(run.model, method.param_dim, method.latent_dim).to(ctx.device)
    k, batch, seed = run.eval.iwae_samples, run.eval.iwae_batch, run.data.eval_seed
    n_test = data.test.shape[0]
    n = min(ctx.args.iwae_images, n_test)
    x = data.test[:n]
    per_sample = decoder_flops_per_sample(model)
    flops = n * k * per_sample
    gn = 256 if ctx.args.smoke else ctx.args.gemm_n
    ga, gb = torch.randn(gn, gn, device=ctx.device), torch.randn(gn, gn, device=ctx.device)
    values: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], float]) -> Callable[[], dict]:
        def run_once() -> dict:
            sync(ctx.device)
            t0 = time.perf_counter()
            values[name] = fn()
            sync(ctx.device)
            dt = time.perf_counter() - t0
            return {"s": dt, "gflops": flops / dt / 1e9}
        return run_once

    def gemm_fn() -> float:  # the GEMM rate, timed in turn with the bound: under the same machine load
        torch.mm(ga, gb)
        sync(ctx.device)
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(ga, gb)
        sync(ctx.device)
        return 5 * 2 * gn ** 3 / (time.perf_counter() - t0) / 1e9

    fns = {"relaxrun": timed("relaxrun", lambda: iwae_bound(model, method, x, k, batch, seed=seed))}
    if hasattr(method, "split"):  # the reference is the categorical family's former code path
        fns["previous"] = timed("previous", lambda: iwae_reference(model, method, x, k, batch, seed))
    fns["gemm"] = gemm_fn
    # torch's default threads (what a run uses) and, where that is more than one, 1 thread: on a shared
    # machine a single thread does not wait on a descheduled sibling at every operator
    settings = [ctx.args.threads] if ctx.args.threads else sorted({torch.get_num_threads(), 1}, reverse=True)
    out = {"k": k, "batch": batch, "images": n, "test_images": n_test, "method": mcfg.name,
           "decoder": [m.in_features for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)] + [784],
           "flops_per_sample": per_sample, "flops_timed": flops, "flops_full": n_test * k * per_sample,
           "gemm_n": gn, "values": values, "device": str(ctx.device), "by_threads": {}}
    for th in settings:
        with num_threads(th):
            figs = measure(fns, ctx.args.repeats, ctx.args.warmup)
        rate = figs["gemm"]["median"]
        entry = {"threads": th, "gemm": figs["gemm"], "variants": {}}
        for name in [f for f in fns if f != "gemm"]:
            sec, g = figs[f"{name}/s"], figs[f"{name}/gflops"]
            entry["variants"][name] = {"s": sec, "gflops": g, "share_of_gemm": g["median"] / rate,
                                       "share_range": [g["min"] / rate, g["max"] / rate],
                                       "full_s": sec["median"] * n_test / n}
        if "previous" in entry["variants"]:
            entry["speedup"] = entry["variants"]["previous"]["s"]["median"] / entry["variants"]["relaxrun"]["s"]["median"]
        out["by_threads"][str(th)] = entry
    if "previous" in values:
        out["value_difference"] = abs(values["relaxrun"] - values["previous"])
    small = x[:min(n, batch)]
    with num_threads(settings[0]):
        prof = iwae_profile(lambda: iwae_bound(model, method, small, k, batch, seed=seed))
    gemm_ops = ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul")
    out["profile"] = {"images": small.shape[0], "threads": settings[0],
                      "gemm_share": sum(r["share"] for r in prof if r["op"] in gemm_ops), "top": prof[:10]}
    return out


# ------------------------------------------------------------------------------------------------
# 7. side by side with relaxit and Pyro, installed into an environment of their own
# ------------------------------------------------------------------------------------------------

PEER_PACKAGES = ["relaxit==1.2.1", "pyro-ppl"]
#: relaxit's and pyro-ppl's own dependencies that torch does not bring (torch, numpy and tqdm are shared)
PEER_EXTRA = ["pyro-api", "opt-einsum"]


def peer_env_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.split('+')[0]}"
    return Path(base) / "relaxrun-benchmark" / f"peers-relaxit-1.2.1-{tag}"


def make_peer_env(log_path: Path) -> tuple[Path | None, str]:
    """A virtual environment of its own (under the user's cache folder, reused once it works) holding
    relaxit==1.2.1 and pyro-ppl, never a dependency of relaxrun. Torch itself is shared: a ``.pth`` file
    appends this interpreter's site-packages to the new environment's path (after its own, so its own
    relaxit / pyro win), which spares a second 2 GB torch download; relaxit, pyro-ppl and their small
    dependencies are pip-installed into the new environment (``--ignore-installed --no-deps``, so pip
    puts them there even though this environment may hold a pyro-ppl of its own). Returns (its python,
    how it went) or (None, why not)."""
    import site
    import venv

    env = peer_env_dir()
    py = env / "bin" / "python"
    ok = env / ".relaxrun-peers-ok"
    if ok.exists() and py.exists():
        return py, f"reused {env}"
    shutil.rmtree(env, ignore_errors=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(purelib, "zz_shared_torch.pth").write_text("\n".join(ours) + "\n")
    steps = [[str(py), "-m", "pip", "download", "--no-deps", "-d", str(env / "wheels"), *PEER_PACKAGES],
             [str(py), "-m", "pip", "install", "--ignore-installed", "--no-deps", *PEER_PACKAGES, *PEER_EXTRA],
             [str(py), "-c", "import relaxit, pyro, relaxit.distributions; print(relaxit.__version__, pyro.__version__)"]]
    with open(log_path, "a") as logf:
        for cmd in steps:
            logf.write("$ " + " ".join(cmd) + "\n")
            logf.flush()
            p = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=900)
            if p.returncode != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                return None, f"`{' '.join(cmd[2:5])} ...` failed (exit {p.returncode}): " + " | ".join(tail)
    ok.write_text("ok\n")
    return py, f"created {env}"


def bench_peers(ctx: Context) -> dict:
    """relaxit 1.2.1 / Pyro / torch.distributions beside relaxrun: the kernels of every law they share
    (scripts/peer_kernels.py, in the peer environment, all libraries in one process, interleaved),
    and a whole-process 2-epoch run of relaxrun against a demo-style VAE script using relaxit
    (scripts/peer_demo_vae.py): wall time and peak RSS, interleaved."""
    log_path = ctx.tmp / "peers-env.log"
    out: dict = {"packages": PEER_PACKAGES, "env": str(peer_env_dir())}
    try:
        py, how = make_peer_env(log_path)
    except (OSError, subprocess.SubprocessError) as err:
        py, how = None, f"{type(err).__name__}: {err}"
    out["install"] = how
    if py is None:
        out["error"] = f"relaxit could not be installed: {how}"
        return out
    info = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    with contextlib.suppress(ValueError):
        out["versions"] = {d["name"]: d["version"] for d in json.loads(info.stdout)
                           if d["name"].lower() in ("relaxit", "pyro-ppl", "torch", "torchvision")}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # kernels
    kjson = ctx.tmp / "peer-kernels.json"
    calls = 3 if ctx.args.smoke else ctx.args.kernel_calls // 2
    cmd = [str(py), str(REPO / "scripts" / "peer_kernels.py"), str(kjson), "--repeats", str(ctx.args.repeats),
           "--warmup", str(ctx.args.warmup), "--calls", str(calls), "--threads", str(ctx.args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ctx.tmp)
    if p.returncode != 0:
        out["kernels_error"] = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
    else:
        out["kernels"] = json.loads(kjson.read_text())
    # whole process, 2 epochs
    epochs = ctx.args.peer_epochs
    ov = ["method=straight_through", "method.latent_dim=20", "model.hidden=[400]", "trainer.batch_size=128"]
    rr_args = [o for o in ctx.base_overrides() if not o.startswith("trainer.epochs=")] + ov + [f"trainer.epochs={epochs}"]
    demo_args = [ctx.data_root, "--epochs", str(epochs), "--batch-size", "128"]
    if ctx.args.threads:
        demo_args += ["--threads", str(ctx.args.threads)]
    if ctx.args.smoke:
        rr_args.append("trainer.max_steps=3")
    runs = {"relaxrun": ctx.exe + rr_args, "relaxit demo-style script": [str(py), str(REPO / "scripts" / "peer_demo_vae.py"),
                                                                        *demo_args]}
    def shown(a: str) -> str:
        return a.replace(ctx.data_root, ctx.data_root_shown)

    out["commands"] = {"relaxrun": "relaxrun " + " ".join(shlex.quote(shown(a)) for a in rr_args),
                       "relaxit demo-style script": "<peer venv>/bin/python scripts/peer_demo_vae.py "
                       + " ".join(shlex.quote(shown(a)) for a in demo_args)}
    if ctx.args.smoke:  # a demo run is two whole epochs: not in a smoke run
        runs.pop("relaxit demo-style script")

    def fn(name):
        def run():
            d = ctx.tmpdir("peer-run-")
            logp = d / "log.txt"
            cmd = runs[name] + ([f"hydra.run.dir={d / 'run'}"] if name == "relaxrun" else [])
            res = run_child(cmd, logp, env=env if name != "relaxrun" else None, cwd=d)
            if res["rc"] != 0:
                raise RuntimeError(f"{name} failed: {child_failed(res, logp)}")
            shutil.rmtree(d, ignore_errors=True)
            return {"wall_s": res["wall_s"], "maxrss_mib": res["maxrss_mib"]}
        return run

    figs = measure({name: fn(name) for name in runs}, ctx.args.repeats, 0 if ctx.args.smoke else ctx.args.warmup)
    out["process"] = {"epochs": epochs, "runs": {name: {"wall_s": figs[f"{name}/wall_s"],
                                                        "maxrss_mib": figs[f"{name}/maxrss_mib"]} for name in runs}}
    return out


def bench_compile(ctx: Context) -> dict:
    """relaxrun with trainer.compile=true vs false, each one process with a cold inductor cache."""
    epochs = ctx.args.compile_epochs
    out = {"epochs": epochs, "runs": {}}
    for label, flag in (("eager", "false"), ("compiled", "true")):
        d = ctx.tmpdir("compile-")
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(d / "inductor"))
        logp = d / "log.txt"
        p = Probe()
        ov = [o for o in ctx.base_overrides() if not o.startswith("trainer.epochs=")]
        res = run_child(ctx.exe + ov + [f"trainer.compile={flag}", f"trainer.epochs={epochs}",
                                        f"hydra.run.dir={d / 'run'}"], logp, env=env, cwd=d)
        probe = p.close()
        metrics_path = d / "run" / "metrics.json"
        if res["rc"] != 0 or not metrics_path.exists():
            out["runs"][label] = {"error": child_failed(res, logp)}
            continue
        hist = json.loads(metrics_path.read_text())["history"]
        cum = [h["seconds"] for h in hist]
        per_epoch = [b - a for a, b in zip([0.0] + cum[:-1], cum)]
        rest = per_epoch[1:] or per_epoch
        steady = statistics.median(rest)
        out["runs"][label] = {
            "wall_s": res["wall_s"], "maxrss_mib": res["maxrss_mib"], "epoch_s": per_epoch,
            "first_epoch_s": per_epoch[0], "steady_epoch": summarize(rest, [probe]),
            "projected_10_epochs_s": per_epoch[0] + 9 * steady,
            "test_neg_elbo": hist[-1].get("test_neg_elbo"),
        }
        shutil.rmtree(d, ignore_errors=True)
    return out


def bench_threads(ctx: Context) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    settings = sorted({1, cores})
    loop = InstrumentedLoop(ctx, "default")
    n = ctx.args.threads_steps

    def fn(k):
        def run():
            return loop.steps(n, timed=False, threads=k)["total_ms"]
        return run

    figs = measure({str(k): fn(k) for k in settings}, ctx.args.repeats, ctx.args.warmup)
    loop.close()
    return {"steps": n, "label": CONFIGS["default"]["label"],
            "settings": {k: {"ms_per_step": f, "steps_per_s": 1e3 / f["median"]} for k, f in figs.items()}}


def subnormal_share(tensors) -> float:
    """Share of float32 entries that are subnormal, read from the bit pattern (exponent bits all 0,
    mantissa not): float comparisons cannot tell, since denormals-are-zero, which this process runs
    under, makes every subnormal compare equal to 0."""
    n = bad = 0
    for t in tensors:
        if t.dtype == torch.float32:
            bits = t.detach().contiguous().view(torch.int32) & 0x7FFFFFFF
            bad += int(((bits > 0) & (bits < 0x00800000)).sum())
            n += t.numel()
    return bad / max(n, 1)


def bench_denormals(ctx: Context) -> dict:
    """Two identical runs of the default config (same seed), one with flush-to-zero on from its first
    step, each trained ``--denormal-warmup`` steps under its own setting and then timed interleaved.

    One model cannot serve both: a single step with the flag on zeroes every subnormal in Adam's
    state. Measured at 1 thread, because FTZ/DAZ is a per-thread flag that OpenMP workers take from
    the thread that creates them, once: toggling it later reaches the calling thread only.
    """
    warm, n = ctx.args.denormal_warmup, ctx.args.threads_steps
    supported = bool(torch.set_flush_denormal(True))
    labels = {False: "default", True: "torch.set_flush_denormal(True)"}
    loops, shares = {}, {}
    for flush in ([False, True] if supported else [False]):
        torch.set_flush_denormal(flush)
        try:
            loop = InstrumentedLoop(ctx, "default")
            loop.steps(warm, timed=False, threads=1)
        finally:
            torch.set_flush_denormal(FLUSH_DENORMAL)
        loops[flush] = loop
        state = list(loop.optimizer.state.values())
        shares[labels[flush]] = {"adam exp_avg": subnormal_share(st["exp_avg"] for st in state),
                                 "adam exp_avg_sq": subnormal_share(st["exp_avg_sq"] for st in state),
                                 "parameters": subnormal_share(loop.model.parameters())}

    def fn(flush):
        def run():
            torch.set_flush_denormal(flush)
            try:
                r = loops[flush].steps(n, threads=1)
                return {"total_ms": r["total_ms"], "optimizer_ms": r["optimizer_ms"]}
            finally:
                torch.set_flush_denormal(FLUSH_DENORMAL)
        return run

    figs = measure({labels[f]: fn(f) for f in loops}, ctx.args.repeats, 0)
    for loop in loops.values():
        loop.close()
    return {"warmup_steps": warm, "steps": n, "subnormal_share": shares, "supported": supported,
            "variants": {lab: {"total_ms": figs[f"{lab}/total_ms"], "optimizer_ms": figs[f"{lab}/optimizer_ms"]}
                         for lab in (labels[f] for f in loops)}}


def bench_optimizer(ctx: Context) -> dict:
    cfg = ctx.compose(CONFIGS["default"]["overrides"])
    run, mcfg = validate(cfg)
    variants = {"torch default": {}, "foreach=True": {"foreach": True}, "fused=True": {"fused": True}}
    n = ctx.args.optimizer_steps
    fns, notes, tensors = {}, [], 0
    for name, kw in variants.items():
        try:
            torch.manual_seed(run.seed)
            method = build_method(mcfg).to(ctx.device)
            model = build_model(run.model, method.param_dim, method.latent_dim).to(ctx.device)
            opt = torch.optim.Adam(model.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay, **kw)
            x = torch.bernoulli(torch.full((run.trainer.batch_size, 784), 0.3, device=ctx.device))
            method.loss(model.encoder(x), model.decode, x, mcfg.tau).loss.backward()
            opt.step()
            tensors = len(list(model.parameters()))
        except Exception as err:  # noqa: BLE001 - e.g. fused Adam not available for this device/torch
            notes.append(f"Adam({', '.join(f'{k}={v}' for k, v in kw.items())}) not available here: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue

        def fn(opt=opt):
            with num_threads(run.trainer.threads or None):
                t0 = time.perf_counter()
                for _ in range(n):
                    opt.step()
                sync(ctx.device)
                return 1e3 * (time.perf_counter() - t0) / n
        fns[name] = fn
    figs = measure(fns, ctx.args.repeats, ctx.args.warmup)
    probe = build_optimizer([torch.zeros(2, device=ctx.device, requires_grad=True)], run.optim).defaults
    used = ("fused=True" if probe.get("fused") else "foreach=True" if probe.get("foreach") else "torch default")
    return {"steps": n, "parameter_tensors": tensors, "variants": figs, "notes": notes, "relaxrun_uses": used}


# ------------------------------------------------------------------------------------------------
# BENCHMARKS.md
# ------------------------------------------------------------------------------------------------

def num(x) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fig_cells(f: dict, scale: float = 1.0) -> list[str]:
    other = "-" if f.get("other_cores") is None else f"{f['other_cores']:.2f}"
    return [num(f["median"] * scale), num(f["min"] * scale), num(f["max"] * scale), str(f["n"]),
            f"{f['load1_start']:.2f} → {f['load1_end']:.2f}", other]


FIG_HEAD = ["median", "min", "max", "n", "load (1 min) start → end", "other cores busy"]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


IWAE_HEADING = "## 6. The end-of-run IWAE bound"
DECODE_ROWS_SHOWN = __import__("relaxrun.methods.base", fromlist=["DECODE_ROWS"]).DECODE_ROWS
PEERS_HEADING = "## 7. Side by side with relaxit and Pyro"
GPU_HEADING = "## 8. GPU"
#: the sections ``--merge`` replaces in an existing report, by heading (the rest of that report is kept)
MERGE_HEADINGS = {"iwae": IWAE_HEADING, "peers": PEERS_HEADING, "gpu": GPU_HEADING,
                  "cli": "## 1c. Commands that only print", "rss": "## 5. Peak memory"}
#: the Targets rows ``--merge`` replaces (by their first cell's start)
MERGE_TARGETS = ("IWAE-", "`relaxrun --help`")


def gflops(x: float) -> str:
    return f"{x / 1e9:.0f} GFLOP" if x < 1e12 else f"{x / 1e12:.2f} TFLOP"


def render_iwae(res: dict, targets: list[list[str]]) -> list[str]:
    iw = res.get("iwae")
    if not iw:
        return []
    a, L = res["args"], [IWAE_HEADING, ""]
    dec = "-".join(str(d) for d in iw["decoder"])
    L += [f"`relaxrun.evaluate.iwae_bound`, IWAE-{iw['k']} of the default config ({iw['method']}, decoder MLP {dec}, "
          f"image batch {iw['batch']}, untrained weights: the work does not depend on them) on the first "
          f"{iw['images']} of the {iw['test_images']} test images, timed whole (encoder, sampling, decoder, "
          f"log-weights, log-mean-exp) on {iw['device']}; the time for the whole test set is the median extrapolated "
          "linearly (every image costs the same). *previous* is the implementation before this section's changes "
          "(`iwae_reference` in this script: the same draws in the same order); *GEMM* is a float32 "
          f"{iw['gemm_n']}³ `torch.mm` (5 per repeat); the three are interleaved, at torch's default threads and at "
          "1 thread.", ""]
    L += [f"**Decoder work**: {iw['flops_per_sample'] / 1e6:.3f} MFLOP per latent draw (2 per multiply-add over the "
          f"layers {dec}), so IWAE-{iw['k']} on {iw['test_images']} images is **{gflops(iw['flops_full'])}** "
          f"({gflops(iw['flops_timed'])} in each timed run).", ""]
    rows = []
    for th, e in iw["by_threads"].items():
        rate = e["gemm"]["median"]
        rows.append([th, "GEMM (torch.mm)"] + fig_cells(e["gemm"]) + ["", f"{rate:.0f}", "100 %", ""])
        for name, v in e["variants"].items():
            rows.append([th, name] + fig_cells(v["s"]) + [f"{v['full_s']:.0f}", f"{v['gflops']['median']:.0f}",
                         f"{100 * v['share_of_gemm']:.0f} % ({100 * v['share_range'][0]:.0f} – "
                         f"{100 * v['share_range'][1]:.0f} %)", num(iw["values"].get(name))])
    L += table(["threads", "implementation", f"median (s for {iw['images']} images; GEMM: GFLOP/s)", "min", "max",
                "n", "load", "other cores", f"s for {iw['test_images']} images (extrapolated)", "GFLOP/s (median)",
                "of the GEMM rate (range)", f"-IWAE-{iw['k']} (nats)"], rows)
    sp = [f"{e['speedup']:.2f}x at {th} thread{'s' if th != '1' else ''}" for th, e in iw["by_threads"].items()
          if "speedup" in e]
    if sp:
        L += [f"The current implementation is {' and '.join(sp)} as fast as the previous one; the two bounds differ "
              f"by {iw['value_difference']:.2g} nats (the same draws; float32 rounding).", ""]
    pr = iw.get("profile")
    if pr:
        top = ", ".join(f"`{r['op']}` {100 * r['share']:.0f} %" for r in pr["top"][:8])
        L += [f"*Where the time goes* (torch.profiler, self time by operator, one batch of {pr['images']} images at "
              f"{pr['threads']} thread{'s' if pr['threads'] != 1 else ''}): matrix products {100 * pr['gemm_share']:.0f} %; {top}. `uniform_` is "
              "torch's CPU random-number generator, serial whatever the threads, for the Gumbel noise of every draw.",
              ""]
    th0 = next(iter(iw["by_threads"]))
    e = iw["by_threads"][th0]
    cur = e["variants"]["relaxrun"]
    busy = cur["s"].get("other_cores")
    one = iw["by_threads"].get("1")
    if th0 != "1" and one and busy is not None and busy > 0.25:
        L += [f"During the {th0}-thread figures other processes kept {busy:.2f} cores busy. At {th0} threads every "
              "operator is an OpenMP parallel region whose threads wait for a descheduled sibling, so a path of "
              "many operators on cache-sized blocks (this one: about 15 per block of "
              f"{DECODE_ROWS_SHOWN} rows) loses to one of fewer, larger ones, however fast its arithmetic; at 1 "
              f"thread, which no sibling can stall, the same code runs at "
              f"{100 * one['variants']['relaxrun']['share_of_gemm']:.0f} % of the GEMM rate"
              + (f", {one['speedup']:.2f}x the previous implementation" if "speedup" in one else "")
              + ". Re-run on a quiet machine for the figure the target is about.", ""]
    ok = None if a["smoke"] else cur["share_of_gemm"] >= TARGETS["iwae_gemm_share"]
    others = "; ".join(f"{100 * v['variants']['relaxrun']['share_of_gemm']:.0f} % at {t} thread"
                       for t, v in iw["by_threads"].items() if t != th0)
    targets.append([f"IWAE-{iw['k']} decoder work ≥ {100 * TARGETS['iwae_gemm_share']:.0f} % of the float32 GEMM rate "
                    f"({gflops(iw['flops_full'])} on {iw['test_images']} images)",
                    f"{100 * cur['share_of_gemm']:.0f} % at {th0} thread{'s' if th0 != '1' else ''} ({cur['gflops']['median']:.0f} of "
                    f"{e['gemm']['median']:.0f} GFLOP/s; {cur['full_s']:.0f} s for the test set)"
                    + (f"; {others}" if others else ""), verdict(ok)])
    return L


def render_peer_section(res: dict, pe: dict, targets: list[list[str]]) -> list[str]:
    L = [PEERS_HEADING, ""]
    vers = pe.get("versions") or {}
    L += [f"relaxit and pyro-ppl are installed by this section into a virtual environment of their own "
          f"(`{pe['env'].replace(os.path.expanduser('~'), '~')}`: `pip install {' '.join(pe['packages'])}`, torch "
          "shared with this environment through a `.pth` file; never a dependency of relaxrun). Install: "
          f"{pe.get('install', '?')}." + (" Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(vers.items())) + "."
                                          if vers else ""), ""]
    if pe.get("error"):
        return L + [f"**Not measured**: {pe['error']}", ""]
    kr = pe.get("kernels")
    if kr:
        L += [f"**Kernels** (`scripts/peer_kernels.py`, run by the peer environment's Python, all libraries in "
              f"one process, interleaved; {kr['calls']} calls per repeat at {kr['threads']} threads). One call: "
              "build the distribution from parameters that require grad, `rsample()`, `log_prob` of the sample, "
              "backward of `(z * w).sum() + log_prob.sum()`; `validate_args=False` everywhere; 100 x 200 units, "
              "or 100 x 20 variables of 10 categories for the simplex laws, tau = 0.5. How each class was called "
              "is in the last column.", ""]
        rows = []
        for law, e in kr["laws"].items():
            for lib, v in e["libraries"].items():
                if "ms" in v:
                    ratio = v.get("vs_relaxrun")
                    rows.append([law, lib] + fig_cells(v["ms"]) + [f"{ratio:.2f}x" if ratio else "-", f"`{v['call']}`"])
                else:
                    rows.append([law, lib, "fails: " + v.get("error", "?"), "", "", "", "", "", "-", f"`{v['call']}`"])
                law = ""
        L += table(["law", "library", "ms/call median", "min", "max", "n", "load", "other cores",
                    "time vs relaxrun", "call"], rows)
        L += ["Not like for like in two rows: relaxrun's Gumbel top-k has no density for its relaxed k-hot (its "
              "`log_prob` raises), so its call scores the ordered hard draw with the exact Plackett-Luce "
              "`log_prob_hard`, while relaxit's `log_prob` is `-binary_cross_entropy(probs, value)`, not a density of "
              "its sample; relaxit's HardConcrete draws `u` of shape `sample_shape + [1]` and broadcasts it with "
              "alpha, so `rsample()` alone would share one uniform across all units: the call passes alpha as "
              "`[B, D, 1]` and `sample_shape=(B, D)` to get one draw per unit. relaxit's LogisticNormalSoftmax is a "
              "TransformedDistribution through torch's SoftmaxTransform, which has no log-Jacobian, so its "
              "`log_prob` raises; the row after it times `rsample` + backward alone for both.", ""]
    elif pe.get("kernels_error"):
        L += [f"**Kernels**: the peer kernel script failed: {' '.join(pe['kernels_error'])}", ""]
    pr = pe.get("process")
    if pr:
        L += [f"**Whole process**, {pr['epochs']} epochs with test evaluation, 784-400-20 straight-through "
              "Bernoulli, batch 128, wall time from start to exit and peak RSS (os.wait4 of the child), interleaved:", ""]
        for name, c in pe.get("commands", {}).items():
            L += [f"    {name}: {c}"]
        L += [""]
        rows = [[name] + fig_cells(v["wall_s"]) + [num(v["maxrss_mib"]["median"]), num(v["maxrss_mib"]["min"]),
                                                   num(v["maxrss_mib"]["max"])] for name, v in pr["runs"].items()]
        L += table(["program", "wall s median", "min", "max", "n", "load", "other cores", "peak RSS MiB median",
                    "min", "max"], rows)
        r, d = pr["runs"].get("relaxrun"), pr["runs"].get("relaxit demo-style script")
        if r and d:
            L += [f"relaxrun takes {r['wall_s']['median'] / d['wall_s']['median']:.2f}x the demo script's wall time "
                  f"({d['wall_s']['median'] / r['wall_s']['median']:.2f}x as fast) and "
                  f"{r['maxrss_mib']['median'] / d['maxrss_mib']['median']:.2f}x its peak memory.", ""]
    return L


def render_peers(res: dict, targets: list[list[str]]) -> list[str]:
    pe = res.get("peers")
    if not pe:
        return []
    return render_peer_section(res, pe, targets)


GPU_FIGURES = REPO / "benchmarks" / "gpu.json"


def render_gpu(res: dict) -> list[str]:
    """The GPU figures ``scripts/device_check.sh`` wrote to benchmarks/gpu.json, or that there are none yet."""
    L = [GPU_HEADING, ""]
    g = res.get("gpu_figures")
    if not g:
        L += ["**Not measured on a GPU yet.** `scripts/device_check.sh` (on a machine with CUDA, under 8 minutes) "
              "runs the test suite on CUDA, times a default epoch and the end-of-run IWAE-1000 with `device=cuda`, "
              "and the kernel and IWAE sections of this script on the GPU; it writes `benchmarks/gpu.json`, "
              "which this section renders. Every figure above is from the CPU.", ""]
        return L
    L += [f"Measured by `scripts/device_check.sh` on {g.get('gpu', '?')} ({g.get('when', '?')}, commit "
          f"`{g.get('commit', '?')}`, torch {g.get('torch', '?')}, CUDA {g.get('cuda', '?')}).", ""]
    rows = []
    for item in g.get("figures", []):
        rows.append([item["what"], item["value"], item.get("command", "")])
    if rows:
        L += table(["figure", "value", "command"], rows)
    for name, text in (g.get("sections") or {}).items():
        L += [f"**{name}** (`{g.get('benchmark_command', 'scripts/benchmark.py --device cuda')}`):", "", text.strip(), ""]
    return L


def render(res: dict) -> str:
    a = res["args"]
    m = res["machine"]
    L: list[str] = ["# relaxrun benchmarks", ""]
    L += ["Generated by `scripts/benchmark.py`; do not edit by hand. Reproduce from the repository root:", "",
          f"    {res['command']}", ""]
    worst = res.get("max_other_cores")
    full = {"repeats": 5, "warmup": 1, "steps": 0, "breakdown_steps": 300, "kernel_calls": 200, "method_steps": 40, "sweep_steps": 300,
            "rss_steps": 200, "threads_steps": 200, "optimizer_steps": 100, "denormal_warmup": 900,
            "compile_epochs": 6, "threads": 0, "iwae_images": 500}
    reduced = [f"--{k.replace('_', '-')} {a[k]}" for k, v in full.items() if k in a and a[k] != v]
    load_line = (f"load average up to {res['max_load']:.2f} on {m['usable_cores']} cores; other processes kept up "
                 f"to {worst:.2f} cores busy during a figure" if worst is not None else
                 f"load average up to {res['max_load']:.2f}")
    if a["smoke"]:
        L += ["> **SMOKE RUN** (`--smoke`: 1 repeat, tiny sizes" + (", generated data" if res["generated_data"] else "")
              + "). These numbers only show that the suite runs; they are not benchmarks.", ""]
    elif (worst is not None and worst > 0.25) or reduced:
        why = []
        if reduced:
            why.append("a quick run with settings below the full defaults (" + ", ".join(reduced) + ")")
        if worst is not None and worst > 0.25:
            why.append("measured on a shared machine, so timings are noisy (ratios between interleaved figures "
                       "hold up better than absolute times)")
        L += [f"> **PROVISIONAL**: {'; '.join(why)}. Machine state: {load_line}. Re-run "
              "`python scripts/benchmark.py --data-root ../shared/data --out BENCHMARKS.md` on a quiet machine "
              "for the reference numbers.", ""]
    else:
        L += [f"Machine state during the run: {load_line}.", ""]
    thr = (f"all figures at `--threads {a['threads']}` (torch.set_num_threads / trainer.threads) unless a "
           "table varies it" if a["threads"] else f"torch's default threads ({m['threads']})")
    L += [f"Run {res['started']} → {res['finished']} ({res['duration_s'] / 60:.1f} min), {thr}. Every figure: median of "
          f"{a['repeats']} timed repeats after {a['warmup']} warm-up, with min and max; side-by-side figures were "
          "measured interleaved (A B A B ...). *load* is the 1-minute load average at the start and end of the "
          "figure (the benchmark's own threads count: on a quiet machine it reads about the threads in use); "
          "*other cores busy* is CPU time used by other processes during the figure, in cores (from /proc/stat). "
          "Every relaxrun run here sets `eval.iwae_samples=0` (the end-of-run IWAE bound is evaluation, not "
          "training) except the peak-memory row that names it.",
          ""]
    L += ["## Machine", ""]
    L += table(["item", "value"], [[k, f"`{v}`" if k in ("relaxrun", "platform") else str(v)] for k, v in m.items()])

    targets: list[list[str]] = []
    tp = res.get("throughput")
    if tp:
        L += ["## 1. Training throughput", ""]
        how = (f"a fixed {a['steps']} steps extrapolated to an epoch" if a["steps"] else "whole epochs")
        L += [f"Timed over {how} on `{res['data_root_shown']}` ({res['n_train']} training images). *relaxrun* is "
              "`relaxrun.train.train()`, the loop the CLI runs, timed by its own clock (the `seconds` in "
              "metrics.json: training loop only, evaluation and checkpoints excluded; `trainer.progress=false`). "
              "*baseline* is the same model and method fed by `torchvision.datasets.MNIST` + `ToTensor()` + "
              "`DataLoader(shuffle=True)` (default `num_workers=0`), binarized per batch with `torch.bernoulli`, "
              "torch's default `Adam`, `loss.item()` every step: the public demos' pipeline. *baseline, relaxrun's "
              "Adam* is that pipeline with the optimizer relaxrun builds (`relaxrun.train.build_optimizer`), so the "
              "two ratios split relaxrun's gain into optimizer and data pipeline. All start from a fresh model: "
              "this is a first-epoch figure (see *Subnormal numbers* under *What we tried* for later epochs).", ""]
        rows = []
        names = {"relaxrun": "relaxrun", "baseline": "baseline", "baseline_adam": "baseline, relaxrun's Adam"}
        for key, t in tp.items():
            for who in names:
                if who not in t:
                    continue
                rows.append([t["label"] if who == "relaxrun" else "", names[who]] + fig_cells(t[who])
                            + [f"{t[who + '_steps_per_s']:.1f}"])
        L += table(["config", "pipeline", "s/epoch median", "min", "max", "n", "load", "other cores",
                    "steps/s (median)"], rows)
        rows = [[t["label"], f"{t['speedup']:.2f}x", f"{t['speedup_range'][0]:.2f}x – {t['speedup_range'][1]:.2f}x",
                 f"{t['speedup_same_adam']:.2f}x" if "speedup_same_adam" in t else "-", str(t["steps_per_epoch"]), f"{t['relaxrun_call_s']['median']:.2f}",
                 f"{t['relaxrun_call_s']['median'] - t['relaxrun_loop_s']['median']:.2f}"] for t in tp.values()]
        L += table(["config", "relaxrun speed-up (baseline / relaxrun)", "range (worst – best)",
                    "data pipeline alone (baseline with relaxrun's Adam / relaxrun)", "steps/epoch",
                    "whole train() call s", "of which outside the loop s (load, eval, images, checkpoint)"], rows)
        ceilings = {}
        bd0 = res.get("breakdown") or {}
        for key, t in tp.items():
            if key in bd0:
                ph = bd0[key]["phases"]
                model_ms = sum(ph[f"{p}_ms"]["median"] for p in ("forward", "backward", "optimizer"))
                base_ms = 1e3 * t["baseline"]["median"] / t["steps_per_epoch"]
                ceilings[key] = base_ms / model_ms
                L += [f"*Ceiling* ({t['label']}): the model's own work (forward + backward + optimizer, section 2) "
                      f"takes {model_ms:.2f} ms/step and the baseline's whole step {base_ms:.2f} ms, so even a data "
                      f"pipeline costing nothing could be at most **{ceilings[key]:.2f}x** faster than the baseline "
                      "with this model, optimizer and thread setting."]
        if ceilings:
            L += [""]
        d = tp.get("default")
        if d:
            ok = None if a["smoke"] else d["speedup"] >= TARGETS["epoch_speedup"]
            reached = f"{d['speedup']:.2f}x"
            if "default" in ceilings:
                reached += f" (ceiling with free data: {ceilings['default']:.2f}x)"
            targets.append([f"default-config epoch ≥ {TARGETS['epoch_speedup']:.0f}x faster than the DataLoader "
                            "baseline", reached, verdict(ok)])

    ag = res.get("against")
    if ag:
        L += [f"## 1b. Against revision `{ag['revision']}`", ""]
        L += [f"The default epoch ({ag['label']}) of this tree and of revision `{ag['revision']}` (commit "
              f"`{ag['commit'][:12]}`, exported with `git archive`), each a whole `relaxrun` process on its own "
              "source tree with the same overrides, interleaved; the figure is the loop's own clock "
              "(metrics.json `seconds`), as in section 1.", ""]
        rows = [[name] + fig_cells(f) for name, f in ag["figures"].items()]
        L += table(["source", "s/epoch median", "min", "max", "n", "load", "other cores"], rows)
        L += [f"This tree / revision `{ag['revision']}`: **{ag['ratio']:.3f}x** the time per epoch.", ""]

    cli = res.get("cli")
    if cli:
        L += ["## 1c. Commands that only print", ""]
        L += ["Wall time of whole processes, start to exit (output discarded), interleaved: `relaxrun --help` and "
              "`relaxrun --cfg job` import neither torch nor torchvision (they compose the config and print it; "
              "a run's checks happen when it runs)"
              + (f", beside revision `{cli['revision']}` (commit `{cli['commit'][:12]}`)" if cli.get("revision") else "")
              + "; `python -c \"import torch\"` for scale.", ""]
        rows = []
        for name, f in cli["figures"].items():
            cmd, _, source = name.partition("|")
            rows.append([f"`{cmd}`", source or "-"] + fig_cells(f))
        L += table(["command", "source", "s median", "min", "max", "n", "load", "other cores"], rows)
        h = cli["figures"].get("relaxrun --help|this tree")
        if h:
            ok = None if a["smoke"] else h["median"] < TARGETS["help_s"]
            targets.append([f"`relaxrun --help` under {TARGETS['help_s']} s", f"{h['median']:.2f} s", verdict(ok)])

    bd = res.get("breakdown")
    if bd:
        L += ["## 2. Where the time goes", ""]
        L += ["Per-step time of relaxrun's real step: the objects `relaxrun.train.build` makes, `Setup.step` (the "
              "method's own `training_step`, whose `tools.phase` hook marks the end of its forward, backward and "
              "optimizer parts) and the loop's `StepLog` (*logging*: the per-step stack of the loss parts and "
              "extras plus the scalar log every `trainer.log_every` steps); *data* is `Data.batches` + "
              "`Data.train_batch`. Over "
              f"{bd['default']['steps']} steps per repeat.", ""]
        for key in CONFIGS:
            if key not in bd:
                continue
            b = bd[key]
            rows = []
            for ph in PHASES:
                ms = b["phases"][f"{ph}_ms"]
                sh = b["phases"][f"{ph}_share"]
                rows.append([ph] + fig_cells(ms)[:3] + [f"{100 * sh['median']:.1f} %",
                                                        f"{100 * sh['min']:.1f} – {100 * sh['max']:.1f} %"])
            tot = b["phases"]["total_ms"]
            rows.append(["**total**"] + fig_cells(tot)[:3] + ["100 %", ""])
            oc = "-" if tot["other_cores"] is None else f"{tot['other_cores']:.2f}"
            L += [f"**{b['label']}** (load {tot['load1_start']:.2f} → {tot['load1_end']:.2f}, other cores {oc})", ""]
            L += table(["phase", "ms/step median", "min", "max", "share (median)", "share range"], rows)
            if "train_ms_per_step" in b:
                L += [f"The uninstrumented `train()` of section 1 ran {b['train_ms_per_step']:.2f} ms/step "
                      f"(instrumented: {tot['median']:.2f} ms/step).", ""]
            gp = bd.get("gemm_peak")
            if gp and b.get("matmul_gflop"):
                fb = b["phases"]["forward_ms"]["median"] + b["phases"]["backward_ms"]["median"]
                rate = b["matmul_gflop"] / (fb / 1e3)
                L += [f"*Compute*: the step's matrix products are {1e3 * b['matmul_gflop']:.0f} MFLOP; forward + "
                      f"backward run them at {rate:.0f} GFLOP/s counting the products alone, "
                      f"{100 * rate / gp['gflops']['median']:.0f} % of this CPU's measured float32 GEMM rate "
                      f"({gp['gflops']['median']:.0f} GFLOP/s, {gp['n']}³ sgemm at the same threads). The rest of "
                      "forward + backward is the elementwise work of the latent kernel, the loss and the "
                      "activations.", ""]
        s = bd["syncs"]
        L += [f"**Host synchronisations per step** in the real `train()` (default config, "
              f"`trainer.log_every={s['log_every']}`; calls of `.item()/.tolist()/bool()/float()/int()/.numpy()` "
              f"on tensors made from relaxrun's code, counted in runs of {s['steps'][0]} and {s['steps'][1]} "
              f"steps, difference / {s['steps'][1] - s['steps'][0]}): **{s['per_step']:.3g} per step**.", ""]
        if s["lines"]:
            L += table(["where", "call", "per step", "code"],
                       [[p["where"], p["call"], f"{p['per_step']:.3g}", f"`{p['code']}`"] for p in s["lines"]])
        d = bd.get("default")
        if d:
            share = d["phases"]["data_share"]["median"]
            ok = None if a["smoke"] else share < TARGETS["data_share"]
            targets.append([f"data work < {100 * TARGETS['data_share']:.0f} % of step time (default config)",
                            f"{100 * share:.1f} %", verdict(ok)])

    ms = res.get("methods")
    if ms:
        L += ["## 2b. Every method's training step", ""]
        L += [f"ms per training step of each registered method at its default options (its YAML) on the "
              f"default model and batch (MLP 784-512-256, batch 100, real step: `Setup.step` with the "
              f"method's own `training_step` and optimizers, plus the loop's `StepLog`), {ms['steps']} steps "
              f"per repeat, all methods interleaved. Forward / backward / optimizer are the method's own "
              f"phases (a method with several backward or optimizer parts adds them up); the ratio is to "
              f"gumbel_softmax, the default method.", ""]
        rows = []
        for name, mm in sorted(ms["methods"].items(), key=lambda kv: kv[1]["phases"]["total_ms"]["median"]):
            ph = mm["phases"]
            rows.append([f"`{name}`", f"{mm['latent']} ({mm['param_dim']})"] + fig_cells(ph["total_ms"])[:4]
                        + [f"{ph[f'{k}_ms']['median']:.2f}" for k in ("forward", "backward", "optimizer")]
                        + [f"{mm['vs_gumbel_softmax']:.2f}x" if mm["vs_gumbel_softmax"] else "-",
                           STEP_NOTES.get(name, "")])
        L += table(["method", "latent (encoder outputs)", "ms/step median", "min", "max", "n", "forward ms",
                    "backward ms", "optimizer ms", "vs gumbel_softmax", "where the extra time goes"], rows)
        for name, why in ms["skipped"].items():
            L += [f"* `{name}` skipped: {why}"]
        L += [""]

    kr = res.get("kernels")
    if kr:
        L += ["## 3. Distribution kernels", ""]
        L += [f"Time per call, {kr['calls_per_repeat']} calls per repeat, tau = 1. Methods: "
              "`method.loss(params, decode, x, tau)` + backward with an identity decoder (so the latent "
              "kernel is all that is timed) at the method's default options, batch "
              f"{KERNEL_BATCH} x {BERNOULLI_UNITS} units (100 x 20x10 for categorical methods).", ""]
        rows = []
        for name, mm in sorted(kr["methods"].items(), key=lambda kv: kv[1]["ms"]["median"]):
            rows.append([f"`{name}`", mm["size"]] + fig_cells(mm["ms"])
                        + [f"{mm['vs_gumbel_softmax']:.2f}x" if mm["vs_gumbel_softmax"] else "-"])
        L += table(["method", "size", "ms/call median", "min", "max", "n", "load", "other cores",
                    "vs gumbel_softmax"], rows)
        for name, why in kr["skipped"].items():
            L += [f"* `{name}` skipped: {why}"]
        if kr["skipped"]:
            L += [""]
        over = [n for n, mm in kr["methods"].items()
                if mm["vs_gumbel_softmax"] and mm["vs_gumbel_softmax"] > TARGETS["kernel_vs_gs"]]
        if over:
            L += [f"Where the time goes in the methods above {TARGETS['kernel_vs_gs']:.0f}x (torch profiler):", ""]
            L += [f"* `{n}`: {SLOWER_KERNELS.get(n, 'not analysed')}" for n in sorted(over)]
            L += [""]
        L += ["Raw kernels (rsample + log_prob + backward of `(z * w).sum() + log_prob.sum()`), `validate_args=False` "
              "except the rows that say otherwise (argument and sample checks, as `torch.distributions` does by "
              "default; the training loop builds every distribution with `validate_args=False`); non-finite = share of log-density entries / logit gradients that are inf or NaN for one "
              "draw at a small temperature, float32:", ""]
        rows = []
        for name, r in kr["raw"].items():
            acc = []
            for tau in ACCURACY_TAUS:
                v = r["small_tau"][str(tau)]
                lp = "-" if v["logprob_nonfinite"] is None else f"{100 * v['logprob_nonfinite']:.1f} %"
                acc.append(f"{lp} / {100 * v['grad_nonfinite']:.1f} %")
            rows.append([name, f"{KERNEL_BATCH} x " + (f"{BERNOULLI_UNITS}" if r["family"] == "binary"
                                                        else f"{CATEGORICAL[0]}x{CATEGORICAL[1]}")]
                        + fig_cells(r["ms"]) + acc)
        L += table(["kernel", "size", "ms/call median", "min", "max", "n", "load", "other cores"]
                   + [f"non-finite log_prob / grad, tau={tau}" for tau in ACCURACY_TAUS], rows)
        raw = kr["raw"]

        def med(name):
            return raw[name]["ms"]["median"]

        pairs = [("Binary Concrete", "relaxrun RelaxedBernoulli: rsample, log_prob",
                  "relaxrun RelaxedBernoulli: rsample_logit, log_prob_logit (the method's path)",
                  "torch.distributions.RelaxedBernoulli: rsample, log_prob"),
                 ("Gumbel-Softmax", "relaxrun GumbelSoftmax: rsample, log_prob",
                  "relaxrun GumbelSoftmax: rsample_log, log_prob_log_value (the method's path)",
                  "torch.distributions.RelaxedOneHotCategorical: rsample, log_prob")]
        for fam, ours, ours_fast, theirs in pairs:
            r1, r2 = med(theirs) / med(ours), med(theirs) / med(ours_fast)
            ok = None if a["smoke"] else min(r1, r2) >= TARGETS["kernel_speedup"]
            targets.append([f"{fam} kernel ≥ {TARGETS['kernel_speedup']}x faster than torch.distributions",
                            f"{r1:.2f}x (rsample/log_prob), {r2:.2f}x (method's path)", verdict(ok)])
        checks = [(fam, med(ours + ", validate_args=True") / med(ours)) for fam, ours, _, _ in pairs
                  if ours + ", validate_args=True" in raw]
        if checks:
            L += ["**Argument and sample validation** (`validate_args=True`, torch's default) costs "
                  + ", ".join(f"{r:.2f}x the unchecked {fam} kernel" for fam, r in checks)
                  + "; relaxrun validates where users construct distributions and turns it off inside the "
                  "training loop, which builds them with `validate_args=False`.", ""]
        slow = {n: mm["vs_gumbel_softmax"] for n, mm in kr["methods"].items()
                if mm["vs_gumbel_softmax"] and mm["vs_gumbel_softmax"] > TARGETS["kernel_vs_gs"]}
        bad = {n: v for n, v in slow.items() if n not in INHERENT_KERNELS}
        desc = ", ".join(f"{n} {v:.2f}x" for n, v in sorted(slow.items())) or "none"
        ok = None if a["smoke"] or not kr["methods"] else not bad
        targets.append([f"no method's kernel > {TARGETS['kernel_vs_gs']:.0f}x Gumbel-Softmax's (except the "
                        "copula's O(D²), Gumbel-Rao's resamples, the count support and the unbiased score-function "
                        "estimators, whose several decoder passes per input are their definition)",
                        f"above {TARGETS['kernel_vs_gs']:.0f}x: {desc}", verdict(ok)])

    sw = res.get("sweep")
    if sw:
        L += ["## 4. Sweep throughput", ""]
        L += [f"Wall time of one `relaxrun -m` command running {sw['jobs']} jobs of {sw['steps_per_job']} steps "
              "each (process start, composing, data loading, training, the end-of-run evaluation: everything a "
              "user waits for):", "", f"    {sw['command']} [launcher overrides]", ""]
        rows = []
        for name, v in sw["variants"].items():
            rows.append([name] + fig_cells(v["wall"]) + [f"{v['jobs_per_min']:.1f}", f"{v['speedup']:.2f}x",
                                                         f"{v['parent_maxrss_mib']:.0f}"])
        L += table(["launcher", "wall s median", "min", "max", "n", "load", "other cores", "jobs/min",
                    "vs sequential", "peak RSS of the relaxrun process (MiB)"], rows)
        L += ["For the joblib rows, *other cores* also counts the launcher's worker processes.", ""]
        th = (res.get("threads") or {}).get("settings") or {}
        if "1" in th and len(th) > 1:
            most = max(th, key=int)
            scale = th["1"]["ms_per_step"]["median"] / th[most]["ms_per_step"]["median"]
            L += [f"*Ceiling*: a sequential job trains on all {most} cores, {scale:.2f}x as fast as on one "
                  f"(*Threads* under *What we tried*); {most} parallel one-thread jobs can then be at most "
                  f"{int(most) / scale:.2f}x the sequential throughput, before the launcher's cost of starting "
                  "worker processes (each imports torch and loads the data), which jobs this short do not "
                  "amortise.", ""]
        for note in sw["notes"]:
            L += [f"* {note}", ""]
        j = sw["variants"].get("joblib, n_jobs=2")
        j1 = sw["variants"].get("joblib, n_jobs=2, trainer.threads=1")
        if j:
            ok = None if a["smoke"] else j["speedup"] >= TARGETS["sweep_speedup"]
            targets.append([f"joblib with 2 jobs ≥ {TARGETS['sweep_speedup']}x the sequential sweep",
                            f"{j['speedup']:.2f}x" + (f" ({j1['speedup']:.2f}x with trainer.threads=1)" if j1 else ""),
                            verdict(ok)])
        else:
            targets.append([f"joblib with 2 jobs ≥ {TARGETS['sweep_speedup']}x the sequential sweep",
                            "not measured", "n/a"])

    rs = res.get("rss")
    if rs:
        L += ["## 5. Peak memory", ""]
        L += [f"Peak resident set size of a `relaxrun` process training {rs['steps']} steps (plus its end-of-epoch "
              "evaluation), from `os.wait4` on the child (started from a small process: a child's peak RSS counts "
              "the process it was forked from):", ""]
        L += table(["config", "peak RSS MiB median", "min", "max", "n", "load", "other cores"],
                   [[r["label"]] + fig_cells(r["maxrss_mib"]) for r in rs["runs"].values()])

    L += render_iwae(res, targets)
    L += render_peers(res, targets)
    L += render_gpu(res)

    L += ["## Targets", ""]
    L += table(["target", "reached", "status"], targets or [["(no section run)", "-", "n/a"]])

    L += ["## What we tried", ""]
    th = res.get("threads")
    if th:
        rows = [[k] + fig_cells(v["ms_per_step"]) + [f"{v['steps_per_s']:.1f}"] for k, v in th["settings"].items()]
        L += [f"**Threads** (`torch.set_num_threads`, `trainer.threads`): the training step of the {th['label']}, "
              f"{th['steps']} steps per repeat, interleaved:", ""]
        L += table(["threads", "ms/step median", "min", "max", "n", "load", "other cores", "steps/s"], rows)
        s = th["settings"]
        keys = sorted(s, key=int)
        if len(keys) > 1:
            lo, hi = s[keys[0]]["ms_per_step"]["median"], s[keys[-1]]["ms_per_step"]["median"]
            best = keys[0] if lo < hi else keys[-1]
            L += [f"1 thread: {s[keys[0]]['steps_per_s']:.1f} steps/s; {keys[-1]} threads: "
                  f"{s[keys[-1]]['steps_per_s']:.1f} steps/s ({lo / hi:.2f}x the speed of 1 thread); the faster "
                  f"here is **{best}**. torch's default is all cores ({m['threads']} here), which is what "
                  "`trainer.threads=0` keeps. When other work holds the cores (see *other cores*), OpenMP's "
                  "threads wait on each other and 1 thread can win by a wide margin; section 4 has joblib "
                  "sweeps with both settings.", ""]
    op = res.get("optimizer")
    if op:
        L += [f"**Optimizer**: `torch.optim.Adam` step for the default model ({op['parameter_tensors']} parameter "
              f"tensors), {op['steps']} steps per repeat, interleaved:", ""]
        L += table(["Adam", "ms/step median", "min", "max", "n", "load", "other cores"],
                   [[k] + fig_cells(v) for k, v in op["variants"].items()])
        for note in op["notes"]:
            L += [f"* {note}"]
        v = op["variants"]
        base, used = v.get("torch default"), op.get("relaxrun_uses")
        best = min(v, key=lambda k: v[k]["median"]) if v else None
        if base and best and used in v:
            L += [f"The fastest is **{best}** at {v[best]['median']:.2f} ms per step, "
                  f"{base['median'] / v[best]['median']:.2f}x torch's default ({base['median']:.2f} ms). relaxrun "
                  f"builds **{used}** (`relaxrun.train.build_optimizer`: fused where this torch and device have it, "
                  "torch's default otherwise).", ""]
    dn = res.get("denormals")
    if dn:
        L += ["**Subnormal numbers** (`torch.set_flush_denormal(True)`: x86 flush-to-zero / denormals-are-zero). "
              "Two runs of the default config from the same seed, one with the flag set from its first step, each "
              f"trained {dn['warmup_steps']} steps and then timed over {dn['steps']} steps per repeat, interleaved, "
              "at 1 thread. Share of subnormal entries after the warm-up:", ""]
        L += table(["run", "Adam exp_avg", "Adam exp_avg_sq", "parameters"],
                   [[k] + [f"{100 * v:.1f} %" for v in sh.values()] for k, sh in dn["subnormal_share"].items()])
        L += table(["run", "step ms median", "min", "max", "n", "load", "other cores", "of which optimizer ms"],
                   [[k] + fig_cells(v["total_ms"]) + [f"{v['optimizer_ms']['median']:.2f}"]
                    for k, v in dn["variants"].items()])
        if not dn["supported"]:
            L += ["set_flush_denormal is not supported on this CPU.", ""]
        elif len(dn["variants"]) == 2:
            off, on = dn["variants"]["default"], dn["variants"]["torch.set_flush_denormal(True)"]
            L += [f"Adam's first moment of pixels that are almost always blank decays by 0.9 a step into the "
                  f"subnormal range, where x86 arithmetic takes microcode assists: the optimizer step takes "
                  f"{off['optimizer_ms']['median']:.2f} ms instead of {on['optimizer_ms']['median']:.2f} ms and the "
                  f"whole step {off['total_ms']['median'] / on['total_ms']['median']:.2f}x as long once training is "
                  "under way (epoch 1 is mostly spared, so first-epoch timings hide it). relaxrun sets the flag at the "
                  "top of `train()`, before the first parallel op so that OpenMP's threads inherit it "
                  "(`trainer.flush_denormal=true`, the default; `false` keeps IEEE subnormals).", ""]
    cp = res.get("compile")
    if cp:
        runs = cp["runs"]
        L += [f"**torch.compile** (`trainer.compile=true`, compiles `model.loss`; one `relaxrun` process each, "
              f"{cp['epochs']} epochs, cold inductor cache):", ""]
        rows = []
        for label, r in runs.items():
            if "error" in r:
                rows.append([label, "failed: " + r["error"], "", "", "", ""])
                continue
            st = r["steady_epoch"]
            rows.append([label, f"{r['first_epoch_s']:.1f}", f"{st['median']:.2f} ({st['min']:.2f} – {st['max']:.2f})",
                         f"{r['projected_10_epochs_s']:.0f}", f"{r['wall_s']:.0f}",
                         num(r.get("test_neg_elbo"))])
        L += table(["mode", "epoch 1 s (incl. compile)", "later epochs s median (min – max)",
                    "10-epoch run s (projected)", f"process wall s ({cp['epochs']} epochs)", "final test -ELBO"], rows)
        e, c = runs.get("eager", {}), runs.get("compiled", {})
        if "error" in c:
            L += ["torch.compile does **not** work here: " + c["error"], ""]
        elif e and c and "error" not in e:
            win = c["projected_10_epochs_s"] < e["projected_10_epochs_s"]
            L += [f"torch.compile works on this CPU. Compiling cost {c['first_epoch_s'] - e['first_epoch_s']:.0f} s "
                  f"in the first epoch; a later epoch takes {c['steady_epoch']['median']:.2f} s compiled vs "
                  f"{e['steady_epoch']['median']:.2f} s eager "
                  f"({e['steady_epoch']['median'] / c['steady_epoch']['median']:.2f}x). Over a 10-epoch run "
                  f"including compile time: {c['projected_10_epochs_s']:.0f} s vs {e['projected_10_epochs_s']:.0f} s "
                  f"→ **{'compile wins' if win else 'eager wins'}**; the default stays "
                  f"`trainer.compile={'true' if win else 'false'}`"
                  + (" (the measured winner is not yet the default)" if win else "") + ".", ""]
    elif "compile" in a["sections"] and a["smoke"]:
        L += ["**torch.compile**: not measured in `--smoke` (a cold compile alone takes about a minute).", ""]
    if res.get("notes"):
        L += ["## Notes", ""] + [f"* {n}" for n in res["notes"]] + [""]
    return "\n".join(L).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=os.environ.get("RELAXRUN_DATA_ROOT"),
                   help="folder holding MNIST/raw (torchvision layout); --smoke without it generates data")
    p.add_argument("--out", default="BENCHMARKS.md", help="Markdown report to write (default BENCHMARKS.md)")
    p.add_argument("--json", default=None, help="also write every figure as JSON here")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 5; smoke 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up runs per figure (default 1; smoke 0)")
    p.add_argument("--sections", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--steps", type=int, default=None,
                   help="throughput: time this many steps and extrapolate to an epoch (default 0 = whole epochs)")
    p.add_argument("--breakdown-steps", type=int, default=None, help="steps per repeat in the breakdown (300)")
    p.add_argument("--method-steps", type=int, default=None,
                   help="training steps per repeat of each method in section 2b (40)")
    p.add_argument("--kernel-calls", type=int, default=None, help="calls per repeat of each kernel (200)")
    p.add_argument("--sweep-steps", type=int, default=None, help="trainer.max_steps of each sweep job (300)")
    p.add_argument("--sweep-warmup", type=int, default=None, help="untimed sweeps per launcher (default 0)")
    p.add_argument("--rss-steps", type=int, default=None, help="steps of the peak-RSS run (200)")
    p.add_argument("--threads-steps", type=int, default=None, help="steps per repeat in the threads figure (200)")
    p.add_argument("--denormal-warmup", type=int, default=None,
                   help="training steps before the denormals figure (900 = 1.5 epochs)")
    p.add_argument("--optimizer-steps", type=int, default=None, help="optimizer steps per repeat (100)")
    p.add_argument("--compile-epochs", type=int, default=None, help="epochs of each compile/eager run (6; 0 = skip)")
    p.add_argument("--iwae-images", type=int, default=None,
                   help="test images of each IWAE-K timing, extrapolated to the test set (500; smoke 10)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="measure nothing: render the figures a run wrote with --json (with --merge: its sections)")
    p.add_argument("--merge", default=None, metavar="REPORT",
                   help="replace only this run's iwae / peers / gpu sections (and their Targets rows) in REPORT, "
                        "keep the rest, and write the result to --out")
    p.add_argument("--peer-epochs", type=int, default=2, help="epochs of the whole-process runs of the peers section")
    p.add_argument("--gemm-n", type=int, default=1024, help="size of the n x n x n float32 torch.mm of the GEMM rate")
    p.add_argument("--threads", type=int, default=0, help="torch threads for everything (0 = torch's default)")
    p.add_argument("--against", default=None, metavar="REV",
                   help="also time the default epoch of git revision REV beside this tree (section 1b)")
    p.add_argument("--device", default="cpu", help="device for relaxrun and the baseline (cpu, cuda, auto)")
    p.add_argument("--smoke", action="store_true",
                   help="1 repeat, tiny sizes, 1 thread, no compile: checks that the suite runs (CI)")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {"repeats": (5, 1), "warmup": (1, 0), "steps": (0, 0), "breakdown_steps": (300, 5),
                "kernel_calls": (200, 3), "method_steps": (40, 2), "sweep_steps": (300, 2), "sweep_warmup": (0, 0), "rss_steps": (200, 2),
                "threads_steps": (200, 2), "optimizer_steps": (100, 3), "denormal_warmup": (900, 3), "compile_epochs": (6, 0),
                "iwae_images": (500, 10)}
    for k, (full, small) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, small if smoke else full)
    if smoke and not args.threads:
        args.threads = 1  # a busy CI machine stalls multi-threaded OpenMP steps; 1 thread keeps the smoke short
    explicit = args.sections is not None
    if args.sections is None:
        args.sections = ",".join(SECTIONS)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if smoke and not explicit:  # the peers section creates an environment and downloads packages
        args.sections = [s for s in args.sections if s != "peers"]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if not smoke and args.data_root is None and not args.from_json:
        p.error("--data-root is required (the folder holding MNIST/raw), or use --smoke")
    return args


PATH_OPTIONS = ("--data-root", "--out", "--json", "--merge")


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The report cut at its ``## `` headings: (heading line, its lines up to the next heading)."""
    out: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines():
        if line.startswith("## "):
            out.append((line, [line]))
        else:
            out[-1][1].append(line)
    return out


def merge_report(old: str, new: str, headings: list[str], stamp: str, target_prefixes: tuple[str, ...]) -> str:
    """``old`` with the sections under ``headings`` (and the Targets rows starting with ``target_prefixes``)
    replaced by those of ``new``; a section ``old`` lacks goes before its Targets. Each merged section
    gets ``stamp``, saying when and by which command it was measured."""
    fresh = {h: lines for h, lines in _blocks(new) if h in headings}
    blocks = _blocks(old)
    names = [h for h, _ in blocks]
    for h in headings:
        if h not in fresh:
            continue
        body = list(fresh[h])
        while body and not body[-1].strip():
            body.pop()
        body += ["", stamp, ""]
        if h in names:
            blocks[names.index(h)] = (h, body)
        else:
            at = names.index("## Targets") if "## Targets" in names else len(blocks)
            blocks.insert(at, (h, body))
            names.insert(at, h)
    new_rows = [ln for h, lines in _blocks(new) if h == "## Targets" for ln in lines
                if any(ln.startswith("| " + p) for p in target_prefixes)]
    if new_rows and "## Targets" in names:
        i = names.index("## Targets")
        lines = [ln for ln in blocks[i][1] if not any(ln.startswith("| " + p) for p in target_prefixes)]
        last = max((j for j, ln in enumerate(lines) if ln.startswith("|")), default=len(lines) - 1)
        blocks[i] = ("## Targets", lines[:last + 1] + new_rows + lines[last + 1:])
    return "\n".join(ln for _, lines in blocks for ln in lines).rstrip() + "\n"


def reproduce_command(argv: list[str]) -> str:
    """This run's command as typed from the repository root (path options made repo-relative)."""
    def rel(v: str) -> str:
        return os.path.relpath(os.path.abspath(v), REPO)

    out, i = ["python", "scripts/benchmark.py"], 0
    while i < len(argv):
        a = argv[i]
        if a == "--json" and i + 1 < len(argv) or a.startswith("--json="):  # a side output, not the report
            i += 1 if "=" in a else 2
            continue
        if a in PATH_OPTIONS and i + 1 < len(argv):
            out += [a, rel(argv[i + 1])]
            i += 2
            continue
        key, eq, val = a.partition("=")
        out.append(f"{key}={rel(val)}" if eq and key in PATH_OPTIONS else a)
        i += 1
    return " ".join(shlex.quote(x) for x in out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:  # render (and merge) figures measured before, without measuring again
        res = json.loads(Path(args.from_json).read_text())
        text = render(res)
        if args.merge:
            sections = res["args"]["sections"]
            heads = [MERGE_HEADINGS[k] for k in sections if k in MERGE_HEADINGS]
            stamp = (f"*This section: measured {res['started']} – {res['finished']} with `{res['command']}` and merged "
                     "into this file (`--merge`); the other sections are from the run named at the top.*")
            text = merge_report(Path(args.merge).read_text(), text, heads, stamp, MERGE_TARGETS)
        Path(args.out).write_text(text)
        return 0
    torch.set_flush_denormal(FLUSH_DENORMAL)  # before the first parallel op: see FLUSH_DENORMAL
    logging.basicConfig(level=logging.INFO, format="[benchmark] %(message)s")
    logging.getLogger("relaxrun").setLevel(logging.WARNING)
    register_configs()
    from relaxrun.cli import _register_resolvers

    _register_resolvers()
    started = time.time()
    command = reproduce_command(sys.argv[1:] if argv is None else list(argv))
    with tempfile.TemporaryDirectory(prefix="relaxrun-bench-") as tmp:
        tmp = Path(tmp)
        generated = args.data_root is None
        data_root = str(generate_mnist(tmp / "data")) if generated else os.path.abspath(args.data_root)
        if not generated and args.smoke and args.steps == 0:
            n = load_images("mnist", data_root, True, False).shape[0]
            if n > 5000:  # real MNIST in smoke mode: a few steps, not whole epochs
                args.steps = 10
        ctx = Context(args, data_root, tmp)
        res: dict = {
            "args": vars(args), "command": command, "machine": machine_info(ctx.device),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "generated_data": generated, "n_train": ctx.n_train,
            "data_root_shown": "generated IDX files" if generated else args.data_root, "notes": ctx.notes,
        }
        if GPU_FIGURES.exists():  # written by scripts/device_check.sh on a machine with CUDA
            with contextlib.suppress(OSError, ValueError):
                res["gpu_figures"] = json.loads(GPU_FIGURES.read_text())
        all_probe = Probe()
        for section in SECTIONS:
            if section not in args.sections or (section == "compile" and not args.compile_epochs) \
                    or (section == "against" and not args.against):
                continue
            log.info("%s ... (load %.2f)", section, os.getloadavg()[0])
            t0 = time.perf_counter()
            try:
                if section == "throughput":
                    res[section] = bench_throughput(ctx)
                elif section == "against":
                    res[section] = bench_against(ctx)
                elif section == "cli":
                    res[section] = bench_cli(ctx)
                elif section == "breakdown":
                    res[section] = bench_breakdown(ctx, res.get("throughput"))
                elif section == "methods":
                    res[section] = bench_methods(ctx)
                elif section == "kernels":
                    res[section] = bench_kernels(ctx)
                elif section == "sweep":
                    res[section] = bench_sweep(ctx)
                elif section == "rss":
                    res[section] = bench_rss(ctx)
                elif section == "threads":
                    res[section] = bench_threads(ctx)
                elif section == "optimizer":
                    res[section] = bench_optimizer(ctx)
                elif section == "denormals":
                    res[section] = bench_denormals(ctx)
                elif section == "compile":
                    res[section] = bench_compile(ctx)
                elif section == "iwae":
                    res[section] = bench_iwae(ctx)
                elif section == "peers":
                    res[section] = bench_peers(ctx)
            except Interrupted:  # Ctrl-C / SIGTERM inside relaxrun's train(): stop, do not go on
                raise
            except Exception as err:  # report, keep the other sections
                log.exception("section %s failed", section)
                ctx.notes.append(f"section `{section}` failed: {type(err).__name__}: {err}")
            log.info("%s done in %.1f s", section, time.perf_counter() - t0)
        whole = all_probe.close()
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    res["duration_s"] = time.time() - started
    figs = list(_figures(res))
    others = [f["other_cores"] for f in figs if f.get("other_cores") is not None]
    res["max_other_cores"] = max(others) if others else whole["other_cores"]
    res["max_load"] = max([f["load1_max"] for f in figs] or [whole["load1_end"]])
    res["whole_run"] = whole
    text = render(res)
    if args.merge:
        heads = [MERGE_HEADINGS[k] for k in args.sections if k in MERGE_HEADINGS]
        stamp = (f"*This section: measured {res['started']} – {res['finished']} with `{command}` and merged into this "
                 "file (`--merge`); the other sections are from the run named at the top.*")
        text = merge_report(Path(args.merge).read_text(), text, heads, stamp, MERGE_TARGETS)
    Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    log.info("wrote %s (%.1f min)", args.out, res["duration_s"] / 60)
    return 1 if any(n.startswith("section") for n in ctx.notes) else 0


def _figures(obj):
    """Every figure dict (has median/min/max) inside the results."""
    if isinstance(obj, dict):
        if {"median", "min", "max", "load1_max"} <= obj.keys():
            yield obj
        else:
            for v in obj.values():
                yield from _figures(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _figures(v)


if __name__ == "__main__":
    sys.exit(main())

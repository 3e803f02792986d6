"""Run-time helpers of a training or evaluation process: device choice, RNG states, checkpoint and
JSON files written atomically, checkpoints checked when read, the run-folder lock, and the
subnormal-float flag.

A leaf module: the loop (train.py) and evaluation (evaluate.py) import it; it imports nothing
from relaxrun but the range-check errors.

Files of a run are replaced, never overwritten in place: :func:`atomic_write` writes
``<name>.tmp`` beside the target, fsyncs it, renames it over the target (``os.replace``, atomic on
POSIX) and fsyncs the folder. A process killed at any moment (``kill -9``) leaves either the old
file or the new one, and at worst a stale ``.tmp`` that the next run removes
(:func:`run_folder_lock`). A failed write (disk full, read-only folder) removes its temporary file,
leaves the old file as it was and raises :class:`WriteError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import threading
from pathlib import Path

import torch

from .checks import ConfigError

CHECKPOINT = "checkpoint.pt"
#: the layout of checkpoint.pt (its ``format_version`` entry). A checkpoint without the entry was
#: written before it existed and has the layout of version 1.
CHECKPOINT_VERSION = 1
#: the lock file a process holds (``fcntl.flock``) while it trains or evaluates in a run folder
LOCK = ".relaxrun.lock"
TMP_SUFFIX = ".tmp"
#: the files of a run folder written with :func:`atomic_write`
ATOMIC_FILES = (CHECKPOINT, "metrics.json")
#: what a relaxrun checkpoint must hold
CHECKPOINT_KEYS = ("model", "optimizers", "rng", "state", "method", "model_shape", "config")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint); the message says why."""


class CheckpointError(TrainingError):
    """A checkpoint is unreadable, damaged, of another format version or holds non-finite numbers.
    The file is never modified; the message names it."""


class WriteError(TrainingError):
    """A file of the run could not be written (disk full, read-only folder); the previous version of
    the file is kept and the message names it."""


class RunFolderBusy(TrainingError):
    """Another process trains or evaluates in the same run folder (it holds the folder's lock)."""


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda[:n]`` without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here (use device=auto or device=cpu)")
    return torch.device(name)


def os_error_text(err: OSError) -> str:
    """``[Errno 28] No space left on device`` without the file name (the caller names the file)."""
    if err.errno is not None and err.strerror:
        return f"[Errno {err.errno}] {err.strerror}"
    return str(err) or type(err).__name__


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write, what: str = "file") -> None:
    """Replace ``path`` by what ``write(binary_file)`` writes, atomically (see the module docstring).

    Raises WriteError naming ``path`` when anything fails on the way (ENOSPC, EACCES, EROFS, a
    failing ``write``); ``path`` is then exactly as it was and no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        cause = os_error_text(err) if isinstance(err, OSError) else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        kept = "the previous one is kept as it was" if path.exists() else "nothing was written"
        raise WriteError(f"cannot write the {what} {path}: {cause}; {kept}") from None
    _fsync_folder(path.parent)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` (with ``format_version``) atomically: never a half-written checkpoint."""
    state = dict(state, format_version=CHECKPOINT_VERSION)
    # serialised in memory first: torch.save reports a failing file write (ENOSPC) as an obscure
    # "unexpected pos" RuntimeError; a plain write of the bytes raises the OSError itself
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()), "checkpoint")


def _first_non_finite(tensors: dict) -> tuple[str, str] | None:
    """(name, 'NaN' or 'Inf') of the first floating tensor in ``tensors`` (nested dicts/lists
    flattened, names joined by '.') that is not finite, else None."""
    stack = [("", tensors)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, dict):
            stack.extend((f"{prefix}{k}.", v) for k, v in reversed(list(node.items())))
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{prefix}{i}.", v) for i, v in reversed(list(enumerate(node))))
        elif isinstance(node, torch.Tensor) and (node.is_floating_point() or node.is_complex()):
            if not torch.isfinite(node).all():
                return prefix[:-1], "NaN" if torch.isnan(node).any() else "Inf"
        elif isinstance(node, float) and not math.isfinite(node):
            return prefix[:-1], "NaN" if math.isnan(node) else "Inf"
    return None


def load_checkpoint(path: Path) -> dict:
    """Read and check a relaxrun checkpoint; CheckpointError (naming ``path``) when it is missing,
    empty, unreadable (truncated, not a checkpoint), of another ``format_version``, lacks an entry of
    :data:`CHECKPOINT_KEYS`, or holds a NaN / Inf parameter or optimizer state. Reading never
    changes the file."""
    path = Path(path)
    leave = "the file is left as it is"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {os_error_text(err)}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it is not a relaxrun checkpoint; {leave}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        raise CheckpointError(f"cannot read checkpoint {path} ({size} bytes): truncated or not a relaxrun "
                              f"checkpoint ({type(err).__name__}: {text}); {leave}") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(ck).__name__}, not a relaxrun "
                              f"checkpoint; {leave}")
    version = ck.get("format_version", 1)
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this relaxrun reads format "
                              f"version {CHECKPOINT_VERSION} ({'a newer' if isinstance(version, int) and version > CHECKPOINT_VERSION else 'another'} relaxrun wrote it); "
                              f"{leave}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a complete relaxrun checkpoint (missing "
                              f"{', '.join(missing)}); {leave}")
    bad = _first_non_finite({"model": ck["model"], "optimizers": ck["optimizers"]})
    if bad is not None:
        name, kind = bad
        raise CheckpointError(f"checkpoint {path} holds {kind} values in {name}: the run it was saved from had "
                              f"diverged, it cannot be evaluated or resumed; {leave}")
    return ck


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as indented JSON, written atomically (:func:`atomic_write`)."""
    text = json.dumps(obj, indent=2).encode()
    atomic_write(path, lambda f: f.write(text), "file")


def check_run_folder(run_dir: Path) -> None:
    """Refuse, before anything is written, a run folder that another process holds or that cannot
    be written: RunFolderBusy or WriteError with one line naming it. Creates nothing (a command line
    can call it before Hydra writes ``.hydra/`` and the log into the folder); :class:`run_folder_lock`
    then takes the lock for the run itself."""
    run_dir = Path(run_dir).absolute()
    if run_dir.is_dir():
        lock = run_dir / LOCK
        if lock.is_file():
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                fcntl = None
            if fcntl is not None:
                with contextlib.suppress(OSError), open(lock, "rb") as f:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:
                        holder = f.read(32).decode(errors="replace").strip()
                        raise RunFolderBusy(f"the run folder {run_dir} is in use by another relaxrun process"
                                            f"{' (pid ' + holder + ')' if holder.isdigit() else ''}: wait for it "
                                            "to end or choose another hydra.run.dir") from None
        problem = _cannot_write_in(run_dir)
        if problem:
            raise WriteError(f"the run folder {run_dir} is not writable ({problem}): choose another hydra.run.dir "
                             "or make it writable")
        return
    parent = run_dir
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(f"cannot create the run folder {run_dir}: {parent} is a file, not a folder")
    problem = _cannot_write_in(parent)
    if problem:
        raise WriteError(f"cannot create the run folder {run_dir}: {parent} is not writable ({problem}); choose "
                         "another hydra.run.dir")


def _cannot_write_in(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (tried: a temporary folder made and removed), or None.
    Trying catches what permission bits do not show: a read-only mount, root on a read-only file system."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".relaxrun-probe-", dir=folder))
    except OSError as err:
        return os_error_text(err)
    return None


class run_folder_lock:  # noqa: N801  (used as a context manager, like open)
    """Hold ``<run_dir>/.relaxrun.lock`` (an exclusive ``fcntl.flock``) for the life of the block.

    A second process asking for the same run folder gets :class:`RunFolderBusy` at once (naming the
    folder and the holder's pid), the holder is not disturbed. The kernel releases a flock when its
    holder dies, so a ``kill -9`` leaves no stale lock: the lock file may stay, the lock does not.
    The lock file is removed on exit; taking the lock checks that the file locked is still the one
    at the path (another process may have removed it in between) and retries if not. Holding the
    lock, stale temporary files of an interrupted atomic write (``checkpoint.pt.tmp``,
    ``metrics.json.tmp``) are removed.

    Creating the folder or the lock file fails with :class:`WriteError` when the place is not
    writable. Where ``fcntl`` does not exist (Windows) the lock is a no-op.
    """

    def __init__(self, run_dir: Path, what: str = "run"):
        self.run_dir, self.what = Path(run_dir), what
        self.path = self.run_dir / LOCK
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise WriteError(f"cannot create the run folder {self.run_dir}: {os_error_text(err)}; choose another "
                             "hydra.run.dir") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise WriteError(f"the run folder {self.run_dir} is not writable ({os_error_text(err)} creating "
                                 f"{LOCK}); choose another hydra.run.dir or make it writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise WriteError(f"cannot lock the run folder {self.run_dir}: {os_error_text(err)}") from None
                raise RunFolderBusy(f"the run folder {self.run_dir} is in use by another relaxrun process"
                                    f"{' (pid ' + holder + ')' if holder.isdigit() else ''}: wait for it to end "
                                    f"or choose another hydra.run.dir; its checkpoint and results are not touched") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        for name in ATOMIC_FILES:  # a temporary file left by a process killed mid-write
            with contextlib.suppress(OSError):
                (self.run_dir / (name + TMP_SUFFIX)).unlink()
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self.fd)  # releases the flock
            self.fd = None


def run_io_error(err: OSError, run_dir: Path) -> WriteError:
    """A WriteError naming what failed (the TensorBoard events, or ``err``'s file) for an OSError that
    stopped a run in ``run_dir``; files written before (the last checkpoint, metrics.json) are kept,
    since every one of them is replaced atomically."""
    tb = err.__traceback__
    from_tensorboard = False
    while tb is not None:
        from_tensorboard |= "tensorboard" in tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if from_tensorboard:
        what = f"the TensorBoard events in {Path(run_dir) / 'tb'}"
    elif err.filename:
        what = str(err.filename)
    else:
        what = f"a file in {run_dir}"
    return WriteError(f"cannot write {what}: {os_error_text(err)}; the run stopped, what it had saved before "
                      f"(the last {CHECKPOINT}, metrics.json) is kept")


@contextlib.contextmanager
def quiet_writer_threads():
    """Inside the block, an OSError that kills a TensorBoard writer thread (disk full, folder gone) is
    not printed as a thread traceback: the writer raises the same error in the main thread at its
    next write, flush or close, where the caller reports it in one line."""
    previous = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, OSError) and "AsyncWriter" in type(args.thread).__name__:
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def rng_state(gens: dict[str, torch.Generator]) -> dict:
    """States of the named generators and of torch's global CPU (and CUDA) generators."""
    state = {name: g.get_state() for name, g in gens.items()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(gens: dict[str, torch.Generator], state: dict) -> None:
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """torch's global RNG seeded with ``seed`` inside the block, restored after (forked)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def flush_denormal_is_on() -> bool:
    """Whether this thread flushes subnormal floats to zero (a subnormal times one reads as zero)."""
    return float(torch.tensor(1e-39, dtype=torch.float32) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """x86 FTZ/DAZ (``torch.set_flush_denormal``) for the calling thread inside the block, restored after.

    The flag is per thread. torch's OpenMP workers copy it from the thread that creates them, once,
    so they flush too when the first parallel op of the process runs inside the block, which is the
    case in a ``relaxrun`` process: nothing parallel runs before training starts.
    """
    before = flush_denormal_is_on()
    if enabled != before:
        torch.set_flush_denormal(enabled)
    try:
        yield
    finally:
        if enabled != before:
            torch.set_flush_denormal(before)


def joint_state_dict(model: torch.nn.Module, method: torch.nn.Module) -> dict:
    """The model's state with the method's own (learned parameters, buffers) under ``method.``:
    one dict for the checkpoint's ``model`` entry."""
    state = dict(model.state_dict())
    state.update({f"method.{k}": v for k, v in method.state_dict().items()})
    return state


def load_joint_state_dict(model: torch.nn.Module, method: torch.nn.Module, state: dict) -> None:
    """Inverse of :func:`joint_state_dict` (strict: a missing or unexpected key is a RuntimeError)."""
    own = {k[len("method."):]: v for k, v in state.items() if k.startswith("method.")}
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("method.")})
    method.load_state_dict(own)

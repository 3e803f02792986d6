"""Run-time helpers of a training or evaluation process: device choice, RNG states, checkpoint and
JSON files written atomically, and the subnormal-float flag.

A leaf module: the loop (train.py) and evaluation (evaluate.py) import it; it imports nothing
from relaxrun but the range-check errors.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from .checks import ConfigError

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint); the message says why."""


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda[:n]`` without CUDA is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here (use device=auto or device=cpu)")
    return torch.device(name)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


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

"""Build a large network without holding its weights twice: an empty module on the meta device, then
the file's tensors assigned into it.

A randomly initialised Stable Diffusion UNet is 3.4 GB of float32 that a plain constructor fills and
`load_state_dict` then overwrites (and copies): twice the weights, plus seconds of random init. Here
the module is built on the meta device (no storage), and `load_state_dict(assign=True)` makes the
file's tensors its parameters. safetensors files are memory-mapped when no conversion is needed (the
parameters are then the file's page-cache pages: nothing is copied, and processes on one node share
them); when the dtype changes, tensors are read one at a time (safetensors' "pread" backend where it
has one) and converted, so the peak is the converted model plus one tensor. `.bin` files go through
`torch.load(weights_only=True, mmap=True)`: a checkpoint never runs code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from .errors import CheckpointError

# Buffers that models register as non-persistent (so files may lack them) and that are pure functions of
# their shape; anything else left on the meta device after loading is an error.
DERIVED_BUFFERS: dict[str, Callable[[torch.Size, torch.device], torch.Tensor]] = {
    "position_ids": lambda shape, device: torch.arange(shape[-1], device=device).expand(shape),
}
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def build_empty(factory: Callable[[], torch.nn.Module], where: str) -> torch.nn.Module:
    """The module `factory` builds, with every tensor on the meta device (no memory, no random init)."""
    try:
        with torch.device("meta"):
            return factory()
    except Exception as e:  # the libraries raise many kinds for a bad config
        raise CheckpointError(f"{where}: cannot build the network from its config ({e})") from e


def read_state(path: str, where: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a local weight file on `device`, floating ones as `dtype`."""
    if path.endswith(".safetensors"):
        return _read_safetensors(path, where, device, dtype)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # legacy (non-zip) files cannot be mapped: read them plainly
            raise CheckpointError(f"{where}: not a readable checkpoint ({e})") from e
        state = _load_bin(path, where)
    except Exception as e:  # UnpicklingError for anything that would run code
        raise _refused(where, e) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: expected a dict of tensors")
    return {k: _cast(v, dtype).to(device) for k, v in state.items()}


def assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
    """`module` (built by build_empty) with `state`'s tensors as its parameters and buffers."""
    expected = set(module.state_dict())
    derived = {n for n, _ in module.named_buffers()} - expected  # non-persistent buffers
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - derived)
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match the config; missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not match the config ({str(e).splitlines()[-1]})") from e
    device = next((t.device for t in state.values()), torch.device("cpu"))
    for name in derived:
        owner, _, leaf = name.rpartition(".")
        sub = module.get_submodule(owner)
        current = getattr(sub, leaf)
        if name in state:  # older files saved it; take theirs
            setattr(sub, leaf, state[name].to(device))
        elif leaf in DERIVED_BUFFERS and current.is_meta:
            setattr(sub, leaf, DERIVED_BUFFERS[leaf](current.shape, device))
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: no weights for {left[:5]} (not in the file, and not derivable)")
    return module.eval().requires_grad_(False)


def _read_safetensors(path: str, where: str, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    target = "cpu" if device.type == "cpu" else str(device)
    try:
        with safe_open(path, framework="pt", device=target) as f:
            names = f.keys()  # (safe_open is not iterable)
            try:
                kinds = {f.get_slice(k).get_dtype() for k in names}
            except AttributeError:  # older safetensors: no dtype without reading; take the converting path
                kinds = {"unknown"}
        floats = {SAFETENSORS_DTYPES.get(k) for k in kinds if k in SAFETENSORS_DTYPES or k == "unknown"}
        convert = bool(floats - {dtype})
        with _open_for_reading(path, target, pread=convert) as f:
            return {k: _cast(f.get_tensor(k), dtype) for k in names}
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{where}: not a readable safetensors file ({e})") from e


def _open_for_reading(path: str, device: str, *, pread: bool) -> Any:
    """safetensors' reader: its memory map (zero copy), or pread(2) per tensor when each is converted
    anyway (older safetensors have only the map: the peak then also counts the file's pages)."""
    from safetensors import safe_open

    if pread:
        with contextlib.suppress(TypeError):
            return safe_open(path, framework="pt", device=device, backend="pread")
    return safe_open(path, framework="pt", device=device)


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t


def _load_bin(path: str, where: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _refused(where, e) from e


def _refused(where: str, e: Exception) -> CheckpointError:
    return CheckpointError(f"{where}: refused: not a plain tensor checkpoint; loading it would need to run code "
                           f"from the file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")

"""Random draws with one generator per output, so an output never depends on its batch."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .errors import SDEditError


def seed_for(seed: int, item_id: str, sample: int = 0) -> int:
    """A 63-bit seed from (job seed, item id, sample index): stable across runs, machines, Python versions."""
    digest = hashlib.blake2b(f"{int(seed)}\x1f{item_id}\x1f{int(sample)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def generator_for(seed: int, item_id: str, sample: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one output sample, as the pipeline seeds it."""
    return torch.Generator(device=device).manual_seed(seed_for(seed, item_id, sample))


class Noise:
    """Standard normal draws shaped like the batch; per-item streams when given a list of generators."""

    def __init__(self, generator: torch.Generator | Sequence[torch.Generator] | None, batch: int) -> None:
        if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
            if len(generator) != batch:
                raise SDEditError(f"got {len(generator)} generators for a batch of {batch}: give one per item")
            self.generators: list[torch.Generator] | None = list(generator)
            self.generator = None
        else:
            self.generators = None
            self.generator = generator

    def like(self, x: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            dev = self.generator.device if self.generator is not None else x.device
            return torch.randn(x.shape, generator=self.generator, device=dev, dtype=torch.float32).to(x.device)
        draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32)
                 for g in self.generators]
        return torch.stack(draws).to(x.device)

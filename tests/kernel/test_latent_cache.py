"""Weights never held twice (the file's pages, the peak of a load) and the node cache for remote folders:
copied once, by one loader, keyed by the files' versions; local folders hashed once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import DDPM_CONFIG, save_checkpoint, tiny_unet
from latent_models import guides, save_sd_folder

from sdedit_kernel import load_score_model, sdedit
from sdedit_kernel.cache import DIGEST_FILE, content_digest
from sdedit_kernel.store import Store

pytestmark = pytest.mark.usefixtures("private_sdedit_cache")


def _upload(root: Path, url_root: str) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in root.rglob("*"):
        if path.is_file():
            fs.pipe(f"{url_root}/{path.relative_to(root).as_posix()}", path.read_bytes())


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files read through a Store (copies and hashes both read by chunks), in order."""
    seen: list[str] = []
    chunks = Store.chunks

    def counting(self, rel):
        seen.append(rel)
        return chunks(self, rel)

    monkeypatch.setattr(Store, "chunks", counting)
    return seen


def test_remote_folder_is_copied_once_into_the_node_cache(sd1, tmp_path, reads):
    _upload(sd1, "/remote/sd1")
    import fsspec

    fsspec.filesystem("memory").pipe("/remote/sd1/safety_checker/model.safetensors", b"x" * 1000)  # not needed
    cache = tmp_path / "cache"
    first = load_score_model("memory://remote/sd1", cache_dir=cache)
    copied = sorted(reads)
    assert "unet/diffusion_pytorch_model.safetensors" in copied
    assert not any(r.startswith("safety_checker") for r in copied)
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]  # one folder, named by the key; no temporary left
    assert len(entry.name) == 64 and (entry / DIGEST_FILE).is_file()
    reads.clear()
    second = load_score_model("memory://remote/sd1", cache_dir=cache)
    assert reads == []  # a cache hit downloads nothing
    local = load_score_model(sd1)
    assert first.digest == second.digest == local.digest  # the digest is the content's
    g = guides(1)
    kw = {"t0": 0.5, "steps": 2, "sampler": "ddim", "prompts": ["a cat"], "guidance_scale": 2.0}
    assert torch.equal(sdedit(first, g, generator=torch.Generator().manual_seed(0), **kw),
                       sdedit(local, g, generator=torch.Generator().manual_seed(0), **kw))
    fsspec.filesystem("memory").pipe("/remote/sd1/scheduler/scheduler_config.json",
                                     (sd1 / "scheduler/scheduler_config.json").read_bytes())  # rewritten in place
    load_score_model("memory://remote/sd1", cache_dir=cache)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # a new version: a new key


def test_a_local_folder_is_hashed_once(sd1, tmp_path, reads):
    root = tmp_path / "local"
    shutil.copytree(sd1, root)
    first = load_score_model(root, cache_dir=tmp_path / "cache")
    assert "unet/diffusion_pytorch_model.safetensors" in reads
    reads.clear()
    assert load_score_model(root, cache_dir=tmp_path / "cache").digest == first.digest and reads == []
    os.utime(root / "scheduler/scheduler_config.json", ns=(1, 1))  # touched: hashed again, same content
    assert load_score_model(root, cache_dir=tmp_path / "cache").digest == first.digest and reads


def test_concurrent_loaders_copy_once(sd1, tmp_path, monkeypatch):
    from sdedit_kernel import cache as cache_module

    _upload(sd1, "/remote/sd1-concurrent")
    copies: list[int] = []
    copy = cache_module._copy

    def counting(*args):
        copies.append(1)
        return copy(*args)

    monkeypatch.setattr(cache_module, "_copy", counting)
    store = Store("memory://remote/sd1-concurrent")
    files = [str(p.relative_to(sd1)) for p in sd1.rglob("*") if p.is_file()]
    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=lambda: results.append(cache_module.local_copy(store, files, tmp_path)))
               for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(copies) == 1 and len(set(results)) == 1


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(path):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_weights_are_the_files_pages_not_a_copy(sd1):
    """Same dtype as the file: every UNet parameter lies inside the file's memory map (zero copy)."""
    model = load_score_model(sd1)
    ranges = _mapped_ranges(str(sd1 / "unet/diffusion_pytorch_model.safetensors"))
    assert ranges
    inside = [any(lo <= p.data_ptr() < hi for lo, hi in ranges) for p in model.net.parameters()]
    assert all(inside)
    half = load_score_model(sd1, dtype=torch.float16)  # converted: its own memory, one tensor at a time
    assert next(half.net.parameters()).dtype == torch.float16


PEAK_SCRIPT = """
import os, re, sys, torch
from pathlib import Path
def kib(key):
    return int(re.search(key + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
from diffusers import AutoencoderKL, UNet2DConditionModel  # code is imported before the baseline
from transformers import CLIPTextModel, CLIPTokenizer
from sdedit_kernel import load_score_model
base = kib("VmRSS")
model = load_score_model(sys.argv[1])
sum(float(p.float().sum()) for p in model.net.parameters())  # touch every weight
print(kib("VmHWM") - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_of_a_load_is_about_the_files_size(tmp_path):
    """A 420 MB UNet loads with a peak of about its file's size (a plain load holds it twice)."""
    from diffusers import UNet2DConditionModel

    root = save_sd_folder(tmp_path / "big", "sd1", seed=0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(320, 640),
                                layers_per_block=2, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    unet.save_pretrained(root / "unet")
    del unet
    size = sum(f.stat().st_size for f in root.rglob("*.safetensors")) / 1024
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(root)], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peak = int(res.stdout.strip().splitlines()[-1])
    assert size > 100_000 and peak < 1.35 * size, (peak, size)


def test_content_digest_names_the_files(sd1):
    store = Store(str(sd1))
    files = ["model_index.json", "unet/config.json"]
    assert content_digest(store, files) != content_digest(store, files[:1])
    assert len(load_score_model(save_checkpoint(sd1.parent / "pixel", tiny_unet(), DDPM_CONFIG)).digest) == 64

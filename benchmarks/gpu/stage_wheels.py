"""Stage the job's Python dependencies for a GPU machine that has no package index.

Usage (here, with the project's venv, which pins the versions):
    python benchmarks/gpu/stage_wheels.py download      # fetch cp312 wheels, split the big ones, write PLAN.json
    python benchmarks/gpu/stage_wheels.py check         # join + sha256 + zip test + pip install --target, locally
    python benchmarks/gpu/stage_wheels.py commands      # print the device calls to paste (carry lists included)
There (the GPU image's python3, Python 3.12; stdlib only, ``packaging`` when present):
    python3 benchmarks/gpu/stage_wheels.py verify-parts # transfer 1: the parts that arrived, the image's versions
    python3 benchmarks/gpu/stage_wheels.py install      # transfer 2: join, verify sha256, pip install --target

The GPU image has torch, pyarrow, pandas, pillow, ... (``IMAGE`` below, read from the device docs) but not
ray, pydantic, diffusers or jsonschema's stack. ``download`` starts from ``ROOTS``, pins every package to
the version installed in the interpreter running it, reads each downloaded wheel's METADATA
(Requires-Dist, markers evaluated for CPython 3.12 on Linux x86-64) and fetches every requirement the
image lacks, until none is left; requirements the image already meets by name are written to PLAN.json
and checked against the image's versions there. A wheel larger than ``SPLIT_ABOVE`` cannot travel in one
device call (64 MiB with the working tree), so it is cut in two with ``split -b``: part 1 travels in ``.whl-gpu/``
with PLAN.json (transfer 1), part 2 in ``.whl-gpu-ray/`` (transfer 2, while the machine is still warm, so
``.whl-gpu/`` is still there); the small wheels are shared out between the two so that both calls stay well
under the limit as the working tree grows. Both folders and ``.whl-gpu-src/`` (the whole
wheels, kept here) are git-ignored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from email.parser import Parser
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SRC, CARRY1, CARRY2 = ".whl-gpu-src", ".whl-gpu", ".whl-gpu-ray"
PLAN = "PLAN.json"
ROOTS = ("ray[data]", "diffusers", "pydantic")
# Packages the image has whose newer version a carried wheel needs, and which are safe to shadow: carried anyway.
ALWAYS_CARRY = frozenset({"typing-extensions"})
SPLIT_ABOVE = 24 * 2**20
DEVICE_LIMIT = 64 * 2**20  # working tree + carried paths, per device call
TREE_MARGIN = 6 * 2**20  # room for the working tree to grow before the next session pastes the commands
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
              "implementation_version": "3.12.3", "platform_python_implementation": "CPython",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "platform_machine": "x86_64",
              "platform_release": "", "platform_version": ""}
# The GPU image's Python packages (/work/.library/device/KINDS.md, "Python packages already there", 2026-11-17).
_IMAGE_NAMES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE = frozenset(_IMAGE_NAMES.split())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- parts: split, join, verify (both sides)

def split_file(path: Path, part_size: int, dests: list[Path], base: Path = ROOT) -> list[dict[str, Any]]:
    """Cut ``path`` with ``split -b`` into len(dests) parts named ``NAME.part-00``, ``-01``, ...; part i goes to
    dests[i]. Returns [{"path": relative to base, "sha256", "bytes"}] in join order."""
    work = Path(tempfile.mkdtemp(prefix="split-"))
    try:
        subprocess.run(["split", "-b", str(part_size), "-d", "-a", "2", str(path), str(work / f"{path.name}.part-")],
                       check=True)
        pieces = sorted(work.iterdir())
        if len(pieces) != len(dests):
            raise SystemExit(f"{path.name}: split into {len(pieces)} parts, expected {len(dests)} "
                             f"(part size {part_size} for {path.stat().st_size} bytes)")
        parts = []
        for piece, dest in zip(pieces, dests):
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / piece.name
            shutil.move(str(piece), target)
            parts.append({"path": str(target.relative_to(base)), "sha256": sha256(target),
                          "bytes": target.stat().st_size})
        return parts
    finally:
        shutil.rmtree(work, ignore_errors=True)


def join_parts(parts: list[dict[str, Any]], out: Path, expected_sha256: str, base: Path = ROOT) -> None:
    """Concatenate the parts (as ``cat``), checking each part's and the whole file's sha256."""
    missing = [p["path"] for p in parts if not (base / p["path"]).is_file()]
    if missing:
        raise SystemExit(f"missing part(s) {missing}: the parts travel in two back-to-back device calls; if the "
                         "machine went cold between them, run transfer 1 again, then transfer 2 at once")
    h = hashlib.sha256()
    with open(out, "wb") as f:
        for p in parts:
            data_hash = hashlib.sha256()
            with open(base / p["path"], "rb") as src:
                for chunk in iter(lambda s=src: s.read(1 << 20), b""):
                    data_hash.update(chunk)
                    h.update(chunk)
                    f.write(chunk)
            if data_hash.hexdigest() != p["sha256"]:
                raise SystemExit(f"{p['path']}: sha256 {data_hash.hexdigest()} != {p['sha256']} (corrupt part)")
    if h.hexdigest() != expected_sha256:
        out.unlink()
        raise SystemExit(f"{out.name}: joined sha256 {h.hexdigest()} != {expected_sha256}")


def zip_ok(path: Path) -> None:
    """The ``python -m zipfile -t`` check: every member's CRC."""
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise SystemExit(f"{path.name}: bad zip member {bad}")


# ---------------------------------------------------------------- download (here)

def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        msg = Parser().parsestr(z.read(meta).decode("utf-8"))
    return msg.get_all("Requires-Dist") or []


def wheel_name(wheel: Path) -> str:
    return normalize(wheel.name.split("-")[0])


def needed(requires: Iterable[str], extras: Iterable[str]) -> list[Any]:
    """The requirements that apply on the target (CPython 3.12, Linux x86-64) with these extras."""
    from packaging.requirements import Requirement

    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def local_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        raise SystemExit(f"{name} is needed on the GPU machine but not installed here: install it in this venv "
                         "first, so that its version is pinned by what the tests ran with") from None


def pip_download(specs: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", str(dest), "-q"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + specs, check=True)


def resolve_and_download(src: Path) -> dict[str, Any]:
    """Download the closure of ROOTS minus the image; returns what PLAN.json records about it."""
    from packaging.requirements import Requirement

    src.mkdir(parents=True, exist_ok=True)
    todo = [Requirement(r) for r in ROOTS]
    pinned: dict[str, str] = {}
    extras: dict[str, set[str]] = {}
    on_image: dict[str, set[str]] = {}
    why: dict[str, list[str]] = {}
    while todo:
        batch = []
        for req in todo:
            name = normalize(req.name)
            if name in IMAGE and name not in ALWAYS_CARRY:
                on_image.setdefault(name, set()).add(str(req.specifier) or "any")
                continue
            if name in pinned:
                if req.extras - extras[name]:
                    raise SystemExit(f"{name}: extras {req.extras} asked for after it was resolved")
                continue
            ver = local_version(name)
            if req.specifier and not req.specifier.contains(ver, prereleases=True):
                raise SystemExit(f"{name}=={ver} (installed here) does not meet {req}")
            pinned[name], extras[name] = ver, set(req.extras)
            batch.append(f"{name}=={ver}")
        todo = []
        if not batch:
            break
        pip_download(batch, src)
        for spec in batch:
            name = spec.split("==")[0]
            wheel = _find_wheel(src, name, pinned[name])
            for req in needed(wheel_requires(wheel), extras[name]):
                why.setdefault(normalize(req.name), []).append(f"{name} needs {req}")
                todo.append(req)
    wheels = {name: _find_wheel(src, name, ver) for name, ver in pinned.items()}
    return {"wheels": {n: w.name for n, w in wheels.items()}, "pinned": pinned,
            "image_requirements": {n: sorted(s) for n, s in sorted(on_image.items())},
            "why": {n: why.get(n, ["root"]) for n in pinned}}


def _find_wheel(src: Path, name: str, version: str) -> Path:
    for w in src.glob("*.whl"):
        parts = w.name.split("-")
        if normalize(parts[0]) == name and parts[1] == version:
            return w
    raise SystemExit(f"no wheel for {name}=={version} in {src}")


def tree_bytes() -> int:
    """What travels besides the carried paths: tracked plus untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        p = ROOT / os.fsdecode(name)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def stage(root: Path, info: dict[str, Any], tree: int) -> dict[str, Any]:
    """Lay out .whl-gpu/ (part 1 of each big wheel, PLAN.json) and .whl-gpu-ray/ (part 2); the small wheels go
    where they even out the two calls (the working tree travels with both)."""
    src, c1, c2 = root / SRC, root / CARRY1, root / CARRY2
    for d in (c1, c2):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    plan: dict[str, Any] = {"python": "3.12", "platforms": list(PLATFORMS), "folders": [CARRY1, CARRY2],
                            "image_requirements": info["image_requirements"], "why": info["why"], "wheels": []}
    small = [n for n, w in info["wheels"].items() if (src / w).stat().st_size <= SPLIT_ABOVE]
    for name in (n for n in info["wheels"] if n not in small):
        whole = src / info["wheels"][name]
        size = whole.stat().st_size
        # Two parts, the first at least half (``split -b`` makes a third part otherwise).
        parts = split_file(whole, -(-size // 2), [c1, c2], base=root)
        plan["wheels"].append({"name": name, "version": info["pinned"][name], "file": whole.name,
                               "sha256": sha256(whole), "bytes": size, "parts": parts})
    for name in sorted(small, key=lambda n: -(src / info["wheels"][n]).stat().st_size):
        dest = c1 if folder_bytes(c1) <= folder_bytes(c2) else c2
        w = dest / info["wheels"][name]
        shutil.copy2(src / info["wheels"][name], w)
        plan["wheels"].append({"name": name, "version": info["pinned"][name], "file": w.name, "sha256": sha256(w),
                               "bytes": w.stat().st_size, "parts": [{"path": str(w.relative_to(root)),
                                                                     "sha256": sha256(w),
                                                                     "bytes": w.stat().st_size}]})
    (c1 / PLAN).write_text(json.dumps(plan, indent=1))
    sizes = {"tree": tree, "transfer1": tree + folder_bytes(c1), "transfer2": tree + folder_bytes(c2)}
    for key in ("transfer1", "transfer2"):
        if sizes[key] + TREE_MARGIN > DEVICE_LIMIT:
            raise SystemExit(f"{key} would carry {sizes[key] / 2**20:.1f} MiB with the working tree: over the "
                             f"{DEVICE_LIMIT / 2**20:.0f} MiB limit less a {TREE_MARGIN / 2**20:.0f} MiB margin")
    plan["sizes"] = sizes
    (c1 / PLAN).write_text(json.dumps(plan, indent=1))
    return plan


def download(args: argparse.Namespace) -> None:
    info = resolve_and_download(ROOT / SRC)
    plan = stage(ROOT, info, tree_bytes())
    print(f"staged {len(plan['wheels'])} wheel(s):")
    for w in plan["wheels"]:
        print(f"  {w['file']:70s} {w['bytes'] / 2**20:7.2f} MiB  {len(w['parts'])} part(s)  "
              f"({'; '.join(plan['why'][w['name']])[:90]})")
    print("requirements the image must meet (checked there by verify-parts):")
    for n, s in plan["image_requirements"].items():
        print(f"  {n} {', '.join(s)}")
    mib = {k: f"{v / 2**20:.1f} MiB" for k, v in plan["sizes"].items()}
    print(f"per call, with the working tree: {mib}")
    print_commands()


# ---------------------------------------------------------------- install and checks (there, and here for `check`)

def load_plan(base: Path) -> dict[str, Any]:
    path = base / CARRY1 / PLAN
    if not path.is_file():
        raise SystemExit(f"{path} missing: transfer 1 (carry {CARRY1}) did not arrive, or the machine went cold")
    return json.loads(path.read_text())


def join_all(base: Path, plan: dict[str, Any], wheel_dir: Path) -> list[Path]:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for w in plan["wheels"]:
        target = wheel_dir / w["file"]
        join_parts(w["parts"], target, w["sha256"], base=base)
        zip_ok(target)
        out.append(target)
    return out


def pip_install(wheels: list[Path], site: Path, cross: bool = False) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site)]
    if cross:  # here: a Python other than 3.12 installs the cp312 wheels as they would go there
        cmd += ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
    subprocess.run(cmd + [str(w) for w in wheels], check=True)


def check_image(plan: dict[str, Any]) -> list[str]:
    """The image's versions against what the carried wheels require; returns the problems."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        SpecifierSet = None  # noqa: N806 - without packaging, report versions only
    problems = []
    for name, specs in plan["image_requirements"].items():
        try:
            have = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: not installed (needed: {', '.join(specs)})")
            continue
        bad = [s for s in specs if s != "any" and SpecifierSet is not None
               and not SpecifierSet(s).contains(have, prereleases=True)]
        status = f"NOT {' / '.join(bad)}" if bad else "ok"
        print(f"  image {name:22s} {have:14s} {status}")
        if bad:
            problems.append(f"{name} {have} does not meet {' / '.join(bad)}")
    return problems


def verify_parts(args: argparse.Namespace) -> None:
    base = Path(args.base)
    plan = load_plan(base)
    for w in plan["wheels"]:
        for p in w["parts"]:
            path = base / p["path"]
            state = "absent (comes later)" if not path.exists() else (
                "ok" if sha256(path) == p["sha256"] else "CORRUPT")
            print(f"  {p['path']:80s} {state}")
            if state == "CORRUPT":
                raise SystemExit(1)
    problems = check_image(plan)
    print("image: " + ("; ".join(problems) if problems else "meets every requirement of the carried wheels"))


def install(args: argparse.Namespace) -> None:
    base, site = Path(args.base), Path(args.site)
    plan = load_plan(base)
    wheel_dir = Path(args.wheel_dir)
    wheels = join_all(base, plan, wheel_dir)
    print(f"joined and verified {len(wheels)} wheel(s) (sha256 of every part and whole wheel, zip CRCs)")
    pip_install(wheels, site, cross=args.cross)
    print(f"installed into {site}: " + ", ".join(f"{w['name']} {w['version']}" for w in plan["wheels"]))
    if not args.cross:
        problems = check_image(plan)
        if problems:
            print("WARNING: " + "; ".join(problems))
    shutil.rmtree(wheel_dir, ignore_errors=True)


def check(args: argparse.Namespace) -> None:
    """Here: copy both carry folders into a fake remote checkout, install from it exactly as there (cp312
    wheels into --target), and compare every installed package's version with PLAN.json."""
    plan = load_plan(ROOT)
    with tempfile.TemporaryDirectory(prefix="gpu-stage-check-") as tmp:
        remote = Path(tmp) / "repo"
        for folder in (CARRY1, CARRY2):
            shutil.copytree(ROOT / folder, remote / folder)
        site = Path(tmp) / "site"
        wheels = join_all(remote, plan, Path(tmp) / "wheels")
        for w in plan["wheels"]:
            joined = Path(tmp) / "wheels" / w["file"]
            if sha256(joined) != sha256(ROOT / SRC / w["file"]):
                raise SystemExit(f"{w['file']}: joined file differs from the original")
        pip_install(wheels, site, cross=sys.version_info[:2] != (3, 12))
        found = {normalize(p.name.split("-")[0]): p.name.removesuffix(".dist-info").split("-")[1]
                 for p in site.glob("*.dist-info")}
        want = {w["name"]: w["version"] for w in plan["wheels"]}
        if found != want:
            raise SystemExit(f"installed {found}, expected {want}")
        print(f"check ok: {len(wheels)} wheel(s) joined (sha256 equal to the originals, zip CRCs ok) and "
              f"installed into a --target as cp312: " + ", ".join(f"{k} {v}" for k, v in sorted(found.items())))
        if args.python:
            env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
            subprocess.run([args.python, "-c", SMOKE], env=env, check=True, cwd=ROOT)


SMOKE = """
import importlib.metadata as m, sys
import pydantic, jsonschema, diffusers, ray, ray.data
print("smoke:", sys.version.split()[0], {n: m.version(n) for n in ("ray", "pydantic", "diffusers", "jsonschema")})
ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
assert sorted(ray.data.range(20).map_batches(lambda b: {"id": b["id"] * 2}).take_all(), key=lambda r: r["id"])[-1] \
    == {"id": 38}
ray.shutdown()
import subprocess
fields = subprocess.run([sys.executable, "-m", "pipeline", "fields"], capture_output=True, text=True, check=True)
assert "resources.batch_size" in fields.stdout, fields.stderr
print("smoke ok: ray.data ran a map_batches on a local Ray; `python -m pipeline fields` (pydantic) ran")
"""


# ---------------------------------------------------------------- the device calls

def device_commands() -> list[dict[str, Any]]:
    t1 = ("python3 benchmarks/gpu/stage_wheels.py verify-parts && nvidia-smi -L && "
          "python3 -c 'import torch, pynvml; print(torch.__version__, torch.cuda.get_device_name(0))'")
    t2 = ("set -o pipefail; python3 benchmarks/gpu/stage_wheels.py install --site /tmp/site || exit 1; "
          "export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1; "
          "timeout 545 python3 benchmarks/gpu_pipeline.py --out $OUT --budget-s 490 2>&1 | tee $OUT/log.txt")
    return [{"call": 1, "carry": [CARRY1], "timeout_s": 120, "command": t1},
            {"call": 2, "carry": [CARRY2], "timeout_s": 600, "command": t2}]


def print_commands(_args: argparse.Namespace | None = None) -> None:
    folders = [ROOT / CARRY1, ROOT / CARRY2]
    if all(f.is_dir() for f in folders):
        tree = tree_bytes()
        for i, f in enumerate(folders, 1):
            total = tree + folder_bytes(f)
            state = "ok" if total <= DEVICE_LIMIT else "OVER THE LIMIT: ignore or carry less"
            print(f"call {i}: working tree {tree / 2**20:.1f} MiB + {f.name}/ {folder_bytes(f) / 2**20:.1f} MiB = "
                  f"{total / 2**20:.1f} MiB of {DEVICE_LIMIT / 2**20:.0f} ({state})")
    else:
        print(f"{CARRY1}/ or {CARRY2}/ missing here: run `python benchmarks/gpu/stage_wheels.py download` first")
    print("\nDevice calls, back to back (the second within the 30 s the machine stays warm):")
    for c in device_commands():
        print(f"  run(carry={json.dumps(c['carry'])}, timeout_s={c['timeout_s']},\n"
              f"      command={json.dumps(c['command'])})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("download", help="here: fetch, split and lay out the wheels; print the device calls")
    c = sub.add_parser("check", help="here: join + verify + install into a --target from a copy of the folders")
    c.add_argument("--python", help="also import ray/pydantic/diffusers with this Python 3.12 and run ray.data")
    sub.add_parser("commands", help="print the device calls")
    v = sub.add_parser("verify-parts", help="there: sha256 of the parts present; the image's versions")
    v.add_argument("--base", default=str(ROOT))
    i = sub.add_parser("install", help="there: join, verify, pip install --target")
    i.add_argument("--base", default=str(ROOT))
    i.add_argument("--site", default="/tmp/site")
    i.add_argument("--wheel-dir", default="/tmp/gpu-wheels")
    i.add_argument("--cross", action="store_true", help="install cp312 wheels from another Python (tests)")
    args = p.parse_args(argv)
    {"download": download, "check": check, "commands": print_commands, "verify-parts": verify_parts,
     "install": install}[args.cmd](args)


if __name__ == "__main__":
    main()

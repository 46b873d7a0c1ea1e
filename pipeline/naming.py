"""Output names: a file name for every (id, sample), and t0 in sweeps, safe on any file system or store.

:class:`OutputLayout` is the one place that knows whether names and keys carry t0 (a t0 sweep) and
which file format outputs have: decode (what is done), write, resume, the summary and the sheets
all ask it.

Ids come from users' manifests and may hold slashes, ``..``, spaces, unicode or be very long. A
readable stem is kept where possible; whenever the id had to be changed (or differs only by case,
which case-insensitive file systems would merge), a short hash of the exact id keeps names unique.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MAX_STEM = 80
T0_DECIMALS = 6
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ALREADY_SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def id_hash(item_id: str, length: int = 10) -> str:
    return hashlib.blake2b(item_id.encode("utf-8"), digest_size=16).hexdigest()[:length]


def safe_stem(item_id: str) -> str:
    """``"shirts/Red Shirt #1"`` -> ``"shirts_Red_Shirt_1-3f2a9c01de"``; ``"tshirt-01"`` stays as is."""
    if _ALREADY_SAFE.match(item_id) and ".." not in item_id and len(item_id) <= MAX_STEM:
        return item_id
    ascii_form = unicodedata.normalize("NFKD", item_id).encode("ascii", "ignore").decode("ascii")
    stem = _UNSAFE.sub("_", ascii_form).strip("._-")
    stem = re.sub(r"\.{2,}", ".", stem)[: MAX_STEM - 11].rstrip("._-")
    return f"{stem}-{id_hash(item_id)}" if stem else f"id-{id_hash(item_id)}"


def canonical_t0(t0: float) -> float:
    """t0 rounded to 6 decimals: the form in which t0 values are compared (sweeps, resume keys).

    A t0 from a job file, a CSV cell and a Parquet float may differ in the last bits of a float64;
    rounding makes ``0.3`` from any of them one key, and 6 decimals is far finer than t0 matters.
    """
    return round(float(t0), T0_DECIMALS)


def t0_label(t0: float) -> str:
    """``0.3`` -> ``"0.30"``, ``0.255`` -> ``"0.255"``: at least 2 decimals, as many as tell t0s apart."""
    text = f"{canonical_t0(t0):.{T0_DECIMALS}f}".rstrip("0")
    decimals = len(text.split(".")[1])
    return text + "0" * max(0, 2 - decimals)


def output_name(item_id: str, sample: int, image_format: str, t0: float | None = None) -> str:
    """An output's file name: ``<stem>_s0.png``; ``t0`` is given only in t0 sweeps, where an item has
    one output per t0: ``<stem>_t0.30_s0.png``."""
    middle = "" if t0 is None else f"_t{t0_label(t0)}"  # _t0.30: t and the t0 value
    return f"{safe_stem(item_id)}{middle}_s{sample}.{EXTENSIONS[image_format]}"


def image_relpath(shard: str | None, item_id: str, sample: int, image_format: str, t0: float | None = None) -> str:
    """Path of an output image relative to the output folder: ``images/<shard>/<stem>_s0.png``
    (``shard`` None: ``images/<stem>_s0.png``, the flat layout of outputs written before shards)."""
    folder = IMAGES_DIR if shard is None else f"{IMAGES_DIR}/{shard}"
    return f"{folder}/{output_name(item_id, sample, image_format, t0)}"


def member_key(item_id: str, sample: int, t0: float | None = None) -> str:
    """An output's key inside a WebDataset tar shard: no dots (WebDataset splits a member's name at
    its first dot into key and extension), unique within the shard like the file names."""
    stem = safe_stem(item_id)
    if "." in stem:  # a dot replaced may meet another id's underscore: the id's hash keeps them apart
        stem = f"{stem.replace('.', '_')}-{id_hash(item_id)}"
    middle = "" if t0 is None else f"_t{t0_label(t0).replace('.', 'p')}"
    return f"{stem}{middle}_s{sample}"


IMAGES_DIR = "images"
INPUTS_DIR = "inputs"  # guides and masks the pipeline built (composite and stroke-edit rows)


def input_relpath(shard: str | None, item_id: str, kind: str) -> str:
    """Path of an item's built ``guide`` or ``mask`` relative to the output folder (always PNG):
    ``inputs/<shard>/<stem>_guide.png`` (``shard`` None: ``inputs/<stem>_guide.png``)."""
    folder = INPUTS_DIR if shard is None else f"{INPUTS_DIR}/{shard}"
    return f"{folder}/{safe_stem(item_id)}_{kind}.png"


@dataclass(frozen=True)
class OutputLayout:
    """Where each output of a job lives and what identifies it.

    ``sweep``: a t0 sweep (``sampling.t0`` a list): an item has one output per t0, so names and keys
    carry t0. Outside sweeps they do not: an item whose manifest t0 changed between a run and its
    resume keeps its done output (resume never makes a second output of the same name).
    """

    sweep: bool = False
    image_format: str = "png"
    webdataset: bool = False  # outputs packed into OUT/webdataset/<shard>.tar instead of files under images/

    @classmethod
    def of_job(cls, spec: Mapping[str, Any]) -> OutputLayout:
        """The layout of a job from its spec as plain data (``JobSpec.public_dict()`` or job.json's)."""
        sampling = spec["sampling"]
        sweep = isinstance(sampling["t0"], list) and sampling.get("t0_mode", "sweep") == "sweep"
        output = spec["output"]
        return cls(sweep=sweep, image_format=output["format"], webdataset=bool(output.get("webdataset", False)))

    def key(self, item_id: str, t0: float, sample: int) -> tuple[str, float | None, int]:
        """What names one output, for resume's done-set: (id, t0, sample) in a sweep, else (id, None, sample);
        t0 compared as :func:`canonical_t0`, never as a raw float."""
        return item_id, canonical_t0(t0) if self.sweep else None, sample

    def done_key(self, t0: float, sample: int) -> str:
        """An output of one item as the manifest's ``done`` column lists it (resume inside a shard)."""
        return f"{canonical_t0(t0) if self.sweep else ''}/{sample}"

    def image_path(self, shard: str | None, item_id: str, t0: float, sample: int) -> str:
        """Where the output is, relative to OUT: ``images/<shard>/<name>``, or with WebDataset output
        ``webdataset/<shard>.tar/<member>`` (a member of the shard's tar file)."""
        t0_or_none = t0 if self.sweep else None
        if self.webdataset and shard is not None:
            return f"{WEBDATASET_DIR}/{shard}.tar/{self.member(item_id, t0, sample)}"
        return image_relpath(shard, item_id, sample, self.image_format, t0_or_none)

    def member(self, item_id: str, t0: float, sample: int) -> str:
        """The image's member name in its WebDataset tar shard (the JSON metadata: same key, ``.json``)."""
        return f"{member_key(item_id, sample, t0 if self.sweep else None)}.{EXTENSIONS[self.image_format]}"


WEBDATASET_DIR = "webdataset"


def split_tar_path(image: str) -> tuple[str, str] | None:
    """``webdataset/s.tar/k.png`` -> (``webdataset/s.tar``, ``k.png``); None for a plain file path."""
    head, sep, member = image.partition(".tar/")
    return (head + ".tar", member) if sep else None

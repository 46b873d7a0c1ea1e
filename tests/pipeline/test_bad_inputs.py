"""Bad inputs (issue 5, item 4): each becomes an error row with its reason, or a stated conversion,
while the rest of the job completes; a manifest that cannot be read stops the job before any work.

One run (JSON Lines, so NaN and huge integers reach the reader as such) holds every bad item next to
good ones; each test checks one case from its index. Lost / duplicated are counted over every
(id, sample) the manifest asks for: each must have exactly one index row. The tests that read that
run are ``slow``; the decoding checks and the bad manifests (which stop before any work) are not.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sdedit_testing import SIZE  # the tiny model's sample size

from pipeline.cli import main
from pipeline.images import WorkingSize, guide_pixels, load_image, mask_bits
from pipeline.jobfile import build_spec
from pipeline.run import run_job

pytestmark = pytest.mark.usefixtures("ray_session")
MAX_PIXELS = 5000
UNSAFE_IDS = ["a/b", "../../escape", "..", "/etc/passwd", "Ünïcode ✓ id", "x" * 300, "CON", "tab\tand\nnewline"]


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with one tiny IDAT: a bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _save(img: Image.Image, path: Path, fmt: str = "PNG") -> str:
    img.save(path, format=fmt)
    return path.name


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bad files, the manifest that lists them next to good ones, and an empty sandbox for OUT."""
    root = tmp_path_factory.mktemp("bad")
    d = root / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))  # 900 Mpx claimed in 100 bytes
    (d / "a-dir.png").mkdir()  # exists, but reading it fails: an unreadable file
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[..., :3] = 255  # white under transparent pixels: Pillow's plain convert would show it
    rgba[:, : SIZE // 2, 3] = 255
    rgba[:, : SIZE // 2, :3] = 100
    wide16 = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 257)
    mask_grey = np.tile(np.linspace(0, 255, SIZE).astype(np.uint8), (SIZE, 1))
    mask_big = np.zeros((4 * SIZE, 4 * SIZE), np.uint8)
    mask_big[:, 2 * SIZE:] = 255
    files = {
        "guide": _save(grey, d / "guide.png"),
        "big": _save(Image.new("L", (100, 100), 128), d / "big.png"),
        "palette": _save(grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), d / "palette.png"),
        "rgba-opaque": _save(grey.convert("RGBA"), d / "rgba-opaque.png"),
        "rgba": _save(Image.fromarray(rgba, "RGBA"), d / "rgba.png"),
        "cmyk": _save(grey.convert("RGB").convert("CMYK"), d / "cmyk.jpg", "JPEG"),
        "16bit": _save(Image.fromarray(wide16), d / "16bit.png"),
        "float": _save(Image.fromarray(np.full((SIZE, SIZE), 0.5, np.float32), "F"), d / "float.tiff", "TIFF"),
        "mask-grey": _save(Image.fromarray(mask_grey), d / "mask-grey.png"),
        "mask-big": _save(Image.fromarray(mask_big), d / "mask-big.png"),
    }
    rows: list[dict[str, Any]] = [
        {"id": "good", "guide": files["guide"]},
        {"id": "missing", "guide": "nope.png"},
        {"id": "empty", "guide": "empty.png"},
        {"id": "truncated", "guide": "truncated.png"},
        {"id": "not-an-image", "guide": "text.png"},
        {"id": "bomb", "guide": "bomb.png"},
        {"id": "over-limit", "guide": files["big"]},
        {"id": "unreadable", "guide": "a-dir.png"},
        {"id": "palette", "guide": files["palette"]},
        {"id": "rgba-opaque", "guide": files["rgba-opaque"]},
        {"id": "rgba", "guide": files["rgba"]},
        {"id": "cmyk", "guide": files["cmyk"]},
        {"id": "16bit", "guide": files["16bit"]},
        {"id": "float", "guide": files["float"]},
        {"id": "mask-other-size", "guide": files["guide"], "mask": files["mask-big"]},
        {"id": "mask-grey", "guide": files["guide"], "mask": files["mask-grey"]},
        {"id": "mask-missing", "guide": files["guide"], "mask": "nope-mask.png"},
        {"id": "mask-unreadable", "guide": files["guide"], "mask": "a-dir.png"},
        {"id": "mask-not-an-image", "guide": files["guide"], "mask": "text.png"},
        {"id": "t0-zero", "guide": files["guide"], "t0": 0},
        {"id": "t0-above-1", "guide": files["guide"], "t0": 1.5},
        {"id": "t0-nan", "guide": files["guide"], "t0": float("nan")},
        {"id": "t0-text", "guide": files["guide"], "t0": "half"},
        {"id": "seed-negative", "guide": files["guide"], "seed": -1},
        {"id": "seed-huge", "guide": files["guide"], "seed": 2**64},
        {"id": "seed-nan", "guide": files["guide"], "seed": float("nan")},
        {"id": "seed-fraction", "guide": files["guide"], "seed": 1.5},
        *({"id": unsafe, "guide": files["guide"]} for unsafe in UNSAFE_IDS),
    ]
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))  # NaN is written as NaN
    sandbox = root / "sandbox"
    out = sandbox / "out"
    sandbox.mkdir()
    (sandbox / "neighbour.txt").write_text("must stay alone")
    return {"manifest": manifest, "out": out, "sandbox": sandbox, "ids": [r["id"] for r in rows], "dir": d}


@pytest.fixture(scope="module")
def bad_run(bad_inputs: dict[str, Any], tiny_model: Path, job_data: Any) -> dict[str, Any]:
    """The job over ``bad_inputs``' manifest, and its index."""
    out = bad_inputs["out"]
    data = job_data(tiny_model, bad_inputs["manifest"], out, input={"max_pixels": MAX_PIXELS},
                    resources={"batch_size": 8}, output={"sheet_items": 0})
    summary = run_job(build_spec(data))
    df = pd.read_parquet(out / "index")
    return {**bad_inputs, "summary": summary, "df": df, "by_id": df.set_index(["id", "sample"])}


def _row(bad_run: dict[str, Any], item_id: str) -> Any:
    return bad_run["by_id"].loc[(item_id, 0)]


def _lost_dup(bad_run: dict[str, Any], item_id: str) -> tuple[int, int]:
    rows = bad_run["df"][bad_run["df"].id == item_id]
    return 2 - rows["sample"].nunique(), len(rows) - rows["sample"].nunique()


@pytest.mark.slow
def test_the_job_completes_with_every_row_exactly_once(bad_run: dict[str, Any]) -> None:
    df = bad_run["df"]
    assert bad_run["summary"].exit_code == 3  # some items failed: a scheduler notices
    assert bad_run["summary"].items_with_notes == len(CONVERTED)  # conversions are counted in the summary
    assert sorted(set(df.id)) == sorted(bad_run["ids"]) and len(df) == 2 * len(bad_run["ids"])
    assert not df.duplicated(["id", "sample"]).any()
    assert df[df.status == "error"].image.isna().all()
    assert df[df.status == "ok"].image.map(lambda p: (bad_run["out"] / p).is_file()).all()


ERRORS = [
    ("missing", "missing guide: ", "nope.png not found", "missing guide file"),
    ("empty", "bad guide: ", "empty file (0 bytes)", "empty guide file"),
    ("truncated", "bad guide: ", "cannot decode image", "truncated image"),
    ("not-an-image", "bad guide: ", "cannot decode image (UnidentifiedImageError", "a file that is no image"),
    ("bomb", "bad guide: ", "decompression bomb", "decompression bomb (PNG header claims 30000x30000)"),
    ("over-limit", "bad guide: ", f"100x100 = 10000 pixels, over the limit input.max_pixels={MAX_PIXELS}",
     "image over input.max_pixels"),
    ("unreadable", "unreadable guide: ", "IsADirectoryError", "unreadable guide (read fails)"),
    ("float", "bad guide: ", "mode F refused: 32-bit float pixels have no defined range",
     "32-bit float image (mode F)"),
    ("mask-missing", "missing mask: ", "nope-mask.png not found", "missing mask file"),
    ("mask-unreadable", "unreadable mask: ", "IsADirectoryError", "unreadable mask (read fails)"),
    ("mask-not-an-image", "bad mask: ", "cannot decode image", "mask that is no image"),
    ("t0-zero", "bad override: ", "t0=0 must be in (0, 1]", "per-item t0 = 0"),
    ("t0-above-1", "bad override: ", "t0=1.5 must be in (0, 1]", "per-item t0 = 1.5"),
    ("t0-nan", "bad override: ", "t0=nan must be in (0, 1]", "per-item t0 = NaN"),
    ("t0-text", "bad override: ", "t0='half' is not a number", "per-item t0 not a number"),
    ("seed-negative", "bad override: ", "seed=-1 must be in [0, 2**63)", "per-item seed = -1"),
    ("seed-huge", "bad override: ", f"seed={2**64} must be in [0, 2**63)", "per-item seed = 2^64"),
    ("seed-nan", "bad override: ", "seed=nan is not an integer", "per-item seed = NaN"),
    ("seed-fraction", "bad override: ", "seed=1.5 is not an integer", "per-item seed = 1.5"),
]


@pytest.mark.slow
@pytest.mark.parametrize("item_id, reason, detail, case", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_item_is_an_error_row_with_its_reason(bad_run: dict[str, Any], item_id: str, reason: str,
                                                  detail: str, case: str, record_outcome: Any) -> None:
    row = _row(bad_run, item_id)
    assert row.status == "error" and row.error.startswith(reason) and detail in row.error, row.error
    shown = row.error.replace(f"{bad_run['dir']}/", "")[:110]
    record_outcome(case, f"error row `{shown}`", *_lost_dup(bad_run, item_id))


CONVERTED = [
    ("palette", None, "palette (P) guide"),
    ("rgba-opaque", "guide RGBA: opaque alpha dropped", "RGBA guide, opaque"),
    ("rgba", "guide RGBA: transparency composited onto black", "RGBA guide with transparency"),
    ("cmyk", "guide CMYK converted to RGB (no colour management)", "CMYK JPEG guide"),
    ("16bit", "guide I;16 scaled to 8 bits", "16-bit grey PNG guide"),
    ("mask-other-size", "mask 64x64 resized to the guide's 16x16 (nearest)", "mask of another size"),
    ("mask-grey", "mask not binary: ", "mask that is not binary (grey levels)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("item_id, note, case", CONVERTED, ids=[c[0] for c in CONVERTED])
def test_convertible_item_is_converted_and_stated(bad_run: dict[str, Any], item_id: str, note: str | None,
                                                  case: str, record_outcome: Any) -> None:
    row = _row(bad_run, item_id)
    assert row.status == "ok", row.error
    if note is None:
        assert row.notes is None or "palette" not in row.notes
    else:
        assert note in row.notes, row.notes
    said = f"; notes `{row.notes}`" if row.notes else ""
    record_outcome(case, f"converted, ok rows{said}", *_lost_dup(bad_run, item_id))


def test_conversions_are_sound(bad_inputs: dict[str, Any]) -> None:
    """Pixels, not just notes: 16-bit is scaled (Pillow would clip to white), alpha is composited."""
    d, settings = bad_inputs["dir"], WorkingSize(1, SIZE, SIZE)
    sixteen = guide_pixels(load_image(str(d / "16bit.png"), {}, "guide"), settings)[..., 0]
    expected = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) * 257 + 128) // 257
    np.testing.assert_array_equal(sixteen, np.clip(expected, 0, 255))
    rgba = guide_pixels(load_image(str(d / "rgba.png"), {}, "guide"), settings)[..., 0]
    assert (rgba[:, : SIZE // 2] == 100).all() and (rgba[:, SIZE // 2:] == 0).all()
    grey_mask = load_image(str(d / "mask-grey.png"), {}, "mask")
    notes: list[str] = []
    bits = mask_bits(grey_mask, (SIZE, SIZE), settings, notes)
    assert set(np.unique(bits)) == {0, 1} and (bits == (np.asarray(grey_mask) >= 128)).all()
    assert notes == [f"mask not binary: {SIZE * (SIZE - 2)} of {SIZE * SIZE} pixels grey, thresholded at 128 "
                     "(>= 128 regenerate)"]


@pytest.mark.slow
def test_unsafe_ids_get_safe_names_inside_out(bad_run: dict[str, Any], record_outcome: Any) -> None:
    df, out, sandbox = bad_run["df"], bad_run["out"], bad_run["sandbox"]
    images = (out / "images").resolve()
    for item_id in UNSAFE_IDS:
        rows = df[df.id == item_id]
        assert (rows.status == "ok").all() and len(rows) == 2, item_id
        for rel in rows.image:
            path = (out / rel).resolve()
            assert path.parent.parent == images and path.is_file() and len(path.name) < 100 and path.name.isascii()
    # nothing was written outside OUT, and OUT holds only what the pipeline writes
    assert sorted(p.name for p in sandbox.iterdir()) == ["neighbour.txt", "out"]
    assert {p.relative_to(out).parts[0] for p in out.rglob("*")} <= {"images", "index", "shards", "job.json",
                                                                   "README.md"}
    lost = sum(_lost_dup(bad_run, i)[0] for i in UNSAFE_IDS)
    dup = sum(_lost_dup(bad_run, i)[1] for i in UNSAFE_IDS)
    record_outcome("ids with `/`, `..`, an absolute path, unicode, 300 characters, `CON`, tab and newline",
                   "ok rows; each file a safe ASCII name under OUT/images (hash suffix keeps them unique); "
                   "nothing written outside OUT", lost, dup)


# (file, its content, the message, the case): contents are bytes; None means no file at all.
BAD_MANIFESTS = [
    ("missing.csv", None, "missing.csv does not exist", "manifest that does not exist"),
    ("empty.csv", b"", "empty.csv is empty", "empty manifest file (0 bytes)"),
    ("header-only.csv", b"id,guide\n", "header-only.csv has no rows", "manifest with a header and no rows"),
    ("garbage.parquet", b"PAR1 but not really", "garbage.parquet: cannot read: ArrowInvalid",
     "unreadable manifest (not Parquet)"),
    ("latin1.csv", "id,guide\nä,x.png\n".encode("latin-1"), "latin1.csv: cannot read: UnicodeDecodeError",
     "unreadable manifest (not UTF-8)"),
    ("no-guide.csv", b"id,picture\na,x.png\n", "no-guide.csv lacks column(s) guide",
     "manifest without the guide column"),
    ("no-guide.jsonl", b'{"id": "a", "picture": "x.png"}\n', "no-guide.jsonl lacks column(s) guide",
     "JSON Lines manifest without guide"),
    ("dup.csv", b"id,guide\na,x.png\nb,y.png\na,z.png\nb,w.png\n", "duplicate ids 'a', 'b'", "duplicate ids"),
]


@pytest.mark.parametrize("name, content, message, case", BAD_MANIFESTS, ids=[m[0] for m in BAD_MANIFESTS])
def test_bad_manifests_stop_before_any_work(tmp_path: Path, tiny_model: Path, job_data: Any,
                                            capsys: pytest.CaptureFixture, record_outcome: Any, name: str,
                                            content: bytes | None, message: str, case: str) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    out = tmp_path / f"out-{name}"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_data(tiny_model, tmp_path / name, out)))
    assert main(["run", str(job)]) == 2, name
    err = capsys.readouterr().err
    assert "cannot run" in err and "input.manifest" in err and message in err, err
    assert not (out / "index").exists() and not (out / "images").exists(), name
    record_outcome(case, f"stops before any work, exit 2: `input.manifest: ... {message}`", 0, 0)


def test_oversized_file_is_refused_from_its_size_unread(tmp_path: Path, record_outcome: Any) -> None:
    """A file larger than any image within input.max_pixels can be is refused before it is read."""
    from pipeline.decode import load_image
    from pipeline.storage import FileTooLargeError, read_bytes

    big = tmp_path / "huge.png"
    with open(big, "wb") as f:  # sparse: 64 MiB that cost no disk and must cost no memory
        f.truncate(64 * 2**20)
    with pytest.raises(ValueError, match=r"bad guide: .*huge.png: 67108864 bytes, more than an image of "
                                         r"input.max_pixels=100 pixels can take"):
        load_image(str(big), {}, "guide", max_pixels=100)
    record_outcome("a file larger than any image within input.max_pixels can be (a 64 MiB sparse file, limit "
                   "100 px)", "error row `bad guide: huge.png: 67108864 bytes, more than an image of "
                   "input.max_pixels=100 pixels can take`, refused from its size, unread (unit test)", 0, 0)
    with pytest.raises(FileTooLargeError):
        read_bytes(str(big), limit=10)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 10)
    assert read_bytes(str(small), limit=10) == b"x" * 10

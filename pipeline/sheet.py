"""Contact sheet: one PNG showing, for a sample of items, guide | mask | outputs, read from OUT.

A glance at the sheet answers "did the job do what I meant" before anyone opens the index. It is
built only from what the run wrote (index, images, job.json), so ``sdedit sheet OUT`` can redraw it
later; guides and masks are fitted exactly as the decode stage fitted them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from pipeline.images import WorkingSize, guide_pixels, load_image, mask_bits
from pipeline.index import read_index
from pipeline.naming import OutputLayout, split_tar_path, t0_label
from pipeline.outdir import SHEET_FILE, read_job_record
from pipeline.storage import join_uri, read_bytes, resolve_relative, url_to_fs, write_atomic

TILE = 112
LABEL_W = 150
HEADER_H = 22
MAX_SAMPLE_COLUMNS = 8
TILE_COLUMNS = ["shard", "guide", "mask", "built_guide", "built_mask", "label_name"]  # what input_tiles, labels read


def make_sheet(out_uri: str, *, out_options: Mapping[str, Any] | None = None,
               input_options: Mapping[str, Any] | None = None, items: int = 16) -> str:
    """Draw the contact sheet of up to ``items`` items into ``OUT/sheet.png``; returns its URI."""
    job = read_job_record(out_uri, out_options)
    working, layout = working_size(job), OutputLayout.of_job(job["spec"])
    several_t0 = isinstance(job["spec"]["sampling"]["t0"], list)  # a sweep, or variants at several t0: caption t0
    # Image paths follow from (shard, id, t0, sample): the image column (maybe embedded bytes) is never
    # read; a few index files suffice for a sheet, however many shards the job has.
    table = read_index(out_uri, out_options, columns=["id", "sample", "t0", "status", *TILE_COLUMNS],
                       max_files=8)
    rows = table.to_pylist()
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    ids = sorted(by_id)
    stride = max(1, len(ids) // max(1, items))
    chosen = ids[::stride][:items]
    columns = min(MAX_SAMPLE_COLUMNS, max((len(by_id[i]) for i in chosen), default=1))
    sheet = Image.new("RGB", (LABEL_W + TILE * (2 + columns), HEADER_H + TILE * len(chosen)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    outputs_title = "output {}" if layout.sweep else "sample {}"  # a sweep's tiles are captioned with t0 and sample
    for c, title in enumerate(["guide", "mask (white = edit)", *[outputs_title.format(s) for s in range(columns)]]):
        draw.text((LABEL_W + c * TILE + 4, 4), title, fill="black", font=font)
    for r, item_id in enumerate(chosen):
        top = HEADER_H + r * TILE
        outputs = sorted(by_id[item_id], key=lambda row: (row["sample"], row["t0"] or 0.0))
        first = outputs[0]
        draw_label(draw, top, item_id, first.get("label_name"))
        tiles = list(input_tiles(out_uri, first, working, input_options, out_options))
        tiles += [output_tile(out_uri, row, layout, out_options, caption=several_t0) for row in outputs[:columns]]
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (LABEL_W + c * TILE, top))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    fs, root = url_to_fs(out_uri, out_options)
    write_atomic(fs, join_uri(root, SHEET_FILE), buffer.getvalue())
    return join_uri(out_uri, SHEET_FILE)


def working_size(job: Mapping[str, Any]) -> WorkingSize:
    """The working size and fit of a run, from its job.json record."""
    height, width = (int(v) for v in job["model"]["image_size"])
    return WorkingSize(int(job["model"]["channels"]), height, width, job["spec"]["input"].get("fit", "resize"))


def draw_label(draw: ImageDraw.ImageDraw, top: int, item_id: str, class_name: str | None = None) -> None:
    """An item's row label: its id, and under it the class it was made for (class-conditional jobs)."""
    font = ImageFont.load_default()
    if class_name:
        draw.text((4, top + TILE // 2 - 13), short_label(item_id), fill="black", font=font)
        draw.text((4, top + TILE // 2 + 2), short_label(class_name), fill=(0, 90, 160), font=font)
    else:
        draw.text((4, top + TILE // 2 - 6), short_label(item_id), fill="black", font=font)


def short_label(text: str, limit: int = 22) -> str:
    """A row label that fits beside a tile."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fit_tile(img: Image.Image) -> Image.Image:
    scale = (TILE - 4) / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    tile = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    tile.paste(img.convert("RGB").resize(size, resample), ((TILE - size[0]) // 2, (TILE - size[1]) // 2))
    return tile


def note_tile(text: str, colour: tuple[int, int, int] = (120, 120, 120)) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    ImageDraw.Draw(tile).text((6, TILE // 2 - 6), text, fill=colour, font=ImageFont.load_default())
    return tile


def _guide_tile(uri: str | None, working: WorkingSize, options: Mapping[str, Any] | None) -> Image.Image:
    try:
        pixels = guide_pixels(load_image(uri or "", options or {}, "guide"), working)
    except Exception:  # noqa: BLE001 - an unreadable guide is drawn as a note, not an error
        return note_tile("guide unreadable", (180, 0, 0))
    return _fit_tile(Image.fromarray(pixels[:, :, 0] if working.channels == 1 else pixels))


def _mask_tile(guide_uri: str | None, mask_uri: str | None, working: WorkingSize,
               options: Mapping[str, Any] | None) -> Image.Image:
    if not mask_uri:
        return note_tile("no mask: all edited")
    try:
        guide_size = load_image(guide_uri or "", options or {}, "guide").size
        bits = mask_bits(load_image(mask_uri, options or {}, "mask"), guide_size, working)
    except Exception:  # noqa: BLE001
        return note_tile("mask unreadable", (180, 0, 0))
    return _fit_tile(Image.fromarray(bits * 255))


def input_tiles(out_uri: str, row: Mapping[str, Any], working: WorkingSize,
                input_options: Mapping[str, Any] | None,
                out_options: Mapping[str, Any] | None) -> tuple[Image.Image, Image.Image]:
    """The guide and mask tiles of an index row (which needs :data:`TILE_COLUMNS` read).

    Composite and stroke-edit rows show the guide and mask the run built and recorded in
    OUT/inputs/, exactly as the sampler got them; other rows re-decode their guide and mask URIs
    (as the manifest gave them: relative ones resolve against the manifest their shard came from).
    """
    base = _manifest_of(out_uri, row.get("shard"), out_options)
    if base:
        row = {**row, **{k: resolve_relative(base, row[k]) for k in ("guide", "mask") if row.get(k)}}
    guide = (_built_tile(out_uri, row["built_guide"], out_options) if row["built_guide"]
             else _guide_tile(row["guide"], working, input_options))
    mask = (_built_tile(out_uri, row["built_mask"], out_options) if row["built_mask"]
            else _mask_tile(row["guide"], row["mask"], working, input_options))
    return guide, mask


def _manifest_of(out_uri: str, shard: str | None, options: Mapping[str, Any] | None) -> str | None:
    """The manifest file a shard was cut from (its record's ``source``); None: unknown (older outputs
    recorded resolved URIs)."""
    if shard is None:
        return None
    sources = _SOURCES.get(out_uri)
    if sources is None or shard not in sources:
        from pipeline.finalize import read_records

        sources = _SOURCES[out_uri] = {name: r.get("source", {}).get("uri")
                                       for name, r in read_records(out_uri, options).items()}
    return sources.get(shard)


_SOURCES: dict[str, dict[str, str | None]] = {}  # per output folder: shard -> its manifest


def _built_tile(out_uri: str, relpath: str, options: Mapping[str, Any] | None) -> Image.Image:
    try:
        return _fit_tile(Image.open(io.BytesIO(read_bytes(join_uri(out_uri, relpath), options))))
    except Exception:  # noqa: BLE001 - drawn as a note, like an unreadable guide
        return note_tile("input unreadable", (180, 0, 0))


def read_output(out_uri: str, path: str, options: Mapping[str, Any] | None) -> bytes:
    """An output's bytes: a file under OUT, or a member of a WebDataset tar shard (``x.tar/member``)."""
    in_tar = split_tar_path(path)
    if in_tar is None:
        return read_bytes(join_uri(out_uri, path), options)
    uri = join_uri(out_uri, in_tar[0])
    if uri not in _TARS:  # read once per sheet: a tar has no index to seek by
        import tarfile

        if len(_TARS) >= 4:
            _TARS.pop(next(iter(_TARS)))
        with tarfile.open(fileobj=io.BytesIO(read_bytes(uri, options))) as tar:
            _TARS[uri] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()  # type: ignore[union-attr]
                          if m.isfile() and not m.name.endswith(".json")}
    return _TARS[uri][in_tar[1]]


_TARS: dict[str, dict[str, bytes]] = {}  # the last few tar shards read (their image members)


def output_tile(out_uri: str, row: Mapping[str, Any], layout: OutputLayout,
                options: Mapping[str, Any] | None, caption: bool = False) -> Image.Image:
    """One output's tile; with ``caption`` labelled ``t0 0.30 s0`` (sweep sheets whose header lacks it)."""
    if row["status"] != "ok":
        return note_tile("error", (180, 0, 0))
    path = layout.image_path(row.get("shard"), row["id"], row["t0"], row["sample"])
    try:
        tile = _fit_tile(Image.open(io.BytesIO(read_output(out_uri, path, options))))
    except Exception:  # noqa: BLE001
        return note_tile("image unreadable", (180, 0, 0))
    if caption:
        ImageDraw.Draw(tile).text((3, 1), f"t0 {t0_label(row['t0'])} s{row['sample']}", fill=(200, 0, 0),
                                  font=ImageFont.load_default())
    return tile

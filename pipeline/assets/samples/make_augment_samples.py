"""Regenerate the augmentation sample set: a labelled Parquet manifest as Hugging Face `datasets` writes one.

Usage: python pipeline/assets/samples/make_augment_samples.py   (deterministic; writes augment/ next to itself)

Two real Fashion-MNIST *test* images per class (MIT licence; the first two of each class in file
order), as `augment/train.parquet` with columns `id`, `image` (struct{bytes, path}: PNG bytes, the
layout `datasets` uses for an Image feature, with its `huggingface` schema metadata) and `label`
(the class index; the bundled conditional model's labels.json names them). A second manifest,
`augment/paths.csv`, gives the same items as files + labels by name: both ways are documented in
docs/workflows.md.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
OUT = HERE / "augment"
PER_CLASS = 2
NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def main() -> None:
    sys.path.insert(0, str(HERE.parents[2]))
    from pipeline.quality.dataset import load_split

    images, labels = load_split("test")
    chosen = [i for c in range(10) for i in np.flatnonzero(labels == c)[:PER_CLASS]]
    OUT.mkdir(exist_ok=True)
    ids, cells, rows = [], [], []
    for i in chosen:
        item_id = f"test-{int(i):05d}"
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="PNG")
        name = f"{item_id}.png"
        (OUT / name).write_bytes(buffer.getvalue())
        ids.append(item_id)
        cells.append({"bytes": buffer.getvalue(), "path": name})
        rows.append({"id": item_id, "guide": name, "label": NAMES[int(labels[i])]})
    table = pa.table({
        "id": pa.array(ids, pa.string()),
        "image": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "label": pa.array([int(labels[i]) for i in chosen], pa.int64()),
    })
    features = {"id": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"},
                "label": {"names": list(NAMES), "_type": "ClassLabel"}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, OUT / "train.parquet")
    with open(OUT / "paths.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "guide", "label"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(ids)} items to {OUT}")


if __name__ == "__main__":
    main()

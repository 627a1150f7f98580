"""Helper process for test_durability: enrolls and deletes in a loop, printing each acknowledged write.

A line is printed (and flushed) only after the gallery call returned, i.e. after COMMIT; the
parent kills this process with SIGKILL at an arbitrary point and checks every printed write.
Usage: python tests/_durability_worker.py DATA_DIR FIRST_INDEX
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from embeddings.config import GalleryConfig, IndexConfig
from embeddings.gallery import Gallery

DIM = 16


def vector(i: int) -> np.ndarray:
    """The i-th enrolled vector; the parent regenerates it to search for it."""
    return np.random.default_rng([99, i]).standard_normal(DIM).astype(np.float32)


def main(data_dir: str, first: int) -> None:
    # Small thresholds so background ANN builds and snapshots happen while we are killed.
    index = IndexConfig(ann_threshold=150, snapshot_every=40, nprobe=4096)
    cfg = GalleryConfig(data_dir=Path(data_dir), index=index)
    g = Gallery.open(cfg)
    if not g.list_collections():
        g.create_collection("c")
    i = first
    while True:
        res = g.enroll("c", f"s{i}", vector(i), model_id="m", request_id=f"r{i}")
        print(f"add {i} {res.face_ids[0]}", flush=True)
        if i % 7 == 3:
            g.delete_face("c", res.face_ids[0])
            print(f"del {i} {res.face_ids[0]}", flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))

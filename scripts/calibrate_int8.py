"""Calibrate the encoders' int8 path on real aligned faces (see embeddings/quantize.py).

Each photo of ``--faces`` (``<person>/<n>.png`` with a MANIFEST.csv, default ../shared/faces) is
detected with MTCNN and its best face aligned the way each model expects (a dlib chip for dlib-resnet,
a facenet crop for facenet). The activation parameters and the held-out agreement with fp32 are
written to embeddings/int8_profiles/<model id>.json. One torch thread: the figures are deterministic.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embeddings.config import EncoderConfig  # noqa: E402
from embeddings.detect import FaceDetector  # noqa: E402
from embeddings.encode import create_encoder  # noqa: E402
from embeddings.image import decode_image  # noqa: E402
from embeddings.pipeline import best_face  # noqa: E402
from embeddings.quantize import build_profile, save_profile  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "faces")
    parser.add_argument("--models", default="dlib-resnet,random", help="comma-separated weights names")
    parser.add_argument("--out", type=Path, default=None, help="profile folder (default: the package's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(args.faces / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    detector = FaceDetector()
    found = []
    for row in rows:
        image = decode_image(args.faces / row["path"])
        faces = detector.detect(image)
        if faces:
            found.append((image, best_face(faces), row["identity"]))
    people = [who for _, _, who in found]
    for weights in args.models.split(","):
        start = time.perf_counter()
        encoder = create_encoder(EncoderConfig(weights=weights, precision="fp32"))
        crops = np.concatenate([encoder.align(image, [face]) for image, face, _ in found])
        source = f"{args.faces.name}: best face of each of {len(rows)} photos, {encoder.__class__.__name__}.align"
        profile = build_profile(encoder, crops, people, source=source)
        path = save_profile(profile, args.out)
        summary = {k: profile[k] for k in ("model_id", "calibration", "heldout_cosine_min")}
        print(json.dumps({**summary, "path": str(path), "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()

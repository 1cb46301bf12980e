#!/usr/bin/env python3
"""A larger-image corpus for benches/detect_roi.py (not committed; about 40 MB).

    python3 benches/make_bench_corpus.py [--out target/bench_large] [--count 240]

Crops of the real sources of tests/fixtures/sources.py, resized to 512-1024 px on the long side
(the range of MedTrinity images), one green rectangle each (1-4 px, cv2.rectangle), saved as
JPEG quality 90 (70%) or PNG (30%). Deterministic.
"""
import argparse
import os
import sys

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "fixtures"))
import sources  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "target", "bench_large"))
    ap.add_argument("--count", type=int, default=240)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(11)
    names = [s.name for s in sources.SOURCES]
    for i in range(args.count):
        img = sources.render(names[i % len(names)])
        h, w = img.shape[:2]
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img[y:y + ch, x:x + cw]
        long_side = int(rng.choice([512, 640, 768, 896, 1024]))
        scale = long_side / max(cw, ch)
        crop = cv2.resize(crop, (max(1, round(cw * scale)), max(1, round(ch * scale))),
                          interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        bgr = np.ascontiguousarray(crop[:, :, ::-1])
        H, W = bgr.shape[:2]
        bw, bh = int(W * rng.uniform(0.1, 0.5)), int(H * rng.uniform(0.1, 0.5))
        bx, by = int(rng.integers(2, W - bw - 2)), int(rng.integers(2, H - bh - 2))
        cv2.rectangle(bgr, (bx, by), (bx + bw, by + bh), (0, 255, 0), int(rng.integers(1, 5)))
        if rng.random() < 0.7:
            cv2.imwrite(os.path.join(args.out, f"b{i:04d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        else:
            cv2.imwrite(os.path.join(args.out, f"b{i:04d}.png"), bgr)
    print(f"wrote {args.count} images to {args.out}")


if __name__ == "__main__":
    main()

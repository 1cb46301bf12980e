#!/usr/bin/env python3
"""detect-roi against the seed's OpenCV procedure, side by side in one run.

    python3 benches/detect_roi.py [--images DIR] [--repeat N] [--rounds R]

Both sides read the same files (those directly in DIR, no subfolders) from disk and decode them
(OpenCV: cv2.imread, libjpeg-turbo/libpng; roiscope: its own decoders); roiscope gets the file
list on its command line. OpenCV runs on one thread (cv2.setNumThreads(1)). Each round measures
every row (best of N runs each) and its ratio to the seed procedure of the same round; the table
gives the median over the rounds, so that a busy spell on a shared machine moves one round, not
the result. Prints a table in Markdown for BENCHMARKS.md. Also measures peak memory of
`roiscope detect-roi` over a folder of 2,000 images (the set copied over), which must not grow
with the number of images.
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def seed_roi(path):
    img = cv2.imread(str(path))
    if img is None:
        return None
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    mask = cv2.inRange(hsv, np.array([35, 50, 50]), np.array([85, 255, 255]))
    kernel = np.ones((5, 5), np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    ih, iw = img.shape[:2]
    return [x / iw, y / ih, (x + w) / iw, (y + h) / ih]


def best_of(n, fn):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def roiscope(*args):
    exe = ROOT / "target" / "release" / "roiscope"
    return subprocess.run([str(exe), "detect-roi", "-q", *args], check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peak_rss_mib(cmd):
    """Peak resident memory of a child process, in MiB (ru_maxrss of the finished child)."""
    script = ("import resource,subprocess,sys;"
              "subprocess.run(sys.argv[1:],check=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", script, *cmd], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default=str(ROOT / "tests/fixtures/roi_set"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    ap.add_argument("--rounds", type=int, default=1,
                    help="times the whole table is measured; medians are reported")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in EXTS)
    mpx = sum(cv2.imread(str(p)).shape[0] * cv2.imread(str(p)).shape[1] for p in files) / 1e6
    cv2.setNumThreads(1)
    n = len(files)

    paths = [str(p) for p in files]
    rows = [("OpenCV `cv2.imread` only (decode floor)", 1,
             lambda: [cv2.imread(str(p)) for p in files]),
            ("seed procedure, OpenCV (Python)", 1, lambda: [seed_roi(p) for p in files])]
    for mode, threads in [("robust", 1), ("robust", 2), ("seed", 1), ("seed", 2)]:
        rows.append((f"roiscope detect-roi --mode {mode}", threads,
                     lambda m=mode, t=threads: roiscope("--mode", m, "--threads", str(t), *paths)))

    times = [[] for _ in rows]
    ratios = [[] for _ in rows]
    for r in range(args.rounds):
        measured = [best_of(args.repeat, fn) for _, _, fn in rows]
        for i, t in enumerate(measured):
            times[i].append(t)
            ratios[i].append(measured[1] / t)
        print(f"round {r + 1}: robust 1 thread {ratios[2][-1]:.2f}x the seed procedure", file=sys.stderr)

    print(f"{n} images, {mpx:.1f} Mpx in all, from {args.images}; best of {args.repeat} runs, "
          f"median of {args.rounds} rounds; {os.cpu_count()} cores\n")
    print("| what | threads | seconds | images/s | vs seed (OpenCV) | range over rounds |")
    print("|---|---|---|---|---|---|")
    for (name, threads, _), ts, rs in zip(rows, times, ratios):
        t = statistics.median(ts)
        print(f"| {name} | {threads} | {t:.3f} | {n / t:.0f} | {statistics.median(rs):.2f}x "
              f"| {min(rs):.2f}-{max(rs):.2f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "many"
        big.mkdir()
        copies = 0
        while copies < 2000:
            for p in files:
                if copies >= 2000:
                    break
                shutil.copy(p, big / f"{copies:05d}{p.suffix}")
                copies += 1
        exe = str(ROOT / "target/release/roiscope")
        small = Path(tmp) / "few"
        small.mkdir()
        for p in sorted(big.iterdir())[:200]:
            shutil.copy(p, small / p.name)
        m200 = peak_rss_mib([exe, "detect-roi", "-q", "--threads", "2", str(small)])
        m2000 = peak_rss_mib([exe, "detect-roi", "-q", "--threads", "2", str(big)])
        print(f"\nPeak memory of `roiscope detect-roi --threads 2`: {m200:.1f} MiB on 200 images, "
              f"{m2000:.1f} MiB on 2,000 images.")


if __name__ == "__main__":
    main()

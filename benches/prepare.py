#!/usr/bin/env python3
"""`roiscope prepare` against the seed's `preprocess_dataset`, side by side in one run.

    python3 benches/prepare.py [--records 20000] [--images DIR] [--shared-images N]

Builds a synthetic seed-format raw_data.json of --records records over real images (the
committed ROI test set by default: JPEG and PNG, 224-1024 px, most with a green box). Each record
gets its own image file (a hard link to a pool image under its own name), as in MedTrinity where
every record has its own image; so roiscope writes one marker-free cache PNG per boxed record.
With --shared-images N, all records point at N files instead (for a memory run at 160,000 records
without 160,000 cache files on disk).

Sides, each timed on the same files in the same run:
  seed      the seed's preprocess_dataset (json.load, OpenCV detection per record on one thread,
            json.dump of the kept records), re-typed from the write-up;
  roiscope  `roiscope prepare -j 1` and `-j 2` into a fresh project (detection, marker removal,
            cache PNGs, SQLite, splits, report).
Peak memory is ru_maxrss of each child. Prints Markdown rows for BENCHMARKS.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTS = {".jpg", ".jpeg", ".png"}

SEED = r'''
import json, os, sys
import cv2
cv2.setNumThreads(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detect_roi import seed_roi  # the seed's extract_roi_coords, as timed in detect_roi.py

def extract_roi_coords(image_path):
    try:
        return seed_roi(image_path)
    except Exception as e:
        print(e)
        return None

def preprocess_dataset(raw_data_path, image_dir, output_path):
    with open(raw_data_path, "r", encoding="utf-8") as f:
        data = json.load(f)
    processed = []
    for item in data:
        img_name = item["images"][0].split("/")[-1]
        roi = extract_roi_coords(os.path.join(image_dir, img_name))
        if roi is None:
            continue
        try:
            diag = item["messages"][1]["content"]["extractions"]["Clinical Diagnosis Tips"]
        except (KeyError, TypeError, IndexError):
            continue
        item["roi_coords"] = roi
        item["target_diag"] = diag
        processed.append(item)
    with open(output_path, "w", encoding="utf-8") as f:
        json.dump(processed, f, indent=2, ensure_ascii=False)
    return len(processed)

kept = preprocess_dataset(sys.argv[1], sys.argv[2], sys.argv[3])
print(kept)
'''


def timed_child(cmd):
    """Wall seconds, peak RSS (MiB) and stdout of a child process."""
    script = ("import resource,subprocess,sys,time;t=time.perf_counter();"
              "r=subprocess.run(sys.argv[1:],check=True,capture_output=True,text=True);"
              "w=time.perf_counter()-t;"
              "print(w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
              "print(r.stdout)")
    out = subprocess.run([sys.executable, "-c", script, *cmd], check=True,
                         capture_output=True, text=True).stdout
    first, rest = out.split("\n", 1)
    wall, rss = first.split()
    return float(wall), int(rss) / 1024, rest


def make_dataset(work, pool, n, shared):
    images = work / "mllm_data"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    names = []
    count = shared if shared else n
    for i in range(count):
        src = pool[i % len(pool)]
        name = f"img_{i:06d}{src.suffix}"
        os.link(src, images / name)
        names.append(name)
    modalities = ["CT", "MRI", "Ultrasound", "X-ray", "Endoscopy"]
    organs = ["Liver", "Lung", "Brain", "Kidney"]
    with open(work / "raw_data.json", "w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(n):
            rec = {
                "messages": [
                    {"role": "user", "content": f"<image>Describe the region of interest ({i})."},
                    {"role": "assistant", "content": {"extractions": {
                        "Modality": modalities[i % 5],
                        "Organ": organs[i % 4],
                        "ROI Location": "central",
                        "ROI Size": "about 5% of the image",
                        "Clinical Diagnosis Tips": f"suggestive of finding {i}",
                    }}},
                ],
                "images": [f"mllm_data/{names[i % count]}"],
            }
            f.write(("," if i else "") + json.dumps(rec, ensure_ascii=False) + "\n")
        f.write("]\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--images", default=str(ROOT / "tests/fixtures/roi_set"))
    ap.add_argument("--shared-images", type=int, default=0,
                    help="point all records at this many image files")
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    exe = str(ROOT / "target" / "release" / "roiscope")
    pool = sorted(p for p in Path(args.images).iterdir()
                  if p.suffix.lower() in EXTS and p.is_file())
    work = ROOT / "target" / "bench_prepare"
    work.mkdir(parents=True, exist_ok=True)
    make_dataset(work, pool, args.records, args.shared_images)
    n = args.records
    print(f"{n} records over {args.shared_images or n} image files "
          f"(pool of {len(pool)} from {args.images})\n")
    print("| side | threads | seconds | records/s | extrapolated to 160,000 | peak RSS MiB | kept |")
    print("|---|---|---|---|---|---|---|")
    seed_rate = None
    if not args.skip_seed:
        seed_py = ROOT / "benches" / "_seed_preprocess.py"
        seed_py.write_text(SEED)
        try:
            wall, rss, out = timed_child([sys.executable, str(seed_py),
                                          str(work / "raw_data.json"), str(work / "mllm_data"),
                                          str(work / "seed_out.json")])
        finally:
            seed_py.unlink()
        seed_rate = n / wall
        print(f"| seed preprocess_dataset (OpenCV) | 1 | {wall:.1f} | {seed_rate:.0f} | "
              f"{160000 / seed_rate / 60:.0f} min | {rss:.0f} | {out.strip()} |")
    for t in [int(x) for x in args.threads.split(",")]:
        project = work / f"project_j{t}"
        if project.exists():
            shutil.rmtree(project)
        wall, rss, out = timed_child([exe, "prepare", "--input", str(work / "raw_data.json"),
                                      "--images", str(work), "--project", str(project),
                                      "-q", "--json", "-j", str(t)])
        report = json.loads(out)
        rate = n / wall
        ratio = f" ({rate / seed_rate:.2f}x seed)" if seed_rate else ""
        print(f"| roiscope prepare | {t} | {wall:.1f} | {rate:.0f}{ratio} | "
              f"{160000 / rate / 60:.0f} min | {rss:.0f} | {report['kept']} "
              f"({report['kept_without_box']} without box) |")


if __name__ == "__main__":
    main()

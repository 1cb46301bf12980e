#!/usr/bin/env python3
"""locate -> diagnose -> verify on CPU: `roiscope infer --adapter` against transformers + peft doing
the same steps, side by side in one run; and `roiscope eval` throughput.

    /tmp/venv/bin/python3 benches/infer_pipeline.py [--images 8] [--new-tokens 16] [--threads 2]
                                                    [--exe target/release/roiscope]

Setup (untimed): `roiscope init-model --config tiny` (random weights), the sample project prepared,
`roiscope train --max-steps 2` for a checkpoint (peft adapter + heads.safetensors), and --images
synthetic 448x448 PNGs (benches/qwen3vl.py's make_image; 196 image tokens each).

Per image, both sides do:
  preprocess   image processor and prompt tokens;
  prefill      the prompt through the model (vision tower included), one pass;
  locate       the ROI head on that pass's image-token states (masked attention pooling,
               Linear-ReLU-Linear, sigmoid box with ordered corners);
  decode       greedy tokens with the KV cache (transformers: `generate` with
               output_hidden_states, whose first step is the same prefill);
  verify       the prompt + generated text + <|im_end|>\\n through the model again and the match
               head pooled over every token.
roiscope's images/s = images / the sum of its per-image `timings.total` (the model load is
excluded on both sides). transformers runs in a worker process with torch.set_num_threads(N).
Also printed: the largest difference of the match score and of the box between the two sides
(they load the same weights; a difference means a different computation).

eval throughput: `roiscope eval` on the sample project's val split, records per second.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from qwen3vl import make_image, prompt_string  # noqa: E402

TEXT = "Describe the abnormality in this image."


def worker(args):
    import torch
    torch.set_num_threads(args.threads)
    import tokenizers
    from PIL import Image
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration

    t = time.perf_counter()
    base = Qwen3VLForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, os.path.join(args.checkpoint, "adapter")).eval()
    heads = load_file(os.path.join(args.checkpoint, "heads.safetensors"))
    load_seconds = time.perf_counter() - t
    with open(os.path.join(args.model, "preprocessor_config.json")) as f:
        pp = json.load(f)
    proc = Qwen2VLImageProcessorPil(**{k: v for k, v in pp.items() if k != "image_processor_type"})
    tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    image_id = base.config.image_token_id
    eot = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")

    def pool(prefix, states, mask):
        s = torch.tanh(states @ heads[f"{prefix}.fc1.weight"].T + heads[f"{prefix}.fc1.bias"])
        s = (s @ heads[f"{prefix}.fc2.weight"].T).squeeze(-1)
        s = s.masked_fill(mask == 0, float("-inf"))
        w = torch.softmax(s, dim=1)
        return (w.unsqueeze(-1) * states).sum(1)

    def roi(states, mask):
        p = pool("roi.pool", states, mask)
        h = torch.relu(p @ heads["roi.fc1.weight"].T + heads["roi.fc1.bias"])
        raw = torch.sigmoid(h @ heads["roi.fc2.weight"].T + heads["roi.fc2.bias"])[0]
        x1, y1 = raw[0], raw[1]
        return [float(x1), float(y1), float(x1 + (1 - x1) * raw[2]), float(y1 + (1 - y1) * raw[3])]

    def match(states, mask):
        p = pool("match.pool", states, mask)
        h = torch.relu(p @ heads["match.fc1.weight"].T + heads["match.fc1.bias"])
        return float(torch.sigmoid(h @ heads["match.fc2.weight"].T + heads["match.fc2.bias"]))

    def inputs_for(ids, px):
        ids = torch.tensor([ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": (ids == image_id).to(torch.int64),
                "pixel_values": px["pixel_values"], "image_grid_thw": px["image_grid_thw"]}

    results = []
    for path in args.images:
        with torch.inference_mode():
            t0 = time.perf_counter()
            px = proc(images=[Image.open(path).convert("RGB")], return_tensors="pt")
            n_image = int(px["image_grid_thw"][0].prod()) // (proc.merge_size ** 2)
            prompt = prompt_string(TEXT, n_image)
            inputs = inputs_for(tok.encode(prompt, add_special_tokens=False).ids, px)
            t1 = time.perf_counter()
            out = model.generate(**inputs, do_sample=False, max_new_tokens=args.new_tokens,
                                 output_hidden_states=True, return_dict_in_generate=True,
                                 eos_token_id=im_end)
            t2 = time.perf_counter()
            states = out.hidden_states[0][-1].float()
            box = roi(states, inputs["mm_token_type_ids"])
            t3 = time.perf_counter()
            new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            text = tok.decode([i for i in new if i < eot], skip_special_tokens=False).strip()
            full = tok.encode(prompt + text + "<|im_end|>\n", add_special_tokens=False).ids
            v = inputs_for(full, px)
            # logits_to_keep=1: no LM-head product over every position (roiscope's verify has
            # none either).
            hidden = model(**v, output_hidden_states=True,
                           logits_to_keep=1).hidden_states[-1].float()
            score = match(hidden, v["attention_mask"])
            t4 = time.perf_counter()
        results.append({"image": str(path), "roi": box, "match_score": score, "text": text,
                        "tokens": len(new), "preprocess": t1 - t0, "prefill_and_decode": t2 - t1,
                        "locate": t3 - t2, "verify": t4 - t3, "total": t4 - t0})
    print(json.dumps({"load_seconds": load_seconds, "results": results,
                      "threads": torch.get_num_threads()}))


def run(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{out.stderr}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exe", default=str(ROOT / "target/release/roiscope"))
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--checkpoint")
    ap.add_argument("--image-list", nargs="*", dest="image_paths")
    args = ap.parse_args()
    if args.worker:
        args.images = args.image_paths
        return worker(args)
    exe = args.exe
    work = Path(tempfile.mkdtemp(prefix="bench-infer-"))
    model, project, run_dir = work / "model", work / "project", work / "run"
    sample = ROOT / "assets/sample"
    run([exe, "init-model", "--config", "tiny", "--out", model])
    run([exe, "prepare", "--input", sample / "raw_data.json", "--images", sample,
         "--project", project])
    (work / "t.toml").write_text("batch_size = 2\ngrad_accum = 1\n")
    run([exe, "train", "--project", project, "--model", model, "--out", run_dir,
         "--config", work / "t.toml", "--max-steps", "2"])
    ckpt = run_dir / "checkpoint-2"
    images = []
    for i in range(args.images):
        p = work / f"img{i}.png"
        make_image(p, seed=i)
        images.append(p)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    # roiscope: one process, every image; warm-up image first (untimed).
    run([exe, "infer", "--model", model, "--adapter", ckpt, "--image", images[0], "--json",
         "--prompt", "<image>" + TEXT, "--max-new-tokens", str(args.new_tokens)], env)
    out = run([exe, "infer", "--model", model, "--adapter", ckpt, "--image", *images, "--json",
               "--prompt", "<image>" + TEXT, "--max-new-tokens", str(args.new_tokens)], env)
    ours = [json.loads(l) for l in out.stdout.splitlines()]
    # transformers: warm-up on the first image inside the same worker is not possible with one
    # pass, so the first image is listed twice and its first result dropped.
    wenv = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = run([sys.executable, __file__, "--worker", "--model", model, "--checkpoint", ckpt,
               "--threads", str(args.threads), "--new-tokens", str(args.new_tokens),
               "--image-list", images[0], *images], wenv)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    tr = theirs["results"][1:]
    ours_total = sum(o["timings"]["total"] for o in ours)
    their_total = sum(r["total"] for r in tr)
    d_score = max(abs(o["match_score"] - r["match_score"]) for o, r in zip(ours, tr))
    d_box = max(abs(a - b) for o, r in zip(ours, tr) for a, b in zip(o["roi"], r["roi"]))
    same_text = sum(o["generated"] == r["text"] for o, r in zip(ours, tr))
    n = len(images)
    print(f"| infer (locate+diagnose+verify), tiny, {n} images 448x448, {args.new_tokens} new "
          f"tokens, {args.threads} threads | roiscope {n / ours_total:.2f} images/s | "
          f"transformers {n / their_total:.2f} images/s | {their_total / ours_total:.2f}x |")
    mean = lambda k: sum(o["timings"][k] for o in ours) / n  # noqa: E731
    print(f"  roiscope per image: preprocess {mean('preprocess'):.3f} s, prefill "
          f"{mean('prefill'):.3f}, locate {mean('locate'):.4f}, decode {mean('decode'):.3f}, "
          f"verify {mean('verify'):.3f}")
    tmean = lambda k: sum(r[k] for r in tr) / n  # noqa: E731
    print(f"  transformers per image: preprocess {tmean('preprocess'):.3f} s, prefill+decode "
          f"{tmean('prefill_and_decode'):.3f}, locate {tmean('locate'):.4f}, verify "
          f"{tmean('verify'):.3f}")
    print(f"  agreement: match score max |diff| {d_score:.2e}, box max |diff| {d_box:.2e}, "
          f"same text on {same_text}/{n}")
    # eval throughput on the sample project's val split.
    t = time.perf_counter()
    out = run([exe, "eval", "--project", project, "--model", model, "--adapter", run_dir,
               "--split", "val", "--max-new-tokens", str(args.new_tokens)], env)
    wall = time.perf_counter() - t
    print(f"| eval, sample val split, {args.new_tokens} new tokens | "
          f"{out.stdout.splitlines()[0]} | wall {wall:.1f} s with load |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Qwen3-VL on CPU: `roiscope infer` (candle) against transformers, side by side in one run.

    python3 benches/qwen3vl.py --tiny [--threads 1,2] [--runs 3] [--new-tokens 32] [--attn sdpa]
    python3 benches/qwen3vl.py --2b [--threads 2] [--new-tokens 1] [--attn sdpa]
    python3 benches/qwen3vl.py --tiny --attn sdpa,eager          # both attention kinds
    python3 benches/qwen3vl.py --2b --new-tokens 8               # decode speed too
    python3 benches/qwen3vl.py --2b --new-tokens 8 --roiscope-dtype f32 --sides roiscope
    python3 benches/qwen3vl.py --2b --new-tokens 8 --transformers-dtype f32 --sides transformers
    python3 benches/qwen3vl.py --2b --new-tokens 64 --roiscope-weights q8_0,q4k,bf16,f32 \
        --model-dir /work/models/2b-bf16 --quiet-wait 0 --tries 1   # weight formats (issue 25)

Needs torch (CPU), transformers 5, tokenizers, safetensors, Pillow and numpy. Builds roiscope with
`cargo build --release` first (leave it out with --no-build; --exe picks another binary).

Both sides get the same model folder (`roiscope init-model`, random weights: the numbers are about
speed, not answers), the same synthetic 448x448 PNG and the same prompt string:
    <|im_start|>user\\n<|vision_start|><|image_pad|>*(t*h*w/4)<|vision_end|>TEXT<|im_end|>\\n
    <|im_start|>assistant\\n
(448x448 gives a 1x28x28 patch grid, 784 patches for the vision tower, 196 image tokens).

--tiny   `init-model --config tiny` (f32), --new-tokens greedy tokens, for each --threads value:
         one untimed warm-up run, then the median of --runs runs on each side of
           prefill: the prompt through the vision tower and the language model up to the first
                    token's logits (and its argmax);
           decode:  tokens after the first per second (N-1 tokens over the time from the first
                    token to the last one, each a one-token forward over the KV cache).
         Checks that both sides emit the same greedy token ids: on the timed folder (whose tiny
         random weights make both repeat "\\n") and, first, on a copy with larger, untied weights
         (see rescaled_copy) where the ids wander over the vocabulary; it prints transformers'
         smallest top-1 logit margin so that a difference can be told from a near-tie.
--2b     `init-model --config 2b --bf16` (the Qwen3-VL-2B-Instruct architecture, 2.1 B
         parameters), bf16 on both sides (--roiscope-dtype / --transformers-dtype f32: the same
         bf16 folder widened to f32 at load), one run each with --new-tokens (default 1): load
         time, prefill (the one forward over the image and the text), decode rate when more than
         one token, and peak resident memory of the process. Each side runs alone in its own
         process; a side is stopped after --timeout s. The model folder (4.3 GB) is deleted at
         the end unless --keep.

This machine may be shared: every measurement waits until the CPUs are idle (under 10% busy),
and is taken again (up to --tries times) when other processes used more than 10% of a core
while it ran; the CPU seconds others used are printed with each result.

What is timed, exactly:
  roiscope      `RAYON_NUM_THREADS=N roiscope infer --json`, a new process per run; its own
                timers: prefill_seconds (generate's prefill + the last row's logits, after the image
                is decoded, processed and the prompt tokenised), decode_tokens_per_second, and
                load_seconds (config, tokenizer, safetensors, building the model).
  transformers  a worker process (this file with --worker) that sets OMP/MKL_NUM_THREADS=N and
                `torch.set_num_threads(N)`, loads the model once with
                `Qwen3VLForConditionalGeneration.from_pretrained(dtype=..., attn_implementation=...)`
                (load = that call), makes pixel values with `Qwen2VLImageProcessorPil` (the folder's
                preprocessor_config.json) and input ids with `tokenizers` (the folder's
                tokenizer.json), both untimed, then calls `model.generate(do_sample=False)` with a
                streamer that stamps each new token: prefill = generate's start to the first token,
                decode = first token to last. The prompt length must match roiscope's.
Peak memory is the child's maximum resident set size (`/usr/bin/time -v`, or ru_maxrss).
Prints Markdown rows for BENCHMARKS.md; ratios are roiscope speed / transformers speed (above 1:
roiscope faster).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_PAD = "<|image_pad|>"
TINY_TEXT = "Describe the region of interest in this chest CT image and give its bounding box."
# About 50 tokens, so the text part of the prompt (with the chat template's) is about 64.
LONG_TEXT = ("Look at this medical image carefully. Describe the modality, the organ that is "
             "shown, the location and size of the region of interest marked by the green box, and any "
             "finding that would suggest a diagnosis. Answer in two short sentences, then give the "
             "bounding box.")


# ---------------------------------------------------------------------------------------------
# shared helpers


def prompt_string(text, n_image_tokens):
    return ("<|im_start|>user\n<|vision_start|>" + IMAGE_PAD * n_image_tokens
            + f"<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")


def make_image(path, w=448, h=448, seed=7):
    """Smooth colour gradients, a few bright rectangles, a green box and mild noise."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([40 + 150 * x / w, 60 + 120 * y / h,
                    90 + 70 * np.sin(2 * np.pi * (x / w + y / h))], axis=-1)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 64), rng.integers(0, h - 64)
        x1, y1 = x0 + rng.integers(16, 64), y0 + rng.integers(16, 64)
        img[y0:y1, x0:x1] = rng.integers(150, 256, size=3)
    img[120:124, 100:300] = img[260:264, 100:300] = (0, 255, 0)
    img[120:264, 100:104] = img[120:264, 296:300] = (0, 255, 0)
    img += rng.normal(0, 6, size=img.shape)
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB").save(path)


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy since boot (from /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class TimedOut(Exception):
    pass


def run_group(cmd, env, timeout):
    """subprocess.run in its own process group, the whole group killed after `timeout` s."""
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise TimedOut(f"{cmd} ran past {timeout} s and was stopped")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def timed_child(cmd, env=None, timeout=None):
    """stdout, wall seconds, peak RSS (MiB) of a child process, and the CPU seconds that other
    processes used meanwhile (the machine's busy time less the child's user + system time)."""
    full_env = dict(os.environ, **(env or {}))
    busy0 = busy_cpu_seconds()
    if os.path.exists("/usr/bin/time"):
        with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
            t = time.perf_counter()
            r = run_group(["/usr/bin/time", "-v", "-o", tf.name, *cmd], full_env, timeout)
            wall = time.perf_counter() - t
            report = dict(line.strip().rsplit(": ", 1) for line in open(tf.name)
                          if ": " in line)
        if r.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr[-3000:]}")
        rss = int(report["Maximum resident set size (kbytes)"]) / 1024
        cpu = float(report["User time (seconds)"]) + float(report["System time (seconds)"])
        out = r.stdout
    else:
        script = ("import resource,subprocess,sys,time;t=time.perf_counter();"
                  "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
                  "w=time.perf_counter()-t;u=resource.getrusage(resource.RUSAGE_CHILDREN);"
                  "sys.stderr.write(r.stderr);"
                  "print(r.returncode,w,u.ru_maxrss,u.ru_utime+u.ru_stime);"
                  "print(r.stdout,end='')")
        r = run_group([sys.executable, "-c", script, *cmd], full_env, timeout)
        first, out = r.stdout.split("\n", 1)
        rc, wall, rss, cpu = first.split()
        if int(rc) != 0:
            raise RuntimeError(f"{cmd[0]} failed ({rc}):\n{r.stderr[-3000:]}")
        wall, rss, cpu = float(wall), int(rss) / 1024, float(cpu)
    busy1 = busy_cpu_seconds()
    foreign = None if busy0 is None else max(0.0, busy1 - busy0 - cpu)
    return out, wall, rss, foreign


def measured(cmd, env, tries, timeout=None):
    """timed_child after the CPUs are quiet, again (up to `tries` times in all) when other
    processes took more than 10% of one core during the run; returns the last result."""
    for attempt in range(tries):
        wait_quiet()
        out, wall, rss, foreign = timed_child(cmd, env, timeout)
        if foreign is None or foreign <= 0.10 * wall:
            break
        print(f"  note: other processes used {foreign:.1f} CPU s during a {wall:.1f} s run"
              + (", measuring again" if attempt + 1 < tries else ", kept"), file=sys.stderr)
    res = last_json(out)
    res["wall"], res["rss"], res["foreign_cpu"] = wall, rss, foreign
    return res


def last_json(stdout):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# ---------------------------------------------------------------------------------------------
# the transformers side (runs in its own process)


def worker(args):
    t_start = time.perf_counter()
    n = args.threads
    import torch
    torch.set_num_threads(n)
    import tokenizers
    import transformers
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer
    import_seconds = time.perf_counter() - t_start

    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t = time.perf_counter()
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        args.model, dtype=dtype, attn_implementation=args.attn).eval()
    load_seconds = time.perf_counter() - t

    with open(os.path.join(args.model, "preprocessor_config.json")) as f:
        pp = json.load(f)
    proc = Qwen2VLImageProcessorPil(**{k: v for k, v in pp.items() if k != "image_processor_type"})
    tok = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    px = proc(images=[Image.open(args.image).convert("RGB")], return_tensors="pt")
    grid = px["image_grid_thw"]
    n_image = int(grid[0].prod()) // (proc.merge_size ** 2)
    ids = tok.encode(prompt_string(args.text, n_image), add_special_tokens=False).ids
    image_id = model.config.image_token_id
    assert ids.count(image_id) == n_image
    input_ids = torch.tensor([ids])
    inputs = {"input_ids": input_ids,
              "attention_mask": torch.ones_like(input_ids),
              "mm_token_type_ids": (input_ids == image_id).to(torch.int64),
              "pixel_values": px["pixel_values"].to(dtype),
              "image_grid_thw": grid}

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times = []
            self.prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate hands the prompt over first
                self.prompt_seen = True
                return
            self.times.append(time.perf_counter())

        def end(self):
            pass

    runs = []
    for i in range(args.warmup + args.runs):
        s = Stamps()
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.generate(**inputs, do_sample=False, max_new_tokens=args.new_tokens,
                                 streamer=s, output_scores=args.margins,
                                 return_dict_in_generate=True)
        new = out.sequences[0, input_ids.shape[1]:].tolist()
        assert len(s.times) == len(new), (len(s.times), len(new))
        prefill = s.times[0] - t
        decode = s.times[-1] - s.times[0]
        run = {"prefill_seconds": prefill, "token_ids": new,
               "decode_tokens_per_second": (len(new) - 1) / decode if len(new) > 1 else None}
        if args.margins:  # gap between the best and the second-best logit at each step
            run["margins"] = [float(v[0] - v[1]) for v in
                              (torch.topk(sc[0].float(), 2).values for sc in out.scores)]
        if i >= args.warmup:
            runs.append(run)
    print(json.dumps({
        "import_seconds": import_seconds, "load_seconds": load_seconds,
        "prompt_tokens": len(ids), "image_grid_thw": grid.tolist(), "runs": runs,
        "threads": torch.get_num_threads(), "attn": model.config._attn_implementation,
        "transformers": transformers.__version__, "torch": torch.__version__,
    }))


# ---------------------------------------------------------------------------------------------
# the driver


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), or 0 where it cannot tell."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return 0.0
    return 1 - (i1 - i0) / max(1, t1 - t0)


QUIET_WAIT = 900


def wait_quiet(limit=None):
    limit = QUIET_WAIT if limit is None else limit
    if limit <= 0:
        return None
    """Waits (up to `limit` s) until other processes use under 10% of the CPUs, so that a busy
    neighbour (a compiler, a test run) does not end up in the numbers; says so if it never is."""
    start = time.time()
    busy = cpu_busy()
    while busy > 0.10 and time.time() - start < limit:
        busy = cpu_busy(5.0)
    if busy > 0.10:
        print(f"  warning: CPUs {busy:.0%} busy before a measurement", file=sys.stderr)
    return busy


def run_transformers(model, image, text, threads, new_tokens, runs, warmup, attn, dtype,
                     margins=False, tries=3, timeout=None):
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return measured(
        [sys.executable, __file__, "--worker", "--model", str(model), "--image", str(image),
         "--text", text, "--threads", str(threads), "--new-tokens", str(new_tokens),
         "--runs", str(runs), "--warmup", str(warmup), "--attn", attn, "--dtype", dtype]
        + (["--margins"] if margins else []), env, tries, timeout)


def run_roiscope(exe, model, image, text, threads, new_tokens, weights, tries=3, timeout=None):
    cmd = [exe, "infer", "--model", str(model), "--image", str(image), "--prompt", text,
           "--max-new-tokens", str(new_tokens), "--json", "--weights", weights]
    return measured(cmd, {"RAYON_NUM_THREADS": str(threads)}, tries, timeout)


def median(xs):
    return statistics.median(xs)


def init_model(exe, config, out, bf16):
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    subprocess.run([exe, "init-model", "--config", config, "--out", str(out)]
                   + (["--bf16"] if bf16 else []), check=True)
    return time.perf_counter() - t


def rescaled_copy(src, dst):
    """The same model with weights large enough that every layer moves the logits, untied.

    init-model's weights (std 0.02, tied embeddings) leave the residual stream close to the last
    token's embedding, so greedy decoding of either implementation repeats the prompt's last token
    ("\\n" 32 times) and agreeing on it proves little; with larger weights but still tied it
    repeats one other token. Here matrices get std min(0.2, 1.6/sqrt(fan_in)) and the embedding
    std 0.5 (as tests/fixtures/make_qwen3vl_fixtures.py does), by rescaling the same random
    numbers, and the output head is its own seeded normal matrix (std 0.5,
    tie_word_embeddings false); norms and biases are unchanged. Greedy ids then wander over the
    vocabulary with top-1 margins down to a few hundredths.
    """
    import numpy as np
    from safetensors.numpy import load_file, save_file
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    for name, t in tensors.items():
        if t.ndim < 2:
            continue
        std = float(t.std())
        target = 0.5 if name.endswith("embed_tokens.weight") else \
            min(0.2, 1.6 / float(np.prod(t.shape[1:])) ** 0.5)
        tensors[name] = (t * (target / std)).astype(t.dtype)
    embed = tensors["model.language_model.embed_tokens.weight"]
    rng = np.random.default_rng(1)
    tensors["lm_head.weight"] = (rng.standard_normal(embed.shape) * 0.5).astype(embed.dtype)
    with open(dst / "config.json") as f:
        config = json.load(f)
    config["tie_word_embeddings"] = config["text_config"]["tie_word_embeddings"] = False
    with open(dst / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})


def compare_ids(exe, model, image, n, attn):
    ours = run_roiscope(exe, model, image, TINY_TEXT, 1, n, "f32")
    hf = run_transformers(model, image, TINY_TEXT, 1, n, 1, 0, attn, "f32", margins=True)
    a, b = ours["token_ids"], hf["runs"][0]["token_ids"]
    margins = hf["runs"][0]["margins"]
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return a, b, first, margins


def tiny(args, exe, work, image):
    model = work / "tiny"
    init_model(exe, "tiny", model, False)
    n = args.new_tokens
    attn0 = args.attn.split(",")[0]
    checked = work / "tiny_rescaled"
    rescaled_copy(model, checked)
    a, b, first, margins = compare_ids(exe, checked, image, n, attn0)
    print(f"greedy ids, tiny model with rescaled weights ({n} tokens, 1 thread, {attn0}): "
          + ("identical" if first is None else f"DIFFER from position {first}"))
    print(f"  roiscope     {a}\n  transformers {b}")
    print(f"  transformers' top-1 margin: smallest {min(margins):.4f}"
          + ("" if first is None or first >= len(margins) else
             f", at the first difference {margins[first]:.4f}") + "\n")
    if not args.keep:
        shutil.rmtree(checked)
    print(f"tiny model (f32), 448x448 image, {n} new tokens, median of {args.runs} runs after "
          "one warm-up per side\n")
    rows = []
    mismatches = []
    for attn in args.attn.split(","):
        for threads in [int(x) for x in args.threads.split(",")]:
            hf = run_transformers(model, image, TINY_TEXT, threads, n, args.runs, 1, attn, "f32",
                                  tries=args.tries)
            ours = [run_roiscope(exe, model, image, TINY_TEXT, threads, n, "f32", tries=args.tries)
                    for _ in range(args.runs + 1)][1:]
            assert all(o["prompt_tokens"] == hf["prompt_tokens"] for o in ours), \
                (ours[0]["prompt_tokens"], hf["prompt_tokens"])
            ids_ours = ours[0]["token_ids"]
            ids_hf = hf["runs"][0]["token_ids"]
            same = ids_ours == ids_hf
            if not same:
                mismatches.append((attn, threads, ids_ours, ids_hf))
            r_pre = median(o["prefill_seconds"] for o in ours)
            r_dec = median(o["decode_tokens_per_second"] for o in ours)
            h_pre = median(r["prefill_seconds"] for r in hf["runs"])
            h_dec = median(r["decode_tokens_per_second"] for r in hf["runs"])
            rows.append((attn, threads, r_pre, h_pre, r_dec, h_dec, len(ids_ours), len(ids_hf),
                         same, ours[0]["prompt_tokens"]))
            print(f"  [{attn}, {threads} thread(s)] roiscope prefill "
                  f"{[round(o['prefill_seconds'], 4) for o in ours]} decode "
                  f"{[round(o['decode_tokens_per_second'], 1) for o in ours]}; transformers "
                  f"prefill {[round(r['prefill_seconds'], 4) for r in hf['runs']]} decode "
                  f"{[round(r['decode_tokens_per_second'], 1) for r in hf['runs']]}; CPU s used "
                  f"by other processes: {[round(o['foreign_cpu'] or 0, 2) for o in ours]}, "
                  f"{round(hf['foreign_cpu'] or 0, 2)}", file=sys.stderr)
    print(f"prompt: {rows[0][9]} tokens (196 image tokens); versions: transformers "
          f"{hf['transformers']}, torch {hf['torch']}\n")
    print("| threads | transformers attention | prefill s, roiscope | prefill s, transformers "
          "| prefill ratio | decode tok/s, roiscope | decode tok/s, transformers | decode ratio "
          "| new tokens (ours/theirs) | same greedy ids |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for attn, threads, r_pre, h_pre, r_dec, h_dec, n_o, n_h, same, _ in rows:
        print(f"| {threads} | {attn} | {r_pre:.4f} | {h_pre:.4f} | {h_pre / r_pre:.2f}x | "
              f"{r_dec:.1f} | {h_dec:.1f} | {r_dec / h_dec:.2f}x | {n_o}/{n_h} | "
              f"{'yes' if same else 'NO'} |")
    for attn, threads, a, b in mismatches:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        print(f"\nids differ ({attn}, {threads} threads) from position {first}:\n"
              f"  roiscope     {a}\n  transformers {b}")
    if not args.keep:
        shutil.rmtree(model)


def two_b(args, exe, work, image):
    model = Path(args.model_dir) if args.model_dir else work / "qwen3vl-2b-bf16"
    if args.model_dir:
        args.keep = True
    elif not (model / "model.safetensors").exists():
        secs = init_model(exe, "2b", model, True)
        print(f"init-model --config 2b --bf16: {secs:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in model.iterdir() if p.is_file()) / 2**30
    threads = int(args.threads.split(",")[-1])
    attn = args.attn.split(",")[-1]
    n = args.new_tokens
    formats = (args.roiscope_weights or args.roiscope_dtype).split(",")
    print(f"Qwen3-VL-2B architecture, random weights, bf16 ({size:.2f} GiB on disk), "
          "448x448 image, "
          f"{n} new token(s), {threads} threads, one run per side; roiscope weights "
          f"{', '.join(formats)} (f32 activations), transformers in {args.transformers_dtype}\n")
    sides = {}
    order = []
    for side in args.sides.split(","):
        order += [f"roiscope:{f}" for f in formats] if side == "roiscope" else [side]
    for side in order:
        try:
            if side.startswith("roiscope"):
                res = run_roiscope(exe, model, image, LONG_TEXT, threads, n, side.split(":")[1],
                                   tries=args.tries, timeout=args.timeout)
                res["prefill"] = res["prefill_seconds"]
                res["decode"] = res["decode_tokens_per_second"]
            else:
                res = run_transformers(model, image, LONG_TEXT, threads, n, 1, 0, attn,
                                       args.transformers_dtype,
                                       tries=args.tries, timeout=args.timeout)
                res["prefill"] = res["runs"][0]["prefill_seconds"]
                res["token_ids"] = res["runs"][0]["token_ids"]
                res["decode"] = res["runs"][0]["decode_tokens_per_second"]
        except TimedOut as e:
            print(f"{side}: {e}")
            continue
        sides[side] = res
        print(f"  {side}: {json.dumps({k: v for k, v in res.items() if k != 'text'})}",
              file=sys.stderr)
    if not sides:
        return
    any_side = next(iter(sides.values()))
    n_image = 196
    versions = ""
    if "transformers" in sides:
        hf = sides["transformers"]
        versions = (f"; transformers {hf['transformers']} (attn_implementation={hf['attn']}), "
                    f"torch {hf['torch']}")
    for k, v in sides.items():
        assert v["prompt_tokens"] == any_side["prompt_tokens"], k
    print(f"prompt: {any_side['prompt_tokens']} tokens ({n_image} image tokens, "
          f"{any_side['prompt_tokens'] - n_image} text and template){versions}\n")
    dec_head, dec_rule = (" decode tok/s |", "---|") if n > 1 else ("", "")
    print(f"| side | load s | prefill s (one forward) |{dec_head} process wall s | peak RSS MiB "
          "| other processes' CPU s |")
    print(f"|---|---|---|{dec_rule}---|---|---|")
    def name(side):
        if side.startswith("roiscope"):
            return f"roiscope infer --weights {side.split(':')[1]}"
        return f"transformers, {args.transformers_dtype}"
    for side, r in sides.items():
        extra = f" (imports {r['import_seconds']:.1f})" if side == "transformers" else ""
        dec = f" {r['decode']:.2f} |" if n > 1 else ""
        print(f"| {name(side)} | {r['load_seconds']:.2f} | {r['prefill']:.2f} |{dec} "
              f"{r['wall']:.1f}{extra} | {r['rss']:.0f} | {r['foreign_cpu'] or 0:.1f} |")
    h = sides.get("transformers")
    for side, o in sides.items():
        if h is None or side == "transformers":
            continue
        dec = f" {o['decode'] / h['decode']:.2f}x |" if n > 1 else ""
        print(f"| {name(side)} vs transformers (speed; memory) | "
              f"{h['load_seconds'] / o['load_seconds']:.2f}x "
              f"| {h['prefill'] / o['prefill']:.2f}x |{dec} {h['wall'] / o['wall']:.2f}x "
              f"| {o['rss'] / h['rss']:.2f}x as much |  |")
    print("\ntokens: " + ", ".join(f"{k} {v['token_ids']}" for k, v in sides.items()))
    if not args.keep:
        shutil.rmtree(model)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--tiny", action="store_true", help="tiny model, prefill and decode")
    which.add_argument("--2b", dest="two_b", action="store_true",
                       help="Qwen3-VL-2B architecture in bf16: load, prefill, memory")
    which.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default=None, help="comma list (default 1,2 tiny; 2 for 2b)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=None,
                    help="greedy tokens to generate (default 32 for --tiny, 1 for --2b)")
    ap.add_argument("--roiscope-dtype", default="bf16", choices=["bf16", "f32"],
                    help="--2b: roiscope --weights (f32: the bf16 weights widened at load)")
    ap.add_argument("--roiscope-weights", default=None,
                    help="--2b: comma list of roiscope --weights formats (f32, bf16, q8_0, q4k)")
    ap.add_argument("--model-dir", default=None,
                    help="--2b: an existing model folder (used read-only, never deleted)")
    ap.add_argument("--quiet-wait", type=int, default=900,
                    help="seconds to wait for idle CPUs before a measurement (0: do not wait)")
    ap.add_argument("--transformers-dtype", default="bf16", choices=["bf16", "f32"],
                    help="--2b: compute dtype of transformers")
    ap.add_argument("--attn", default="sdpa", help="transformers attention (sdpa, eager, or both)")
    ap.add_argument("--exe", default=str(ROOT / "target" / "release" / "roiscope"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "roiscope_bench_qwen3vl"))
    ap.add_argument("--keep", action="store_true", help="keep the model folders")
    ap.add_argument("--sides", default="roiscope,transformers", help="--2b: which sides to run")
    ap.add_argument("--tries", type=int, default=3,
                    help="measure again (up to this many times) when other processes took "
                         "over 10%% of a core during a run")
    ap.add_argument("--timeout", type=int, default=900,
                    help="--2b: stop a side after this many seconds")
    # worker-only
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--text", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="f32", help=argparse.SUPPRESS)
    ap.add_argument("--margins", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = int(args.threads)
        return worker(args)
    if not (args.tiny or args.two_b):
        ap.error("pick --tiny or --2b")
    if args.threads is None:
        args.threads = "1,2" if args.tiny else "2"
    global QUIET_WAIT
    QUIET_WAIT = args.quiet_wait
    if args.new_tokens is None:
        args.new_tokens = 32 if args.tiny else 1
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    image = work / "synthetic_448.png"
    make_image(image)
    if args.tiny:
        tiny(args, args.exe, work, image)
    else:
        two_b(args, args.exe, work, image)


if __name__ == "__main__":
    main()

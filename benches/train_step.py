#!/usr/bin/env python3
"""One training step: `roiscope train` (candle) against the seed's PyTorch + transformers + peft
pipeline on CPU, side by side; and a memory estimate of LoRA training of Qwen3-VL-2B on a 12 GB GPU.

    python3 benches/train_step.py                       # tiny config, 1 and 2 threads
    python3 benches/train_step.py --threads 2 --steps 30 --warmup 5
    python3 benches/train_step.py --seed-pad 1024       # also the seed as written (pads to 1024)
    python3 benches/train_step.py --estimate-2b         # the 12 GB table, checked against
                                                        # roiscope's peak RSS on tiny and small
    python3 benches/train_step.py --model-config 2b --dtype bf16 --threads 2 --steps 3 \
        --warmup 1 --checkpointing                      # the real 2B architecture, both sides
                                                        # with activation recompute

Needs torch (CPU), transformers 5, peft, tokenizers, Pillow and numpy; builds roiscope with
`cargo build --release` first unless --no-build (--exe picks the binary). Measurement helpers
(waiting for idle CPUs, peak RSS, others' CPU time) come from benches/qwen3vl.py.

The data (the same on both sides):
  --records synthetic --size x --size images (benches/qwen3vl.py's make_image with seeds 100...:
  gradients, bright rectangles, a green box, noise), PNG, in a seed-format raw_data.json whose
  records all ask QUESTION and answer ANSWER with different two-digit numbers (every answer has
  the same number of tokens, so every batch has the same shape). roiscope: `roiscope prepare
  --split 100,0,0` into a project (all records in the train split; it trains on the cache copy
  with the green outline removed: same size); the seed: the original PNGs.
  448x448 gives a 28x28 patch grid (784 patches of 1536 values per image), 196 image tokens.

The model: `roiscope init-model --config tiny` (f32, random weights), the same folder on both
sides; LoRA r 8, alpha 32, dropout 0.05 on q_proj, v_proj, gate_proj of the text layers (the
vision tower has none of those names); f32 everywhere; batch 2, no gradient accumulation; no
gradient checkpointing on either side (roiscope has none; the seed turns it on for its 12 GB GPUs,
here it is off so that both keep the same activations).

roiscope side: `RAYON_NUM_THREADS=N roiscope train --project P --model M --out RUN --config
  cfg.toml` (batch_size 2, grad_accum 1, max_steps --steps, negative_ratio --negative-ratio,
  default 0.3 as the seed: roiscope draws each sample as a negative with probability 0.3, so
  about 30% of samples are negatives; the seed's int(2 * 0.3) = 0 gives none). Step time: the
  median interval between consecutive `step` events' `time` in RUN/metrics.jsonl after the first
  --warmup steps. Each interval is the whole step: reading and processing the two images,
  tokenising, forward, backward, AdamW and clipping. Peak RSS of the process.
seed side: a worker process (this file with --worker) with OMP/MKL_NUM_THREADS=N and
  torch.set_num_threads(N) that builds the seed's model as the seed does:
  Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=float32) (attention: transformers'
  default, sdpa; the seed asks for flash_attention_2, which has no CPU kernel),
  peft.get_peft_model(LoraConfig(r=8, lora_alpha=32, target_modules=[self_attn.q_proj,
  self_attn.v_proj, mlp.gate_proj], lora_dropout=0.05, task_type=CAUSAL_LM)), the seed's
  Qwen3VLMultiTask (SpatialAttentionPooling over the whole sequence, roi_head, match_head,
  loss_log_vars) over the text hidden size, in train mode; the loss as in the seed's
  MultiTaskTrainer.compute_loss (its text gives the fragments, not the body: the LM loss from
  transformers' `labels` = input ids with padding masked, as MedDataCollator makes them; ROI
  SmoothL1 over rows whose roi_coords are not -1; the focal loss with the x10
  `false_negative_penalty`; the learned uncertainty weighting), torch.optim.AdamW (lr 2e-5,
  Trainer's defaults), clipping at 1.0 and a cosine schedule with warmup as Trainer does. Each
  step it does what the seed's Trainer loop does with its default single-process DataLoader:
  open the two images (PIL), Qwen2VLImageProcessorPil (the folder's preprocessor_config.json),
  tokenise (`tokenizers`, the folder's tokenizer.json) in roiscope's chat layout
  (src/model/tokenizer.rs `chat`), collate as MedDataCollator (0 negatives at batch 2), then
  forward, backward, clip, AdamW step, zero_grad. It reports the whole step and each phase;
  median over the steps after --warmup. Peak RSS of the process (imports included).
  Departures from the seed, both for like-for-like: the seed appends "\\nFocus on the region
  of interest." to the question and pads every sample to 1024 tokens (padding="max_length");
  here the texts are roiscope's and unpadded (--seed-pad 1024 adds a row for the seed as written);
  its forward passes mm_token_type_ids on to the model, which transformers 5 requires for M-RoPE.

Each measurement waits for idle CPUs and is taken again (up to --tries) when other processes used
over 10% of a core meanwhile. Prints Markdown rows; ratios are seed time / roiscope time (above 1:
roiscope faster) and roiscope memory / seed memory (below 1: roiscope smaller).

--estimate-2b  prints the memory model (see `activation_items` and `estimate`) for the
  Qwen3-VL-2B config (`roiscope init-model --config 2b` writes it; the sizes below are read from
  the config.json that command writes, or from --config-json) on one 12 GB GPU (bf16 base
  weights, f32 LoRA, heads, task weights and AdamW moments, batch 2, 448x448 and 672x672 images
  with ~100 text tokens), and checks the same formula (f32 weights) against roiscope's measured
  peak RSS when training the tiny and small configs on CPU (unless --no-check).
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwen3vl import (ROOT, TimedOut, init_model, make_image, timed_child,  # noqa: E402
                     wait_quiet)

QUESTION = "<image>Describe the abnormality in this chest CT image of the lungs and where it lies."
ANSWER = ("Suggestive of a {a}{b} mm solid nodule in segment {c} of the left lower lobe, "
          "without pleural effusion or lymph node enlargement.")
PAD_ID, IMAGE_ID = 151643, 151655  # <|endoftext|>, <|image_pad|>
LORA = dict(r=8, lora_alpha=32, lora_dropout=0.05,
            target_modules=["self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj"])
MIB = 2**20
GIB = 2**30


# ---------------------------------------------------------------------------------------------
# data


def make_data(exe, work, records, size):
    """Synthetic images, a seed-format raw_data.json and a roiscope project over them."""
    data = work / "data"
    project = work / "project"
    for p in (data, project):
        if p.exists():
            shutil.rmtree(p)
    (data / "images").mkdir(parents=True)
    raw = []
    for i in range(records):
        name = f"images/bench_{i:03d}.png"
        make_image(data / name, size, size, seed=100 + i)
        answer = ANSWER.format(a=1 + i % 9, b=(3 * i) % 10, c=1 + (i // 9) % 9)
        raw.append({"messages": [{"role": "user", "content": QUESTION},
                                 {"role": "assistant",
                                  "content": {"extractions": {"Clinical Diagnosis Tips": answer}}}],
                    "images": [name]})
    with open(data / "raw_data.json", "w") as f:
        json.dump(raw, f, indent=1)
    subprocess.run([exe, "prepare", "--input", str(data / "raw_data.json"), "--images", str(data),
                    "--project", str(project), "--split", "100,0,0", "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    return data, project


# ---------------------------------------------------------------------------------------------
# the seed's side (runs in its own process)


def seed_modules(torch):
    """The seed's SpatialAttentionPooling and Qwen3VLMultiTask, as written (the forward passes
    mm_token_type_ids on: transformers 5 needs it for M-RoPE)."""

    class SpatialAttentionPooling(torch.nn.Module):
        def __init__(self, hidden_size):
            super().__init__()
            self.attn = torch.nn.Sequential(
                torch.nn.Linear(hidden_size, 512),
                torch.nn.Tanh(),
                torch.nn.Linear(512, 1),
                torch.nn.Softmax(dim=1))

        def forward(self, hidden_states):
            weights = self.attn(hidden_states)
            return torch.sum(hidden_states * weights, dim=1)

    class Qwen3VLMultiTask(torch.nn.Module):
        def __init__(self, base_model, hidden_size=2048):
            super().__init__()
            self.base_model = base_model
            self.spatial_pooler = SpatialAttentionPooling(hidden_size)
            self.loss_log_vars = torch.nn.Parameter(torch.zeros(3))
            self.task_heads = torch.nn.ModuleDict({
                "roi_head": torch.nn.Sequential(
                    torch.nn.Linear(hidden_size, 512), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                    torch.nn.Linear(512, 4)),
                "match_head": torch.nn.Sequential(
                    torch.nn.Linear(hidden_size, 256), torch.nn.ReLU(),
                    torch.nn.Linear(256, 1)),
            })

        def forward(self, pixel_values, input_ids, attention_mask, image_grid_thw=None,
                    labels=None, mm_token_type_ids=None, **kwargs):
            outputs = self.base_model(
                pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                image_grid_thw=image_grid_thw, labels=labels, mm_token_type_ids=mm_token_type_ids,
                output_hidden_states=True, return_dict=True)
            # f32 heads over a bf16 base (what the seed's Trainer(bf16=True) autocast does).
            last_hidden_state = outputs.hidden_states[-1].float()
            pooled_features = self.spatial_pooler(last_hidden_state)
            roi_preds = self.task_heads["roi_head"](pooled_features)
            match_logits = self.task_heads["match_head"](pooled_features).squeeze(-1)
            return {"lm_outputs": outputs, "roi_preds": roi_preds, "match_logits": match_logits,
                    "loss_weights": self.loss_log_vars}

    return Qwen3VLMultiTask


def seed_loss(torch, outputs, roi_coords, match_labels):
    """MultiTaskTrainer.compute_loss from the seed's fragments."""
    F = torch.nn.functional
    l_lm = outputs["lm_outputs"].loss
    roi_preds, logits = outputs["roi_preds"], outputs["match_logits"]
    has_roi = (roi_coords >= 0).all(dim=1)  # MedDataCollator writes -1 for negatives
    l_roi = (F.smooth_l1_loss(roi_preds[has_roi], roi_coords[has_roi]) if has_roi.any()
             else roi_preds.sum() * 0.0)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, match_labels, reduction="none")
    p_t = p * match_labels + (1 - p) * (1 - match_labels)
    focal_loss = 0.25 * (1 - p_t) ** 2 * bce
    false_negative_penalty = 10.0 * (match_labels == 0) * (p > 0.5)
    l_match = (focal_loss * (1 + false_negative_penalty)).mean()
    log_vars = outputs["loss_weights"]
    total = 0
    for i, loss in enumerate((l_roi, l_match, l_lm)):
        total = total + 0.5 * torch.exp(-log_vars[i]) * loss + 0.5 * log_vars[i]
    return total


def chat_ids(tok, question, n_image, answer):
    """roiscope's training layout (src/model/tokenizer.rs `chat`)."""
    block = "<|vision_start|>" + "<|image_pad|>" * n_image + "<|vision_end|>"
    before, after = question.split("<image>", 1) if "<image>" in question else ("", question)
    text = (f"<|im_start|>user\n{before}{block}{after}<|im_end|>\n<|im_start|>assistant\n"
            f"{answer}<|im_end|>\n")
    return tok.encode(text, add_special_tokens=False).ids


def worker(a):
    t_start = time.perf_counter()
    import torch
    torch.set_num_threads(a.threads)
    import peft
    import tokenizers
    import transformers
    from PIL import Image
    from transformers import (Qwen2VLImageProcessorPil, Qwen3VLForConditionalGeneration,
                              get_cosine_schedule_with_warmup)
    import_seconds = time.perf_counter() - t_start
    torch.manual_seed(0)

    t = time.perf_counter()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    base_model = Qwen3VLForConditionalGeneration.from_pretrained(a.model, dtype=dtype)
    if a.checkpointing:
        # As the seed's 12 GB setup (TrainingArguments(gradient_checkpointing=True)).
        base_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        base_model.enable_input_require_grads()
    model = peft.get_peft_model(base_model, peft.LoraConfig(task_type="CAUSAL_LM", **LORA))
    cfg = base_model.config
    hidden = getattr(cfg, "hidden_size", None) or cfg.text_config.hidden_size
    model = seed_modules(torch)(model, hidden_size=hidden)
    # Adapters and heads train in f32 over a bf16 base (peft's autocast_adapter_dtype does it for
    # the adapters; the heads are made in f32).
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.loss_log_vars.requires_grad = True
    for p in model.task_heads.parameters():
        p.requires_grad = True
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # Trainer's defaults (adamw_torch, weight decay 0, max_grad_norm 1), the seed's lr, schedule.
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, max(1, a.steps // 10), a.steps)
    load_seconds = time.perf_counter() - t

    with open(os.path.join(a.model, "preprocessor_config.json")) as f:
        pp = json.load(f)
    proc = Qwen2VLImageProcessorPil(**{k: v for k, v in pp.items() if k != "image_processor_type"})
    tok = tokenizers.Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    with open(os.path.join(a.data, "raw_data.json")) as f:
        raw = json.load(f)
    records = [(os.path.join(a.data, r["images"][0]), r["messages"][0]["content"],
                r["messages"][1]["content"]["extractions"]["Clinical Diagnosis Tips"])
               for r in raw]
    box = [100 / a.size, 120 / a.size, 300 / a.size, 264 / a.size]  # make_image's green box

    def batch(step):
        feats = []
        for k in range(2):
            path, question, answer = records[(2 * step + k) % len(records)]
            px = proc(images=[Image.open(path).convert("RGB")], return_tensors="pt")
            n_image = int(px["image_grid_thw"][0].prod()) // (proc.merge_size ** 2)
            ids = chat_ids(tok, question, n_image, answer)
            feats.append((torch.tensor(ids), px["pixel_values"], px["image_grid_thw"]))
        length = a.seed_pad or max(len(f[0]) for f in feats)
        input_ids = torch.full((2, length), PAD_ID, dtype=torch.int64)
        attention_mask = torch.zeros((2, length), dtype=torch.int64)
        for i, (ids, _, _) in enumerate(feats):  # the tokenizer's right padding
            input_ids[i, :len(ids)] = ids
            attention_mask[i, :len(ids)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)  # MedDataCollator
        # int(len(features) * 0.3) = 0 negatives at batch size 2: every sample is positive.
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "mm_token_type_ids": (input_ids == IMAGE_ID).to(torch.int64),
                "pixel_values": torch.cat([f[1] for f in feats]),
                "image_grid_thw": torch.cat([f[2] for f in feats]),
                "roi_coords": torch.tensor([box, box], dtype=torch.float32),
                "match_labels": torch.ones(2)}, [len(f[0]) for f in feats]

    steps = []
    for step in range(a.steps):
        t0 = time.perf_counter()
        inputs, lengths = batch(step)
        t1 = time.perf_counter()
        outputs = model(**{k: v for k, v in inputs.items()
                           if k not in ("roi_coords", "match_labels")})
        loss = seed_loss(torch, outputs, inputs["roi_coords"], inputs["match_labels"])
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        del outputs, loss
        t4 = time.perf_counter()
        steps.append({"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2,
                      "optimizer": t4 - t3, "step": t4 - t0})
    kept = steps[a.warmup:]
    trainable = sum(p.numel() for p in params)
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    print(json.dumps({
        "import_seconds": import_seconds, "load_seconds": load_seconds,
        "median": {k: statistics.median(s[k] for s in kept) for k in kept[0]},
        "steps": [round(s["step"], 4) for s in steps], "tokens_per_sample": lengths,
        "grid": inputs["image_grid_thw"].tolist(), "trainable": trainable,
        "lora_parameters": lora_params, "threads": torch.get_num_threads(),
        "attn": base_model.config._attn_implementation,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__,
    }))


# ---------------------------------------------------------------------------------------------
# the driver


QUIET_WAIT = [900]  # --quiet-wait


def measure(cmd, env, tries, timeout):
    """timed_child after the CPUs are quiet, again (up to `tries` times in all) when other
    processes took more than 10% of one core meanwhile; the last (stdout, wall, rss, foreign)."""
    for attempt in range(tries):
        if QUIET_WAIT[0] > 0:
            wait_quiet(QUIET_WAIT[0])
        out, wall, rss, foreign = timed_child(cmd, env, timeout)
        if foreign is None or foreign <= 0.10 * wall:
            break
        print(f"  note: other processes used {foreign:.1f} CPU s during a {wall:.1f} s run"
              + (", measuring again" if attempt + 1 < tries else ", kept"), file=sys.stderr)
    return out, wall, rss, foreign


def run_roiscope(exe, project, model, work, threads, a, tag=""):
    run = work / f"run_{threads}{tag}"
    if run.exists():
        shutil.rmtree(run)
    cfg = work / "train.toml"
    cfg.write_text(f"epochs = 1000\nmax_steps = {a.steps}\nbatch_size = 2\ngrad_accum = 1\n"
                   f"negative_ratio = {a.negative_ratio}\nbase_dtype = \"{a.dtype}\"\n"
                   + ("" if a.recompute is None else f"recompute = {a.recompute}\n"))
    cmd = [exe, "train", "--project", str(project), "--model", str(model), "--out", str(run),
           "--config", str(cfg)]

    def once():
        if run.exists():
            shutil.rmtree(run)
        return measure(cmd, {"RAYON_NUM_THREADS": str(threads)}, a.tries, a.timeout)
    _, wall, rss, foreign = once()
    events = [json.loads(line) for line in open(run / "metrics.jsonl")]
    steps = [e for e in events if e["event"] == "step"]
    times = [e["time"] for e in steps]
    intervals = [b - c for b, c in zip(times[1:], times[:-1])]
    kept = intervals[max(0, a.warmup - 1):]
    started = next(e for e in events if e["event"] == "started")
    if not kept:
        # One step (the 2B): from the start of the loop to the first step's end.
        kept = [times[0] - started["time"]]
    last = steps[-1]
    res = {"step": statistics.median(kept), "intervals": [round(x, 4) for x in intervals],
           "rss": rss, "wall": wall, "foreign": foreign or 0.0,
           "negatives": sum(e.get("negatives", 0) for e in steps),
           "trainable": started["trainable_parameters"],
           "tokens_per_sample": last["tokens_per_second"] / last["samples_per_second"]}
    if not a.keep:
        shutil.rmtree(run)
    return res


def run_seed(model, data, threads, a, pad=0):
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--data", str(data),
           "--threads", str(threads), "--steps", str(a.steps), "--warmup", str(a.warmup),
           "--size", str(a.size), "--seed-pad", str(pad), "--dtype", a.dtype]
    if a.checkpointing:
        cmd.append("--checkpointing")
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out, wall, rss, foreign = measure(cmd, env, a.tries, a.timeout)
    res = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    res.update(rss=rss, wall=wall, foreign=foreign or 0.0)
    return res


def bench(a, exe, work):
    model = work / a.model_config
    if not (a.keep and (model / "config.json").exists()):
        init_model(exe, a.model_config, model, a.model_config == "2b")
    data, project = make_data(exe, work, a.records, a.size)
    rows = []
    for threads in [int(x) for x in a.threads.split(",")]:
        ours = run_roiscope(exe, project, model, work, threads, a)
        print(f"  [{threads} thread(s)] roiscope: step {ours['step']:.4f} s, intervals "
              f"{ours['intervals']}, peak {ours['rss']:.0f} MiB, negatives {ours['negatives']}, "
              f"others' CPU {ours['foreign']:.1f} s", file=sys.stderr)
        seed = run_seed(model, data, threads, a) if "seed" in a.sides else None
        if seed:
            print(f"  [{threads} thread(s)] seed: median {seed['median']}, steps {seed['steps']}, "
                  f"peak {seed['rss']:.0f} MiB, others' CPU {seed['foreign']:.1f} s",
                  file=sys.stderr)
        padded = run_seed(model, data, threads, a, a.seed_pad) if a.seed_pad else None
        rows.append((threads, ours, seed, padded))
    s = next((r[2] for r in rows if r[2]), None)
    print(f"\n{a.model_config} config ({a.dtype} base weights"
          f"{', seed with gradient checkpointing' if a.checkpointing else ''}), batch 2 of {a.size}x{a.size} images, {a.steps} steps, median "
          f"after {a.warmup} warm-up steps; tokens per sample: roiscope "
          f"{rows[0][1]['tokens_per_sample']:.0f}"
          + (f", seed {s['tokens_per_sample']} (grid {s['grid'][0]}); trainable parameters: "
             f"roiscope {rows[0][1]['trainable']:,}, seed {s['trainable']:,} (LoRA "
             f"{s['lora_parameters']:,}); torch {s['torch']}, transformers {s['transformers']} "
             f"({s['attn']}), peft {s['peft']}" if s else "") + "\n")
    print("| threads | step s, roiscope | step s, seed | speed ratio (seed / roiscope) "
          "| seed: data, forward, backward, optimizer s | peak MiB, roiscope | peak MiB, seed "
          "| memory ratio (roiscope / seed) |")
    print("|---|---|---|---|---|---|---|---|")
    for threads, o, sd, pd in rows:
        for name, x in (("", sd), (f" (seed padded to {a.seed_pad})", pd)):
            if x is None:
                continue
            m = x["median"]
            print(f"| {threads}{name} | {o['step']:.4f} | {m['step']:.4f} | "
                  f"{m['step'] / o['step']:.2f}x | {m['data']:.4f}, {m['forward']:.4f}, "
                  f"{m['backward']:.4f}, {m['optimizer']:.4f} | {o['rss']:.0f} | {x['rss']:.0f} "
                  f"| {o['rss'] / x['rss']:.2f}x |")
    if not a.keep:
        shutil.rmtree(model)


# ---------------------------------------------------------------------------------------------
# the memory model


def n_image_tokens(h, w, patch=16, merge=2):
    """Tokens after Qwen's smart_resize (multiples of patch * merge) and the 2x2 merge."""
    f = patch * merge
    hh, ww = max(f, round(h / f) * f), max(f, round(w / f) * f)
    return (hh // patch) * (ww // patch), (hh // f) * (ww // f)


def parameter_counts(cfg):
    t, v = cfg["text_config"], cfg["vision_config"]
    h, inter, layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    q = t["num_attention_heads"] * t["head_dim"]
    kv = t["num_key_value_heads"] * t["head_dim"]
    per_layer_linear = {"q": h * q, "k": h * kv, "v": h * kv, "o": q * h,
                        "gate": h * inter, "up": h * inter, "down": inter * h}
    text_layers = layers * (sum(per_layer_linear.values()) + 2 * h + 2 * t["head_dim"])
    embed = t["vocab_size"] * h
    vh, vi, vd = v["hidden_size"], v["intermediate_size"], v["depth"]
    merged = vh * v["spatial_merge_size"] ** 2
    patch_in = 3 * v["temporal_patch_size"] * v["patch_size"] ** 2
    vision_block = 4 * vh * vh + 4 * vh + 2 * vh * vi + vi + vh + 4 * vh
    merger = 2 * merged + merged * merged + merged + merged * h + h  # norm, fc1, fc2
    vision = (patch_in * vh + vh + v["num_position_embeddings"] * vh + vd * vision_block
              + (1 + len(v["deepstack_visual_indexes"])) * merger)
    lm_head = 0 if cfg.get("tie_word_embeddings", t.get("tie_word_embeddings")) else embed
    return {"text_layers": text_layers, "embed": embed, "lm_head": lm_head, "vision": vision,
            "per_layer_linear": per_layer_linear,
            "total": text_layers + embed + lm_head + vision + h}


def lora_count(cfg, r=8):
    t = cfg["text_config"]
    h, inter = t["hidden_size"], t["intermediate_size"]
    q = t["num_attention_heads"] * t["head_dim"]
    kv = t["num_key_value_heads"] * t["head_dim"]
    return t["num_hidden_layers"] * r * ((h + q) + (h + kv) + (h + inter))


def heads_count(h, pool=512, roi=512, match=256):
    pools = 2 * (h * pool + pool + pool)  # roiscope: one pooling per head, fc2 without bias
    return pools + h * roi + roi + roi * 4 + 4 + h * match + match + match + 1 + 3


def layer_items(t, B, S, r):
    """What roiscope's differentiable text layer (src/model/text.rs, ops.rs) leaves in candle's
    autograd graph per layer, as (elements, kind): kind "act" in the compute dtype, "f32" always
    f32 (RMS norm and softmax upcast), "cast" an extra copy made only when the compute dtype is
    not f32 (to_dtype of the same dtype is free). candle keeps every tracked op's output and
    every input of a tracked op until backward() returns; views (reshape of contiguous data,
    transpose, narrow, broadcast) cost nothing, .contiguous() of a transposed tensor copies.
    """
    h, I = t["hidden_size"], t["intermediate_size"]
    nh, nkv, hd = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"]
    T, q, kv = B * S, nh * hd, nkv * hd
    A = B * nh * S * S  # attention scores
    rep = 2 if nh > nkv else 0  # repeat_kv copies k and v to every query head
    items = []

    def rms(n):  # upcast (cast), x^2, x / rms (f32), downcast (cast), * weight (act)
        items.extend([(2 * n, "f32"), (n, "cast_f32"), (n, "act"), (n, "cast")])

    def lora_linear(n_out):  # base matmul, dropout mask, masked x, x A, (x A) B, * scale, sum
        items.extend([(n_out, "act"), (2 * T * h, "act"), (T * r, "act"), (3 * n_out, "act")])

    rms(T * h)
    lora_linear(T * q)                               # q_proj
    items.append((T * kv, "act"))                    # k_proj
    lora_linear(T * kv)                              # v_proj
    rms(T * q)                                       # q_norm
    rms(T * kv)                                      # k_norm
    items.append((T * kv, "act"))                    # v transposed, contiguous
    items.append((T * q + T * kv, "act"))            # q, k transposed, contiguous
    items.append((4.5 * (T * q + T * kv), "act"))    # rope: -x2, cat, * cos, * sin, +
    items.append((rep * T * q, "act"))               # repeat_kv (k, v)
    items.append((3 * A, "act"))                     # q k^T, * scale, + mask
    items.append((B * S * S, "cast"))                # the mask cast to the compute dtype
    items.extend([(A, "cast_f32"), (3 * A, "f32"), (A, "cast")])  # softmax: diff, exp, out
    items.append((2 * T * q, "act"))                 # p v, transposed back and copied
    items.append((2 * T * h, "act"))                 # o_proj, residual
    rms(T * h)
    lora_linear(T * I)                               # gate_proj
    items.append((3 * T * I, "act"))                 # silu, up_proj, gate * up
    items.append((2 * T * h, "act"))                 # down_proj, residual
    return items


def bytes_of(items, act_bytes):
    total = 0.0
    for n, kind in items:
        if kind == "act":
            total += n * act_bytes
        elif kind == "f32":
            total += n * 4
        elif kind == "cast" and act_bytes != 4:
            total += n * act_bytes
        elif kind == "cast_f32" and act_bytes != 4:
            total += n * 4
    return total


def estimate(cfg, B, S, image_hw, lm_targets, act_bytes, r=8):
    """Peak memory of one roiscope training step (bytes), by part.

    act_bytes: 2 for bf16 base weights and activations (GPU), 4 for f32 (CPU). candle keeps the
    whole graph (every node) alive until backward() returns, so the peak is at the end of the
    backward pass: everything kept, plus what candle's gradient store holds by then, plus the
    largest burst of gradients in flight. Parts:
      weights      every base weight, in the compute dtype;
      trainable    LoRA, heads and task weights in f32 with gradient and two AdamW moments;
      activations  what the text layers keep for backward (layer_items), the deepstack features,
                   embeddings and final norm, the heads' pooling (f32) and the LM loss's rows of
                   logits (lm_targets x vocab, f32: the matmul output and log_softmax's
                   difference, exp and result; every chunk stays in the graph);
      store        gradients candle computes and holds although nothing needs them (its backward
                   differentiates both inputs of every op): every frozen text-layer linear reached
                   by a tracked input (all but layer 0's q, k and v projections) and the LM head
                   (f32; on a bf16 model also the f32 copy of the head made for the loss), the
                   three LoRA dropout masks per layer (tokens x hidden), the attention mask (one
                   per layer when cast to bf16; shared in f32);
      in flight    the largest burst during backward: softmax's backward over one layer's scores
                   (about 6 score-sized f32 tensors at once: the local gradient, zero-initialised
                   accumulators, the quotient rule's products, the square of the broadcast
                   denominator) or log_softmax's over the LM rows (about 4 rows x vocab);
      vision       the vision tower runs untracked (no trainable weight in it), so it keeps
                   nothing; only its largest transient (one block, both images: f32 scores of
                   one image three times, qkv, MLP) counts, before the text side exists.
    """
    t, v = cfg["text_config"], cfg["vision_config"]
    h, V, L = t["hidden_size"], t["vocab_size"], t["num_hidden_layers"]
    nh = t["num_attention_heads"]
    counts = parameter_counts(cfg)
    T = B * S
    A = B * nh * S * S
    out = {}
    out["weights"] = counts["total"] * act_bytes
    out["trainable"] = (lora_count(cfg, r) + heads_count(h)) * 16
    per_layer = bytes_of(layer_items(t, B, S, r), act_bytes)
    extras = (len(v["deepstack_visual_indexes"]) + 3) * T * h * act_bytes
    heads = 2 * (3 * T * 512 + 2 * T * h) * 4
    lm = lm_targets * V * 4 * 4  # the hidden states go to f32 before the LM head
    out["activations"] = L * per_layer + extras + heads + lm
    lin = counts["per_layer_linear"]
    frozen = (L * sum(lin.values()) - lin["q"] - lin["k"] - lin["v"]) * act_bytes
    head = V * h * 4 * (2 if act_bytes != 4 else 1)
    masks = L * 3 * T * h * act_bytes + (L if act_bytes != 4 else 1) * B * S * S * act_bytes
    out["store"] = frozen + head + masks
    out["in_flight"] = max(6 * A * 4, 4 * lm_targets * V * 4)
    patches, _ = n_image_tokens(*image_hw)
    vh, vi, vnh = v["hidden_size"], v["intermediate_size"], v["num_heads"]
    out["vision_peak"] = (3 * vnh * patches * patches * 4
                          + B * patches * (6 * vh + 2 * vi) * act_bytes)
    out["per_layer"] = per_layer
    out["layers"] = L
    # Per-layer checkpointing keeps each layer's input and recomputes one layer at a time.
    out["checkpointing_saves"] = max(0.0, (L - 1) * per_layer - L * T * h * act_bytes)
    out["total"] = (out["weights"] + out["trainable"]
                    + max(out["activations"] + out["store"] + out["in_flight"],
                          out["vision_peak"]))
    return out


def config_2b_from_source():
    """The 2B config as src/model/folder.rs `init_config` writes it, checked against its text."""
    src = (ROOT / "src" / "model" / "folder.rs").read_text()
    block = src[src.index("InitSize::Qwen2b => InitSizes {"):]
    block = block[:block.index("},")]
    vals = {}
    for line in block.splitlines()[1:]:
        line = line.strip().rstrip(",")
        if ":" in line:
            k, val = line.split(":", 1)
            vals[k.strip()] = val.strip()
    n = {k: int(vals[k]) for k in ("hidden", "layers", "heads", "kv_heads", "head_dim",
                                  "intermediate", "vision_depth", "vision_hidden",
                                  "vision_heads", "vision_intermediate")}
    deepstack = json.loads(vals["deepstack"].replace("vec!", ""))
    return {"tie_word_embeddings": True,
            "text_config": {"vocab_size": 151936, "hidden_size": n["hidden"],
                            "intermediate_size": n["intermediate"],
                            "num_hidden_layers": n["layers"],
                            "num_attention_heads": n["heads"],
                            "num_key_value_heads": n["kv_heads"], "head_dim": n["head_dim"],
                            "tie_word_embeddings": True},
            "vision_config": {"depth": n["vision_depth"], "hidden_size": n["vision_hidden"],
                              "intermediate_size": n["vision_intermediate"],
                              "num_heads": n["vision_heads"], "patch_size": 16,
                              "temporal_patch_size": 2, "spatial_merge_size": 2,
                              "num_position_embeddings": 2304,
                              "deepstack_visual_indexes": deepstack}}


def fmt_gib(x):
    return f"{x / GIB:.2f}"


def estimate_2b(a, exe, work):
    cfg = json.load(open(a.config_json)) if a.config_json else config_2b_from_source()
    counts = parameter_counts(cfg)
    print(f"Qwen3-VL-2B config: {counts['total'] / 1e9:.3f} B parameters (text layers "
          f"{counts['text_layers'] / 1e9:.3f} B, embedding {counts['embed'] / 1e6:.0f} M tied, "
          f"vision {counts['vision'] / 1e6:.0f} M); LoRA r 8 on q, v, gate: "
          f"{lora_count(cfg) / 1e6:.2f} M; heads and task weights "
          f"{heads_count(cfg['text_config']['hidden_size']) / 1e6:.2f} M\n")
    text_tokens, answer_tokens = a.text_tokens, a.answer_tokens
    rows = []
    for side in (448, 672):
        patches, img = n_image_tokens(side, side)
        S = img + 2 + text_tokens
        e = estimate(cfg, 2, S, (side, side), 2 * answer_tokens, 2)
        rows.append((side, patches, img, S, e))
    print(f"GPU, bf16 base weights, batch 2 (grad_accum 4 changes nothing: one batch is in "
          f"memory at a time), {text_tokens} text tokens per sample of which {answer_tokens} "
          "answer tokens (LM targets); GiB (2^30 bytes)\n")
    print("| image | image tokens (patches) | sequence | base weights bf16 | LoRA + heads, f32 "
          "with grads + AdamW | activations kept for backward | of which per text layer "
          "| gradients candle stores but nothing needs | backward in flight | total | fits 12 GB "
          "(~11.5 GiB usable)? | with per-layer checkpointing | without the stored gradients too |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side, patches, img, S, e in rows:
        ckpt = e["total"] - e["checkpointing_saves"]
        nofrozen = ckpt - e["store"]
        print(f"| {side}x{side} | {img} ({patches}) | {S} | {fmt_gib(e['weights'])} | "
              f"{fmt_gib(e['trainable'])} | {fmt_gib(e['activations'])} | "
              f"{e['per_layer'] / MIB:.0f} MiB x {e['layers']} | {fmt_gib(e['store'])} | "
              f"{fmt_gib(e['in_flight'])} | **{fmt_gib(e['total'] + a.cuda_overhead * GIB)}** | "
              f"{'yes' if e['total'] + a.cuda_overhead * GIB < 11.5 * GIB else 'no'} | "
              f"{fmt_gib(ckpt + a.cuda_overhead * GIB)} | "
              f"{fmt_gib(nofrozen + a.cuda_overhead * GIB)} |")
    print(f"\n(totals include {a.cuda_overhead} GiB for the CUDA context and cuBLAS workspace; "
          "the vision tower's transient peak is below the text side's in both rows: "
          + ", ".join(f"{side}: {fmt_gib(e['vision_peak'])}" for side, _, _, _, e in rows) + ")")
    if a.no_check:
        return
    check(a, exe, work)


def check(a, exe, work):
    """The same formula with f32 weights against roiscope's peak RSS on the tiny and small
    configs (CPU), plus the process's own overhead, measured as the peak RSS of a one-token,
    text-only `roiscope infer` on the tiny model less its weights."""
    data, project = make_data(exe, work, a.records, a.size)
    results = []
    for size in ("tiny", "small"):
        model = work / size
        init_model(exe, size, model, False)
        with open(model / "config.json") as f:
            cfg = json.load(f)
        if size == "tiny":
            out, _, base_rss, _ = measure(
                [exe, "infer", "--model", str(model), "--prompt", "Hi", "--max-new-tokens", "1",
                 "--json"], {"RAYON_NUM_THREADS": "2"}, a.tries, a.timeout)
            overhead = base_rss * MIB - parameter_counts(cfg)["total"] * 4
        ours = run_roiscope(exe, project, model, work, 2, a, tag=f"_{size}")
        S = round(ours["tokens_per_sample"])
        # LM targets: the answer and its <|im_end|>, positives only (~30% are negatives).
        answer = a.bench_answer_tokens
        e = estimate(cfg, 2, S, (a.size, a.size), 2 * answer, 4)
        results.append((size, S, ours, e))
        if not a.keep:
            shutil.rmtree(model)
    print(f"\nCheck on CPU (f32 weights, batch 2, {a.size}x{a.size}, {a.steps} steps, "
          f"2 threads): estimate against roiscope's measured peak RSS. Process overhead "
          f"(binary, tokenizer, allocator; from `roiscope infer` on tiny less its weights): "
          f"{overhead / MIB:.0f} MiB\n")
    print("| config | tokens per sample | weights | activations | stored gradients "
          "| backward in flight | estimate incl. overhead | measured peak RSS | estimate / measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, S, ours, e in results:
        est = e["total"] + overhead
        print(f"| {size} | {S} | {e['weights'] / MIB:.0f} MiB | {e['activations'] / MIB:.0f} MiB "
              f"| {e['store'] / MIB:.0f} MiB | {e['in_flight'] / MIB:.0f} MiB "
              f"| {est / MIB:.0f} MiB | {ours['rss']:.0f} MiB | {est / MIB / ours['rss']:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--estimate-2b", action="store_true",
                    help="the 12 GB memory table (and its check on tiny and small)")
    ap.add_argument("--no-check", action="store_true", help="--estimate-2b without the CPU check")
    ap.add_argument("--config-json", help="--estimate-2b: a config.json instead of folder.rs's")
    ap.add_argument("--text-tokens", type=int, default=100)
    ap.add_argument("--answer-tokens", type=int, default=40)
    ap.add_argument("--bench-answer-tokens", type=int, default=24,
                    help="answer tokens (with <|im_end|>) of the benchmark's records")
    ap.add_argument("--cuda-overhead", type=float, default=0.6, help="GiB")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                    help="base weights on both sides (roiscope: base_dtype; adapters, heads f32)")
    ap.add_argument("--checkpointing", action="store_true",
                    help="the seed with gradient checkpointing (as its 12 GB setup)")
    ap.add_argument("--recompute", choices=["true", "false"],
                    help="roiscope's recompute setting (default: its own default)")
    ap.add_argument("--model-config", default="tiny", choices=["tiny", "small", "2b"],
                    help="init-model config of the benchmark (tiny is the issue's)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--records", type=int, default=16)
    ap.add_argument("--size", type=int, default=448, help="image side in pixels")
    ap.add_argument("--negative-ratio", type=float, default=0.3)
    ap.add_argument("--seed-pad", type=int, default=0,
                    help="also run the seed padding every sample to this length (1024 as written)")
    ap.add_argument("--sides", default="roiscope,seed")
    ap.add_argument("--exe", default=str(ROOT / "target" / "release" / "roiscope"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "roiscope_bench_train"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--quiet-wait", type=int, default=900,
                    help="wait up to this many seconds for idle CPUs before each run (0: not)")
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        a.threads = int(a.threads)
        return worker(a)
    QUIET_WAIT[0] = a.quiet_wait
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.estimate_2b:
        estimate_2b(a, a.exe, work)
    else:
        bench(a, a.exe, work)


if __name__ == "__main__":
    main()

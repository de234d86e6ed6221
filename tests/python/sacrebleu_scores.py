"""Corpus BLEU and chrF by sacrebleu (its defaults) on a JSONL file of {hypothesis, reference} rows:
prints one JSON object with the whole corpus, its first 5 rows and each row alone, the shape of
tests/fixtures/sacrebleu/expected.json. Usage: python3 sacrebleu_scores.py PAIRS.jsonl"""
import json
import sys

import sacrebleu

rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]


def scores(selection):
    hyps = [r["hypothesis"] for r in selection]
    refs = [[r["reference"] for r in selection]]
    return {"bleu": sacrebleu.corpus_bleu(hyps, refs).score,
            "chrf": sacrebleu.corpus_chrf(hyps, refs).score}


print(json.dumps({"sacrebleu": sacrebleu.__version__, "corpus": scores(rows),
                  "first5": scores(rows[:5]), "rows": [scores([r]) for r in rows]}))

"""Data-stage throughput and near-duplicate accuracy on real Indic text, against datatrove in the same run.

    pip install -e '.[bench]'   # datatrove, the peer
    python scripts/bench_data.py [--shared ../shared/data] [--planted 200] [--json runs/bench_data.json]

Input: the Marathi and Bengali Wikipedia dumps in ../shared/data, read and stripped by our MediaWiki
reader (articles of 50+ words). Everything runs in this one process, on one core:

- cleaning: our normalize + identify + pii + quality stages, against the FineWeb-2 chain in datatrove:
  GopherRepetition, FineWebQuality and GopherQuality filters with FineWeb-2's mar_Deva / ben_Beng values,
  then its FTFY and PII (e-mail, IP) formatters (FineWeb-2 runs GlotLID first; its model cannot be
  downloaded here, so neither side pays for a model-based language ID);
- MinHash signatures: ours (112 permutations, 5-word shingles) against datatrove's MinhashDedupSignature
  (14 buckets x 8 hashes, 5-grams, the language's word tokenizer), on the same normalized text;
- near duplicates: articles that are not near-duplicates of each other get planted copies with 1% of
  words replaced, a footer added and, in articles of 30+ sentences, a sentence dropped; our dedup stage must
  find each copy's original (precision, recall).

Goals: cleaning at least 2x datatrove's MB/s per core, signatures at least 15 MB/s per core, precision and
recall at least 0.95. The script exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from indictune.core import text as text_units
from indictune.core.paths import shared_data_dir
from indictune.data.readers import Source, read
from indictune.data.stages.dedup import Dedup, DedupConfig
from indictune.data.stages.identify import Identify, IdentifyConfig
from indictune.data.stages.normalize import Normalize, NormalizeConfig
from indictune.data.stages.pii import Pii, PiiConfig
from indictune.data.stages.quality import Quality, QualityConfig

DUMPS = {"mr": "mrwiki-truncated-100k.xml.xz", "bn": "bnwiki-truncated-100k.xml.xz"}
FINEWEB2 = {  # configs/<lang>.yml of huggingface/fineweb-2
    "mr": dict(
        flores="mar_Deva",
        dup_line_frac=0.233,
        line_punct_thr=0.008,
        new_line_ratio=0.351,
        min_len=2,
        max_len=35,
        non_alpha=0.798,
    ),
    "bn": dict(
        flores="ben_Beng",
        dup_line_frac=0.203,
        line_punct_thr=0.125,
        new_line_ratio=0.171,
        min_len=3,
        max_len=24,
        non_alpha=0.80,
    ),
}


def load_articles(shared: Path) -> list[dict]:
    records = []
    for lang, dump in DUMPS.items():
        source = Source(path=str(shared / "wikipedia_dumps_mr_bn" / dump), format="mediawiki", lang=lang)
        records += [r for r in read(source) if "read_error" not in r and len(r["text"].split()) >= 50]
    return records


def megabytes(texts) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def ours_cleaning(records: list[dict]) -> tuple[float, list[dict]]:
    stages = [Normalize(NormalizeConfig()), Identify(IdentifyConfig()), Pii(PiiConfig()), Quality(QualityConfig())]
    records = [dict(r, meta=dict(r["meta"])) for r in records]
    start = time.perf_counter()
    for record in records:
        for stage in stages:
            if stage.process(record):
                break
    return time.perf_counter() - start, records


def datatrove_cleaning(records: list[dict]) -> float:
    from datatrove.data import Document
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import FTFYFormatter, PIIFormatter

    from indictune.core import languages

    chains = {}
    for lang, c in FINEWEB2.items():
        chains[lang] = [
            GopherRepetitionFilter(
                dup_line_frac=c["dup_line_frac"],
                dup_para_frac=None,
                dup_line_char_frac=None,
                dup_para_char_frac=None,
                language=c["flores"],
            ),
            FineWebQualityFilter(
                line_punct_thr=c["line_punct_thr"],
                short_line_thr=999,
                char_duplicates_ratio=0.1,
                new_line_ratio=c["new_line_ratio"],
                language=c["flores"],
            ),
            GopherQualityFilter(
                min_avg_word_length=c["min_len"],
                max_avg_word_length=c["max_len"],
                max_non_alpha_words_ratio=c["non_alpha"],
                min_stop_words=2,
                stop_words=list(languages.get(lang).stopwords),
                language=c["flores"],
            ),
        ]
    formatters = [FTFYFormatter(), PIIFormatter()]
    documents = [(r["lang"], Document(text=r["text"], id=r["id"])) for r in records]
    start = time.perf_counter()
    for lang, document in documents:
        for step in chains[lang]:
            result = step.filter(document)
            if result is False or (isinstance(result, tuple) and not result[0]):
                break
        else:
            for formatter in formatters:
                document.text = formatter.format(document.text)
    return time.perf_counter() - start


def ours_signatures(texts: list[str]) -> float:
    dedup = Dedup(DedupConfig())
    start = time.perf_counter()
    for t in texts:
        dedup.signature(t)
    return time.perf_counter() - start


def datatrove_signatures(records: list[dict], tmp: Path) -> float:
    import xxhash
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    signers = {
        lang: MinhashDedupSignature(output_folder=str(tmp / lang), config=MinhashConfig(), language=c["flores"])
        for lang, c in FINEWEB2.items()
    }
    for signer in signers.values():  # datatrove 0.10 hands xxhash a str, which xxhash 4 refuses; encode as xxhash 3 did
        signer._hash_func = lambda s: xxhash.xxh64_intdigest(s.encode("utf-8"))
    start = time.perf_counter()
    for r in records:
        signer = signers[r["lang"]]
        signer.get_signature(signer.get_shingles(r["text"]))
    return time.perf_counter() - start


def shingle_set(content: str) -> set[int]:
    return set(text_units.ngram_hashes(text_units.text_word_hashes(text_units.comparison_key(content)), 5).tolist())


def distinct_records(records: list[dict]) -> list[dict]:
    """The records that are no near duplicate of another, by a looser probe than the stage's (wiki stubs built
    from one template are): only copies planted from these are duplicates."""
    probe = Dedup(DedupConfig(threshold=0.5, bands=28, num_perm=112))
    for r in records:
        probe.observe(r)
    probe.finish_observing()
    return [r for i, r in enumerate(records) if probe.cluster_sizes[probe.roots[i]] == 1]


def plant_near_duplicates(
    records: list[dict], count: int, seed: int = 0
) -> tuple[list[dict], dict[str, str], list[float]]:
    """The corpus with `count` planted copies appended in random order; {copy id: original id}; their Jaccard."""
    rng = random.Random(seed)
    singles = distinct_records(records)
    vocabulary = sorted({w for r in singles[:200] for w in r["text"].split()})
    originals = rng.sample(singles, min(count, len(singles)))
    copies, truth, similarity = [], {}, []
    for n, original in enumerate(originals):
        words = original["text"].split(" ")
        for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
            words[i] = rng.choice(vocabulary)
        sentences = " ".join(words).split("। ")
        if len(sentences) >= 30:
            del sentences[rng.randrange(1, len(sentences) - 1)]
        copy_text = "। ".join(sentences) + "\n\nहा लेख शेअर करा / এই নিবন্ধটি শেয়ার করুন"
        copy = dict(original, id=f"planted#{n}", text=copy_text)
        copies.append(copy)
        truth[copy["id"]] = original["id"]
        a, b = shingle_set(original["text"]), shingle_set(copy_text)
        similarity.append(len(a & b) / len(a | b))
    rng.shuffle(copies)
    return singles + copies, truth, similarity


def dedup_accuracy(corpus: list[dict], truth: dict[str, str]) -> tuple[float, float]:
    dedup = Dedup(DedupConfig())
    records = [dict(r) for r in corpus]
    for r in records:
        dedup.observe(r)
    dedup.finish_observing()
    flagged = {r["id"]: r.get("duplicate_of") for r in records if dedup.process(r)}
    true_positives = sum(flagged.get(copy) == original for copy, original in truth.items())
    precision = true_positives / len(flagged) if flagged else 1.0
    return precision, true_positives / len(truth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(shared_data_dir()))
    parser.add_argument("--planted", type=int, default=200, help="near-duplicate copies to plant")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    import tempfile

    records = load_articles(Path(args.shared))
    size = megabytes(r["text"] for r in records)
    print(
        f"{len(records)} Wikipedia articles (mr, bn), {size:.1f} MB; one core "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} visible)",
        file=sys.stderr,
    )
    ours_seconds, normalized = ours_cleaning(records)
    peer_seconds = datatrove_cleaning(records)
    texts = [r["text"] for r in normalized]
    sig_ours = ours_signatures(texts)
    with tempfile.TemporaryDirectory() as tmp:
        sig_peer = datatrove_signatures([dict(r, text=t) for r, t in zip(records, texts)], Path(tmp))
    corpus, truth, similarity = plant_near_duplicates([dict(r, text=t) for r, t in zip(records, texts)], args.planted)
    precision, recall = dedup_accuracy(corpus, truth)

    figures = {
        "articles": len(records),
        "megabytes": round(size, 2),
        "cleaning_mb_s": {"indictune": round(size / ours_seconds, 2), "datatrove": round(size / peer_seconds, 2)},
        "minhash_mb_s": {"indictune": round(size / sig_ours, 2), "datatrove": round(size / sig_peer, 2)},
        "planted": len(truth),
        "planted_jaccard": [round(min(similarity), 3), round(max(similarity), 3)],
        "precision": round(precision, 4),
        "recall": round(recall, 4),
    }
    goals = {
        "cleaning >= 2x datatrove": figures["cleaning_mb_s"]["indictune"] >= 2 * figures["cleaning_mb_s"]["datatrove"],
        "MinHash signatures >= 15 MB/s per core": figures["minhash_mb_s"]["indictune"] >= 15,
        "precision >= 0.95": precision >= 0.95,
        "recall >= 0.95": recall >= 0.95,
    }
    print("| measure | indictune | datatrove |\n|---|---:|---:|")
    for label, key in (("cleaning chain", "cleaning_mb_s"), ("MinHash signatures", "minhash_mb_s")):
        print(f"| {label}, MB/s per core | {figures[key]['indictune']} | {figures[key]['datatrove']} |")
    print(
        f"| near duplicates found: precision / recall ({len(truth)} planted, Jaccard "
        f"{figures['planted_jaccard'][0]}-{figures['planted_jaccard'][1]}) | {precision:.3f} / {recall:.3f} | |"
    )
    for goal, met in goals.items():
        print(f"{'PASS' if met else 'FAIL'}  {goal}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**figures, "goals": goals}, indent=2) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

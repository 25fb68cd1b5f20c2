"""Tokenize, mix and pack a continued-pretraining recipe's corpus into the cache, before launching.

    python scripts/pack_data.py --config recipes/train/<model>/<recipe>.yaml [--packed_cache_dir DIR]

scripts/train.py then reads the packed data instead of building it, so no rank waits on tokenization
at a barrier (the 30-minute NCCL timeout that multi-node runs of other frameworks hit). The cache is
keyed by the data files, the tokenizer, max_length and the language mix: change any of them and the
next run builds anew. For multi-node runs put it on a filesystem every node sees (packed_cache_dir or
$INDICTUNE_CACHE); scripts/launch.slurm runs this first.
"""

import sys

import torch

from indictune.core.recipe import RecipeError
from indictune.training import config
from indictune.training.model import load_tokenizer
from indictune.training.packing import packed_dataset


def main(argv: list[str] | None = None):
    # Packing trains nothing, and a CPU node cannot honour a GPU recipe's bf16; it is not part of the key.
    argv = list(sys.argv[1:] if argv is None else argv) + ([] if torch.cuda.is_available() else ["--bf16", "false"])
    try:
        args, training_args, model_args = config.parse(argv)
    except RecipeError as err:
        raise SystemExit(f"error: {err}") from None
    if args.stage != "cpt":
        raise SystemExit("error: only cpt recipes are packed ahead; SFTTrainer tokenizes chat data in the run")
    tokenizer = load_tokenizer(args, model_args, training_args)
    dataset, mixture, path = packed_dataset(args, training_args, tokenizer)
    tokens = sum(m["mixed_tokens"] for m in mixture.values())
    print(f"{len(dataset)} rows of up to {training_args.max_length} tokens, {tokens} tokens, at {path}")
    for lang, m in sorted(mixture.items(), key=lambda item: -item[1]["mixed_tokens"]):
        repeats = m["mixed_tokens"] / m["corpus_tokens"]
        print(f"  {lang:8} {m['share']:7.2%} of the mix  {m['corpus_tokens']:>12} tokens in the corpus  x{repeats:.2f}")
    return path


if __name__ == "__main__":
    main()

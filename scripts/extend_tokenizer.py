"""Train Indic SentencePiece pieces on a prepared corpus and extend a base tokenizer with them.

    python scripts/extend_tokenizer.py --config recipes/tokenizer/<name>.yaml [--key value ...]

Without base_tokenizer it trains a new tokenizer instead (the demo's tiny base model uses one).
"""

from indictune.core.recipe import parse_cli
from indictune.training.tokenizer.build import TokenizerConfig, build


def main() -> None:
    config = parse_cli(TokenizerConfig, description=__doc__)
    summary = build(config)
    print(f"{summary['vocab_size']} tokens ({summary['added_tokens']} new) -> {config.output_dir}")
    for lang, by_tokenizer in summary["fertility"].items():
        cells = ", ".join(f"{name} {f['tokens_per_word']:.2f}" for name, f in by_tokenizer.items())
        print(f"  {lang}: tokens per word: {cells}")
    print(f"fertility: {config.output_dir}/fertility.md")


if __name__ == "__main__":
    main()

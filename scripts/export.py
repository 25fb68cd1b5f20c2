"""Export a checkpoint for serving: merged Hugging Face folder (vLLM), GGUF (llama.cpp) and Ollama Modelfile.

    python scripts/export.py --model DIR [--adapter DIR] --formats hf,gguf,ollama --output_dir OUT
    python scripts/export.py --config recipes/export/<name>.yaml [--key value ...]

A GGUF is written only if llama.cpp tokenizes the check set exactly as the model's own tokenizer does;
otherwise the export stops and says why (see README, "Serving").
"""

from indictune.core.log import setup_logging
from indictune.core.recipe import RecipeError, parse_cli
from indictune.export.build import ExportConfig, ExportError, export
from indictune.export.gguf import GGUFError


def main(argv: list[str] | None = None) -> None:
    setup_logging(True)
    try:
        config = parse_cli(ExportConfig, description=__doc__, argv=argv)
        summary = export(config)
    except (RecipeError, ExportError, GGUFError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    for path in summary["files"]:
        print(f"{config.output_dir}/{path}")
    parity = summary.get("tokenizer_parity")
    if parity:
        print(f"tokenizer parity with llama.cpp ({parity['pre_tokenizer']}): {sum(parity['checked'].values())} lines")


if __name__ == "__main__":
    main()

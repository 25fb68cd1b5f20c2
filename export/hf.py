"""The merged Hugging Face folder vLLM serves: weights with the adapter merged in, the tokenizer, the chat
template, a generation config that stops at every end of turn, lineage and a model card.

Vocabulary bookkeeping: the embedding matrices keep exactly the rows the model has. An extended
tokenizer's model has one row per token (``config.vocab_size == len(tokenizer)``); it is not padded to a
multiple of 64, because a padded row is a real output that sampling can pick (Llama's output layer has no
bias to mask it with), and vLLM pads its own embedding shards for tensor parallelism and masks what it
pads. A base that ships more rows than tokens (Qwen2.5: 152,064 rows for 151,665 tokens) keeps them as the
base had them; the export says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from indictune.core.hashing import folder_sha256
from indictune.eval import store


class ExportError(ValueError):
    """A model or adapter that cannot be exported as asked; the message names the file and the fix."""


def tokenizer_folder(model_dir: Path, adapter_dir: Path | None) -> Path:
    """The tokenizer a checkpoint was trained with: the adapter's own when it saved one, else the model's."""
    if adapter_dir is not None and any(
        (adapter_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")
    ):
        return adapter_dir
    return model_dir


def load_merged(model_dir: Path, adapter_dir: Path | None, tokenizer, dtype, trust_remote_code: bool):
    """The model from safetensors, grown to the tokenizer if an adapter trained new rows, adapter merged."""
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    if adapter_dir is None:
        return model
    from peft import PeftModel

    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the adapter holds the trained rows
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def vocabulary(model, tokenizer) -> dict:
    """Rows, config and tokenizer sizes, which must agree; ExportError naming the mismatch if they do not."""
    rows_in = model.get_input_embeddings().weight.shape[0]
    output = model.get_output_embeddings()
    rows_out = output.weight.shape[0] if output is not None else rows_in
    sizes = {"tokenizer": len(tokenizer), "config.vocab_size": model.config.vocab_size}
    sizes.update({"input_rows": rows_in, "output_rows": rows_out})
    if len({rows_in, rows_out, model.config.vocab_size}) != 1 or rows_in < len(tokenizer):
        raise ExportError(
            f"the model's vocabulary does not add up ({sizes}): every id the tokenizer makes needs a row in both "
            "embedding matrices, and config.vocab_size must be their size; was the adapter trained with this "
            "tokenizer (the one saved beside it)?"
        )
    sizes["padding_rows"] = rows_in - len(tokenizer)
    sizes["padding"] = (
        "none: one row per token"
        if rows_in == len(tokenizer)
        else f"{rows_in - len(tokenizer)} rows beyond the tokenizer, as the base model has them"
    )
    return sizes


def end_of_turn_ids(tokenizer, saved: int | list[int] | None, layout) -> list[int]:
    """Every id that ends a reply: the `saved` generation config's, EOS, and the special tokens that close an
    assistant turn in the chat template (<|eot_id|>, <|im_end|>, <end_of_turn>, ...)."""
    ids = list(saved) if isinstance(saved, list) else [saved] if saved is not None else []
    ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if layout is not None:
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ids += [i for i in tokenizer(layout.end_of_turn(), add_special_tokens=False)["input_ids"] if i in special]
    return list(dict.fromkeys(ids))


def generation_config(model, tokenizer, model_dir: Path, layout) -> GenerationConfig:
    """The model's saved generation config (or one from its config), stopping at every end of turn."""
    try:
        config = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        config = GenerationConfig.from_model_config(model.config)
    config.eos_token_id = end_of_turn_ids(tokenizer, config.eos_token_id, layout)
    config.bos_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def lineage_of(model_dir: Path, adapter_dir: Path | None) -> dict:
    """The training lineage.json of the adapter (or of the model), if it has one."""
    for folder in (adapter_dir, model_dir):
        if folder is not None and (folder / "lineage.json").is_file():
            return json.loads((folder / "lineage.json").read_text(encoding="utf-8"))
    return {}


def leaderboard_run(db: Path, model_dir: Path, adapter_dir: Path | None) -> dict | None:
    """The newest evaluation of exactly these bytes (model weights and adapter by content hash)."""
    if not db.is_file():
        return None
    weights, adapter = folder_sha256(model_dir), folder_sha256(adapter_dir) if adapter_dir else None
    matching = [r for r in store.latest_runs(db) if r["weights_sha256"] == weights and r["adapter_sha256"] == adapter]
    return matching[-1] if matching else None


def model_card(name: str, lineage: dict, run: dict | None, vocab: dict, gguf_files: list[str]) -> str:
    """README.md for the folder: what it was made from, how it scored, how to serve it."""
    languages = lineage.get("languages") or []
    front = ["---", "library_name: transformers", "tags: [indictune]"]
    if lineage.get("base_model"):
        front.append(f"base_model: {json.dumps(lineage['base_model'])}")
    if languages:
        front.append(f"language: [{', '.join(languages)}]")
    lines = [*front, "---", "", f"# {name}", ""]
    made = [
        ("base model", lineage.get("base_model")),
        ("stage", lineage.get("stage")),
        ("tokenizer", lineage.get("tokenizer")),
        ("tokenizer sha256", lineage.get("tokenizer_sha256")),
        ("new token ids", lineage.get("new_token_ids")),
        ("languages", ", ".join(languages) or None),
        ("training data files", len(lineage.get("data") or []) or None),
        ("code commit", lineage.get("code_commit")),
        ("vocabulary", f"{vocab['tokenizer']} tokens, {vocab['input_rows']} rows ({vocab['padding']})"),
    ]
    lines += ["## Made from", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in made if v is not None]
    lines += ["", "## Scores", ""]
    if run is None:
        lines.append("No evaluation of these exact weights is in the leaderboard store.")
    else:
        lines += [
            f"From the leaderboard store: run {run['id']} ({run['created']}), suite {run['suite']}, against "
            f"{run['base_label'] or 'no base'}. Change: the difference from the base on the same items, with its "
            "95% paired bootstrap interval.",
            "",
            "| task | language | metric | score | change | 95% interval |",
            "|---|---|---|---:|---:|---|",
        ]
        for s in sorted(run["scores"], key=lambda s: (s["task"], s["lang"], s["metric"])):
            delta = f"{s['delta']:+.4f}" if s["delta"] is not None else ""
            interval = f"[{s['delta_low']:+.4f}, {s['delta_high']:+.4f}]" if s["delta_low"] is not None else ""
            lines.append(f"| {s['task']} | {s['lang']} | {s['metric']} | {s['value']:.4f} | {delta} | {interval} |")
    lines += ["", "## Serving", "", "```", "vllm serve .", "```"]
    if gguf_files:
        lines += ["", f"GGUF beside this folder: {', '.join(gguf_files)}; `ollama create NAME -f Modelfile`."]
    return "\n".join(lines) + "\n"


def load_tokenizer(folder: Path, trust_remote_code: bool):
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)

"""Training: packing keeps documents apart, LoRA with new rows trains, saves, reloads and resumes."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
from trl import SFTConfig

from training.packing import PackedCollator, tokenize_and_pack

from conftest import tiny_llama

REPO = Path(__file__).resolve().parent.parent


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def token_logprobs(model, input_ids, **kwargs):
    logits = model(input_ids=input_ids, **kwargs).logits
    return F.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)


@pytest.mark.parametrize("flatten", [False, True], ids=["rows", "padding-free"])
def test_a_packed_batch_scores_each_document_as_if_alone(flatten):
    model = tiny_llama(300).train()  # in training mode, with the cache its config enables, as the Trainer has it
    assert model.config.use_cache
    torch.manual_seed(1)
    docs = [torch.randint(3, 300, (n,)).tolist() for n in (7, 12, 5, 9, 4)]
    rows = [{"input_ids": docs[0] + docs[1] + docs[2], "seq_lengths": [7, 12, 5]},
            {"input_ids": docs[3] + docs[4], "seq_lengths": [9, 4]}]
    batch = PackedCollator(pad_token_id=0, flatten=flatten)(rows)
    assert "attention_mask" not in batch
    labels = batch.pop("labels")
    packed = token_logprobs(model, **batch)  # the batch exactly as the Trainer passes it
    starts = [(0, 0), (0, 7), (0, 19), (1, 0), (1, 9)] if not flatten else [(0, 0), (0, 7), (0, 19), (0, 24), (0, 33)]
    for doc, (row, start) in zip(docs, starts):
        alone = token_logprobs(model.eval(), torch.tensor([doc]))[0]
        together = packed[row, start : start + len(doc) - 1]
        assert torch.allclose(alone, together, atol=1e-5)
        assert labels[row, start] == -100  # a document's first token is not predicted from the previous one


def test_tokenize_and_pack_keeps_every_token_and_closes_documents(extended_tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(extended_tokenizer_dir)
    texts = [(REPO / "data/sample/heldout/hi.txt").read_text(), "छोटा पाठ", "एक और"]
    args = SFTConfig(output_dir=str(tmp_path), max_length=64, packing=True, packing_strategy="bfd_split", bf16=False)
    packed = tokenize_and_pack(Dataset.from_dict({"text": texts}), tokenizer, args)
    expected = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts)
    assert sum(len(ids) for ids in packed["input_ids"]) == expected
    assert all(len(ids) <= 64 for ids in packed["input_ids"])
    assert sum(ids.count(tokenizer.eos_token_id) for ids in packed["input_ids"]) == len(texts)


def train_argv(tmp_path, prepared, base_dir, tokenizer_dir, *extra):
    return [
        "--config", str(REPO / "recipes/train/demo/cpt-lora.yaml"),
        "--model_name_or_path", str(base_dir), "--tokenizer_name_or_path", str(tokenizer_dir),
        "--train_data", str(prepared), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "6", "--max_length", "128", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "5e-3", "--warmup_steps", "0",
        "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]


def test_lora_with_new_rows_trains_saves_and_reloads_to_the_same_logits(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    train = load_train_script()
    trainer = train.main(train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir))
    out = tmp_path / "run"
    tokenizer = AutoTokenizer.from_pretrained(out)
    base_size = len(AutoTokenizer.from_pretrained(tiny_base_dir))
    model = trainer.model.eval()

    # Only the rows of new tokens and the LoRA weights changed.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert any("embed_tokens" in n for n in trainable) and any("lm_head" in n for n in trainable)

    text = (REPO / "data/sample/heldout/ta.txt").read_text().splitlines()[0]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    assert ids.max() >= base_size  # the text uses new tokens
    with torch.no_grad():
        trained_logits = model(input_ids=ids).logits
        reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # resizes the fresh base itself
        assert torch.allclose(reloaded(input_ids=ids).logits, trained_logits, atol=1e-5)

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base_model"] == str(tiny_base_dir) and lineage["new_token_ids"] == [base_size, len(tokenizer)]
    assert lineage["data"] and all(len(d["sha256"]) == 64 for d in lineage["data"])
    assert (out / "recipe.yaml").is_file() and (out / "adapter_model.safetensors").stat().st_size > 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_training_resumes_from_the_last_checkpoint(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    train = load_train_script()
    argv = train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir,
                      "--save_strategy", "steps", "--save_steps", "3", "--max_steps", "3")
    first = train.main(argv)
    assert (tmp_path / "run" / "checkpoint-3").is_dir()
    second = train.main(argv[:-2] + ["--max_steps", "5"])
    steps = [h["step"] for h in second.state.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5]  # steps 1-3 come from the checkpoint, 4-5 are new
    assert [h["loss"] for h in second.state.log_history[:3]] == [h["loss"] for h in first.state.log_history[:3]]


def test_full_training_from_a_config(tmp_path, prepared_sample, base_tokenizer_dir):
    train = load_train_script()
    trainer = train.main([
        "--config", str(REPO / "recipes/train/demo/base-pretrain.yaml"),
        "--tokenizer_name_or_path", str(base_tokenizer_dir), "--train_data", str(prepared_sample[0]),
        "--output_dir", str(tmp_path / "base"), "--max_steps", "3", "--report_to", "none", "--disable_tqdm", "true",
    ])
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert (tmp_path / "base" / "model.safetensors").is_file() and (tmp_path / "base" / "tokenizer.json").is_file()

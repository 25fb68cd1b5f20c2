"""Training: packing keeps documents apart, languages mix as asked, LoRA with new rows trains, saves,
reloads and resumes on the same loss curve, gradient accumulation changes nothing, SFT trains assistant
turns and the new rows."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
from trl import SFTConfig

from training import checkpoint
from training.packing import PackedCollator, mix, pack, tokenize
from training.throughput import flops_per_token

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
    packed = pack(tokenize(Dataset.from_dict({"text": texts, "lang": ["hi"] * 3}), tokenizer, args), args)
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


def test_full_training_from_a_config(tmp_path, prepared_sample, base_tokenizer_dir):
    train = load_train_script()
    trainer = train.main([
        "--config", str(REPO / "recipes/train/demo/base-pretrain.yaml"),
        "--tokenizer_name_or_path", str(base_tokenizer_dir), "--train_data", str(prepared_sample[0]),
        "--output_dir", str(tmp_path / "base"), "--max_steps", "3", "--report_to", "none", "--disable_tqdm", "true",
    ])
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert (tmp_path / "base" / "model.safetensors").is_file() and (tmp_path / "base" / "tokenizer.json").is_file()


def losses_by_step(history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.parametrize("mode", ["new_rows", "full"])
def test_tied_embeddings_train_as_one_and_reload(mode, tmp_path, prepared_sample, base_tokenizer_dir,
                                                 extended_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    base = tmp_path / "tied-base"
    tiny_llama(len(tokenizer), tie=True).save_pretrained(base)
    tokenizer.save_pretrained(base)
    trainer = load_train_script().main(train_argv(tmp_path, prepared_sample[0], base, extended_tokenizer_dir,
                                                  "--trainable_embeddings", mode, "--max_steps", "3"))
    model = trainer.model.eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(extended_tokenizer_dir)("तमिल और हिंदी")["input_ids"]])
    with torch.no_grad():
        reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run").eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_a_killed_run_resumes_on_the_same_loss_curve(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    argv = train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir,
                      "--max_steps", "24", "--save_strategy", "steps", "--save_steps", "4", "--lora_dropout", "0.1")
    uninterrupted = load_train_script().main(argv[:argv.index("--output_dir") + 1] + [str(tmp_path / "whole")]
                                             + argv[argv.index("--output_dir") + 2:])
    expected = losses_by_step(uninterrupted.state.log_history)
    assert len(expected) == 24

    # The same run as a process of its own, killed as soon as its first checkpoint is on disk.
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "scripts/train.py", *argv], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(run.glob("checkpoint-*/trainer_state.json")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (run / "adapter_model.safetensors").exists()
    killed_at = int(Path(checkpoint.last_complete_checkpoint(str(run))).name.split("-")[1])
    assert killed_at < 24

    resumed = load_train_script().main(argv)
    after = {step: loss for step, loss in losses_by_step(resumed.state.log_history).items() if step > killed_at}
    assert sorted(after) == list(range(killed_at + 1, 25))
    assert max(abs(after[step] - expected[step]) for step in after) <= 1e-3


def test_gradient_accumulation_matches_one_large_batch(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    def run(name, batch, accumulate):
        argv = train_argv(tmp_path / name, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir,
                          "--max_steps", "3", "--per_device_train_batch_size", str(batch),
                          "--gradient_accumulation_steps", str(accumulate))
        return load_train_script().main(argv)

    whole, accumulated = run("whole", 8, 1), run("accumulated", 2, 4)
    assert losses_by_step(whole.state.log_history) == pytest.approx(losses_by_step(accumulated.state.log_history), abs=1e-3)
    for (name, a), (_, b) in zip(whole.model.named_parameters(), accumulated.model.named_parameters()):
        if a.requires_grad:
            assert torch.allclose(a, b, atol=1e-5), name


def test_languages_mix_by_temperature_with_an_english_replay_share():
    lengths = {"hi": [100] * 80, "ta": [100] * 15, "en": [100] * 5}
    docs = Dataset.from_dict({
        "input_ids": [[1] * n for lang in lengths for n in lengths[lang]],
        "lang": [lang for lang in lengths for _ in lengths[lang]],
        "length": [n for lang in lengths for n in lengths[lang]],
    })
    natural, mixture = mix(docs, temperature=1.0, replay_fraction=None, seed=0)
    assert len(natural) == 100 and {k: v["share"] for k, v in mixture.items()} == {"en": 0.05, "hi": 0.8, "ta": 0.15}

    flatter, mixture = mix(docs, temperature=3.0, replay_fraction=0.2, seed=0)
    shares = {k: v["share"] for k, v in mixture.items()}
    assert shares["en"] == pytest.approx(0.2, abs=0.01)  # English replay: 4x its corpus share, by repeating
    # hi and ta split the other 80% as (share)^(1/3): 0.8^(1/3) : 0.15^(1/3)
    ratio = (0.8 / 0.15) ** (1 / 3)
    assert shares["hi"] / shares["ta"] == pytest.approx(ratio, rel=0.05)
    assert sum(v["mixed_tokens"] for v in mixture.values()) == pytest.approx(10000, rel=0.01)
    counts = Counter(flatter["lang"])
    assert counts["en"] == 20  # each of the 5 English documents four times
    assert mix(docs, 3.0, 0.2, seed=0)[0]["lang"] == flatter["lang"]  # deterministic for a seed
    with pytest.raises(ValueError, match="English"):
        mix(docs.filter(lambda r: r["lang"] != "en"), 1.0, 0.2, seed=0)


def test_packed_data_is_built_once_and_keyed_by_what_it_depends_on(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir, monkeypatch
):
    from training import config, packing

    monkeypatch.setenv("INDICTUNE_CACHE", str(tmp_path / "cache"))
    argv = train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir)
    args, training_args, _ = config.parse(argv)
    tokenizer = AutoTokenizer.from_pretrained(extended_tokenizer_dir)
    first, mixture, path = packing.packed_dataset(args, training_args, tokenizer)
    assert path.parent == tmp_path / "cache" / "packed" and set(mixture) == {"hi", "mr", "bn", "ta", "te", "en"}

    monkeypatch.setattr(packing, "build", lambda *a: pytest.fail("rebuilt although cached"))
    again, _, same = packing.packed_dataset(args, training_args, tokenizer)
    assert same == path and again["input_ids"] == first["input_ids"]

    for changed in (["--max_length", "64"], ["--languages", "hi", "--languages", "ta"], ["--replay_fraction", "0.3"]):
        args2, training_args2, _ = config.parse(argv + changed)
        assert packing.cache_key(args2, training_args2, tokenizer) != path.name
    base = AutoTokenizer.from_pretrained(tiny_base_dir)
    assert packing.cache_key(args, training_args, base) != path.name


def test_sft_trains_assistant_turns_and_the_new_rows_of_the_output_layer(tmp_path, tiny_base_dir, extended_tokenizer_dir):
    chat = tmp_path / "chat.jsonl"
    bad = [{"messages": [{"role": "user", "content": "अकेला सवाल"}]},
           {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    chat.write_text((REPO / "data/sample/chat/chat.jsonl").read_text()
                    + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bad))
    trainer = load_train_script().main([
        "--config", str(REPO / "recipes/train/demo/sft-lora.yaml"),
        "--model_name_or_path", str(tiny_base_dir), "--tokenizer_name_or_path", str(extended_tokenizer_dir),
        "--train_data", str(chat), "--output_dir", str(tmp_path / "sft"), "--max_steps", "6",
        "--lora_r", "8", "--learning_rate", "5e-3", "--logging_steps", "1", "--report_to", "none",
        "--disable_tqdm", "true",
    ])
    out = tmp_path / "sft"
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["stage"] == "sft" and lineage["chat_records"] == 12
    assert lineage["rejected"] == {"no_assistant_turn": 1, "bad_role:narrator": 1}

    tokenizer = trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    chats = [json.loads(line)["messages"] for line in (REPO / "data/sample/chat/chat.jsonl").read_text().splitlines()]
    for row, labels, messages in zip(batch["input_ids"], batch["labels"], chats):
        trained = tokenizer.decode(row[labels != -100])
        assert trained == "".join(t["content"] + tokenizer.eos_token for t in messages if t["role"] == "assistant")

    # The output layer's rows for new tokens moved: SFTTrainer's fused head would have left them untouched.
    head = trainer.model.base_model.model.lm_head.token_adapter
    assert not torch.allclose(head.trainable_tokens_delta["default"], head.trainable_tokens_original["default"])
    ids = torch.tensor([tokenizer(chats[0][1]["content"])["input_ids"]])
    with torch.no_grad():
        reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits, atol=1e-5)


def test_embedding_rows_get_their_own_learning_rate_and_throughput_is_logged(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir, "--max_steps", "1",
                      "--embedding_learning_rate", "1e-4", "--lr_scheduler_type", "constant")
    argv[argv.index("--report_to") + 1] = "tensorboard"
    trainer = load_train_script().main(argv)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_lr = {}
    for group in trainer.optimizer.param_groups:
        by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
    assert set(by_lr) == {1e-4, 5e-3}
    assert all("trainable_tokens" in n for n in by_lr[1e-4]) and all("lora_" in n for n in by_lr[5e-3])
    assert any("lm_head" in n for n in by_lr[1e-4]) and any("embed_tokens" in n for n in by_lr[1e-4])
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged[0]["tokens_per_second_per_gpu"] > 0
    events = EventAccumulator(str(next((tmp_path / "run").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"train/loss", "train/tokens_per_second_per_gpu"} <= set(events.Tags()["scalars"])


def test_a_saved_adapter_that_lost_its_weights_fails_the_check(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    from safetensors.torch import load_file, save_file

    trainer = load_train_script().main(train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir,
                                                  "--max_steps", "2"))
    out = tmp_path / "run"
    assert checkpoint.verify_saved_adapter(trainer.model, str(out), True) > 0
    saved = load_file(str(out / "adapter_model.safetensors"))
    name = next(k for k in saved if "embed_tokens" in k)
    save_file({**saved, name: torch.zeros(0)}, str(out / "adapter_model.safetensors"))  # what ZeRO-3 used to write
    with pytest.raises(checkpoint.SavedAdapterMismatch, match="zero3_save_16bit_model"):
        checkpoint.verify_saved_adapter(trainer.model, str(out), True)


def test_untrained_new_rows_are_refused(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    with pytest.raises(SystemExit, match="trainable_embeddings: none would leave"):
        load_train_script().main(train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir,
                                            "--trainable_embeddings", "none"))


def test_flops_per_token_follow_torchtitan_for_llama_3_1_8b():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    non_embedding = sum(p.numel() for p in model.parameters()) - 128256 * 4096
    assert flops_per_token(model, 8192) == 6 * non_embedding + 12 * 32 * 4096 * 8192
    assert flops_per_token(model, 8192) == pytest.approx(5.8e10, rel=0.02)  # training-anchors.md section 2.1
    model.requires_grad_(False)  # a frozen base (LoRA): no weight gradients
    assert flops_per_token(model, 8192) == 4 * non_embedding + 12 * 32 * 4096 * 8192


MODEL_RECIPES = sorted(p for p in (REPO / "recipes/train").rglob("*.yaml") if p.parent.name != "demo")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)


def tiny_model_like(family: str, tokenizer):
    """A two-layer model of the family a recipe is for (named by its folder), randomly initialised."""
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    torch.manual_seed(0)
    tiny = {**TINY, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family.startswith("gemma-2"):
        config = Gemma2Config(vocab_size=len(tokenizer), head_dim=16, query_pre_attn_scalar=16, sliding_window=32, **tiny)
    else:
        kind = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2.5": Qwen2Config}[family.split("-")[0]]
        config = kind(vocab_size=len(tokenizer), tie_word_embeddings=False, **tiny)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", MODEL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_model_recipe_trains_on_a_tiny_model_of_its_architecture(
    recipe, tmp_path, prepared_sample, base_tokenizer_dir, extended_tokenizer_dir, byte_level_tokenizer_dirs
):
    """Everything in the recipe but the model's size and the data: its LoRA targets, trainable rows,
    chat template, packing, activation checkpointing, mixing and merging, on the model's real code,
    with a tokenizer of the model's kind (byte-level BPE for Llama-3 and Qwen, SentencePiece otherwise)."""
    from data.recipe import read_yaml

    settings = read_yaml(recipe)
    if recipe.parent.name.startswith(("llama-3", "qwen")):
        base_tokenizer_dir, extended_tokenizer_dir = byte_level_tokenizer_dirs
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": settings.get("trainable_tokens", [])})
    base = tmp_path / "base"
    tiny_model_like(recipe.parent.name, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    argv = ["--config", str(recipe), "--model_name_or_path", str(base), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2", "--max_length", "64", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--bf16", "false", "--dtype", "float32", "--report_to", "none",
            "--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"]
    if settings["stage"] == "sft":
        argv += ["--train_data", str(REPO / "data/sample/chat/chat.jsonl")]
    else:
        argv += ["--train_data", str(prepared_sample[0])]
        if "tokenizer_name_or_path" in settings:
            argv += ["--tokenizer_name_or_path", str(extended_tokenizer_dir)]
        if "replay_data" in settings:
            argv += ["--replay_data", str(prepared_sample[0])]
    trainer = load_train_script().main(argv)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # trained, no NaN
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    if settings.get("merge_adapter"):
        assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()


def test_sft_refuses_chat_tokens_a_base_model_never_trained(tmp_path, base_tokenizer_dir, extended_tokenizer_dir):
    """Llama-3 base models ship near-zero rows for their chat-template tokens; training on them without
    training those rows gives NaNs or replies that never end."""
    template_tokens = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": template_tokens})
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():
        for token in template_tokens:
            model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids(token)] = 0.0
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    argv = ["--config", str(REPO / "recipes/train/llama-3.1-8b/hindi-sft.yaml"), "--model_name_or_path", str(base),
            "--train_data", str(REPO / "data/sample/chat/chat.jsonl"), "--output_dir", str(tmp_path / "sft"),
            "--max_steps", "1", "--bf16", "false", "--dtype", "float32", "--activation_checkpointing", "false",
            "--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "2"]
    recipe = REPO / "recipes/train/llama-3.1-8b/hindi-sft.yaml"
    without = tmp_path / "without-trainable-tokens.yaml"
    without.write_text("".join(line for line in recipe.read_text().splitlines(True) if "trainable_tokens" not in line))
    with pytest.raises(SystemExit, match=r"never trained: \['<\|start_header_id\|>', '<\|end_header_id\|>', '<\|eot_id\|>'\]"):
        load_train_script().main(["--config", str(without), *argv[2:]])
    trainer = load_train_script().main(argv)  # the recipe lists them in trainable_tokens
    assert trainer.state.global_step == 1

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
import yaml
from conftest import tiny_llama
from datasets import Dataset
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
from trl import SFTConfig

from indictune.core.hashing import folder_sha256
from indictune.training import checkpoint
from indictune.training.packing import PackedCollator, mix, pack, tokenize
from indictune.training.throughput import flops_per_token

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
    rows = [
        {"input_ids": docs[0] + docs[1] + docs[2], "seq_lengths": [7, 12, 5]},
        {"input_ids": docs[3] + docs[4], "seq_lengths": [9, 4]},
    ]
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
        "--config",
        str(REPO / "recipes/train/demo/cpt-lora.yaml"),
        "--model_name_or_path",
        str(base_dir),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        "--train_data",
        str(prepared),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "6",
        "--max_length",
        "128",
        "--per_device_train_batch_size",
        "4",
        "--logging_steps",
        "1",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--learning_rate",
        "5e-3",
        "--warmup_steps",
        "0",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
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
    assert lineage["base_weights_sha256"] == folder_sha256(tiny_base_dir) and lineage["resumed_from"] is None
    assert lineage["data"] and all(len(d["sha256"]) == 64 for d in lineage["data"])
    assert (out / "recipe.yaml").is_file() and (out / "adapter_model.safetensors").stat().st_size > 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0]


def test_full_training_from_a_config(tmp_path, prepared_sample, base_tokenizer_dir):
    train = load_train_script()
    trainer = train.main(
        [
            "--config",
            str(REPO / "recipes/train/demo/base-pretrain.yaml"),
            "--tokenizer_name_or_path",
            str(base_tokenizer_dir),
            "--train_data",
            str(prepared_sample[0]),
            "--output_dir",
            str(tmp_path / "base"),
            "--max_steps",
            "3",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert (tmp_path / "base" / "model.safetensors").is_file() and (tmp_path / "base" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "base" / "lineage.json").read_text())["base_weights_sha256"] is None  # no base


def test_a_hub_model_not_on_this_machine_has_no_weights_to_hash():
    from indictune.training.lineage import local_model_folder

    assert local_model_folder("indictune-tests/no-such-model") is None  # HF_HUB_OFFLINE, as on a cluster node


def losses_by_step(history) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


@pytest.mark.parametrize("mode", ["new_rows", "full"])
def test_tied_embeddings_train_as_one_and_reload(
    mode, tmp_path, prepared_sample, base_tokenizer_dir, extended_tokenizer_dir
):
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    base = tmp_path / "tied-base"
    tiny_llama(len(tokenizer), tie=True).save_pretrained(base)
    tokenizer.save_pretrained(base)
    trainer = load_train_script().main(
        train_argv(
            tmp_path,
            prepared_sample[0],
            base,
            extended_tokenizer_dir,
            "--trainable_embeddings",
            mode,
            "--max_steps",
            "3",
        )
    )
    model = trainer.model.eval()
    ids = torch.tensor([AutoTokenizer.from_pretrained(extended_tokenizer_dir)("तमिल और हिंदी")["input_ids"]])
    with torch.no_grad():
        reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run").eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_a_killed_run_resumes_on_the_same_loss_curve(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir, capsys
):
    argv = train_argv(
        tmp_path,
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--max_steps",
        "24",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--lora_dropout",
        "0.1",
    )
    uninterrupted = load_train_script().main(
        argv[: argv.index("--output_dir") + 1] + [str(tmp_path / "whole")] + argv[argv.index("--output_dir") + 2 :]
    )
    expected = losses_by_step(uninterrupted.state.log_history)
    assert len(expected) == 24

    # The same run as a process of its own, killed as soon as its first checkpoint is on disk with its recipe.
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "scripts/train.py", *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not list(run.glob("checkpoint-*/recipe.yaml")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    assert not (run / "adapter_model.safetensors").exists()
    killed_at = max(int(path.parent.name.split("-")[1]) for path in run.glob("checkpoint-*/trainer_state.json"))
    last = str(run / f"checkpoint-{killed_at}")
    assert killed_at < 24

    capsys.readouterr()
    resumed = load_train_script().main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"resuming from {last} (step {killed_at}), trained with the same recipe"
    assert printed[-1] == f"trained {24 - killed_at} steps; saved to {run}"
    after = {step: loss for step, loss in losses_by_step(resumed.state.log_history).items() if step > killed_at}
    assert sorted(after) == list(range(killed_at + 1, 25))
    assert max(abs(after[step] - expected[step]) for step in after) <= 1e-3
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["resumed_from"] == {"checkpoint": last, "step": killed_at, "changed": {}}


def test_a_changed_recipe_is_not_resumed_unless_asked_and_then_recorded(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir, capsys
):
    from safetensors.torch import load_file

    train = load_train_script()
    argv = train_argv(
        tmp_path,
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    )
    train.main(argv)
    run = tmp_path / "run"
    adapter = load_file(str(run / "adapter_model.safetensors"))
    assert yaml.safe_load((run / "checkpoint-2" / "recipe.yaml").read_text())["learning_rate"] == 5e-3
    assert json.loads((run / "checkpoint-2" / "lineage.json").read_text())["resumed_from"] is None

    # The same command again: the last checkpoint is the end of training, and the run says so.
    capsys.readouterr()
    again = train.main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0]
        == f"{run}/checkpoint-4 (step 4) already finished training; nothing to train: its weights become the outputs"
    )
    assert printed[-1] == f"trained 0 steps; saved to {run}"
    assert again.state.global_step == 4
    assert all(torch.equal(v, load_file(str(run / "adapter_model.safetensors"))[k]) for k, v in adapter.items())

    # A new learning rate into the same output_dir stops before training and leaves the outputs as they were.
    before = {name: (run / name).read_bytes() for name in ("recipe.yaml", "lineage.json", "adapter_model.safetensors")}
    with pytest.raises(SystemExit) as refused:
        train.main(argv + ["--learning_rate", "1e-3"])
    message = str(refused.value)
    assert message.startswith(
        f"error: {run}/checkpoint-4 was trained differently from this run: learning_rate is 0.005 there, 0.001 now."
    )
    assert f"pass --resume_from_checkpoint {run}/checkpoint-4" in message and "choose a new output_dir" in message
    assert {name: (run / name).read_bytes() for name in before} == before

    # Asked for by name, the checkpoint resumes, and what changed is in the lineage of every later save.
    capsys.readouterr()
    resumed = train.main(argv + ["--learning_rate", "1e-3", "--resume_from_checkpoint", str(run / "checkpoint-2")])
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0] == f"resuming from {run}/checkpoint-2 (step 2) as asked, with changes: learning_rate: 0.005 -> 0.001"
    )
    assert printed[-1] == f"trained 2 steps; saved to {run}" and resumed.state.global_step == 4
    expected = {
        "checkpoint": str(run / "checkpoint-2"),
        "step": 2,
        "changed": {"learning_rate": {"checkpoint": 5e-3, "now": 1e-3}},
    }
    for folder in (run, run / "checkpoint-4"):
        assert json.loads((folder / "lineage.json").read_text())["resumed_from"] == expected
        assert yaml.safe_load((folder / "recipe.yaml").read_text())["learning_rate"] == 1e-3


def write_checkpoint(folder: Path, recipe: dict | None, lineage: dict | None, step: int = 4, max_steps: int = 8):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    if recipe is not None:
        (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        (folder / "lineage.json").write_text(json.dumps(lineage))


def test_resuming_compares_everything_that_changes_training_and_nothing_else(tmp_path):
    recipe = {"learning_rate": 1e-3, "seed": 42, "output_dir": str(tmp_path), "logging_steps": 10, "save_steps": 4}
    lineage = {
        "base_weights_sha256": "b" * 64,
        "tokenizer_sha256": "t" * 64,
        "world_size": 1,
        "data": [{"file": "corpus/hi.parquet", "sha256": "d" * 64}],
        "code_commit": "abc",
    }
    write_checkpoint(tmp_path / "checkpoint-4", recipe, lineage)
    (tmp_path / "checkpoint-6").mkdir()  # cut off before trainer_state.json

    # Where outputs, logs and checkpoints go changes nothing trained, nor does the code commit.
    moved = {**recipe, "output_dir": "elsewhere", "logging_steps": 1, "save_steps": 2}
    resume = checkpoint.plan_resume(str(tmp_path), None, moved, {**lineage, "code_commit": "def"})
    assert (resume.checkpoint, resume.step, resume.changed, resume.finished) == (
        str(tmp_path / "checkpoint-4"),
        4,
        {},
        False,
    )
    assert resume.announcement().endswith(f"; skipped {tmp_path / 'checkpoint-6'}: incomplete, cut off while saving")

    changes = {
        "seed": ({**recipe, "seed": 1}, lineage),
        "neftune_noise_alpha": ({**recipe, "neftune_noise_alpha": None}, lineage),  # a key the checkpoint lacks
        "base_weights_sha256": (recipe, {**lineage, "base_weights_sha256": "c" * 64}),
        "tokenizer_sha256": (recipe, {**lineage, "tokenizer_sha256": "u" * 64}),
        "world_size": (recipe, {**lineage, "world_size": 8}),
        "sha256 of corpus/hi.parquet": (
            recipe,
            {**lineage, "data": [{"file": "corpus/hi.parquet", "sha256": "e" * 64}]},
        ),
    }
    for key, (recipe_now, lineage_now) in changes.items():
        with pytest.raises(checkpoint.RecipeChanged, match=f"{key} is "):
            checkpoint.plan_resume(str(tmp_path), None, recipe_now, lineage_now)
        explicit = checkpoint.plan_resume(str(tmp_path), str(tmp_path / "checkpoint-4"), recipe_now, lineage_now)
        assert list(explicit.changed) == [key]

    # A checkpoint from before checkpoints carried their recipe is resumed only when named.
    older = tmp_path / "older"
    write_checkpoint(older / "checkpoint-8", None, None, step=8)
    with pytest.raises(checkpoint.CheckpointUnverified, match="cannot be checked.*--resume_from_checkpoint"):
        checkpoint.plan_resume(str(older), None, recipe, lineage)
    named = checkpoint.plan_resume(str(older), str(older / "checkpoint-8"), recipe, lineage)
    assert named.changed is None and "cannot be verified" in named.announcement()
    with pytest.raises(checkpoint.ResumeRefused, match="not a complete checkpoint"):
        checkpoint.plan_resume(str(older), str(tmp_path / "checkpoint-6"), recipe, lineage)
    assert checkpoint.plan_resume(str(tmp_path / "fresh"), None, recipe, lineage) is None


def test_merged_model_equals_the_trained_adapter_and_carries_its_lineage(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    import logging

    from transformers import AutoModelForCausalLM

    logging.Logger.warning_once.cache_clear()  # transformers warns once per process; an earlier test may have
    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        trainer = load_train_script().main(
            train_argv(
                tmp_path,
                prepared_sample[0],
                tiny_base_dir,
                extended_tokenizer_dir,
                "--max_steps",
                "2",
                "--merge_adapter",
                "true",
            )
        )
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert not [r for r in warned if "multivariate normal" in r.getMessage()]  # the new rows are not drawn at random

    out, merged = tmp_path / "run", tmp_path / "run" / "merged"
    lineage = json.loads((out / "lineage.json").read_text())
    merged_lineage = json.loads((merged / "lineage.json").read_text())
    assert merged_lineage.pop("merged_from_adapter") == str(out)
    assert {k: v for k, v in merged_lineage.items() if k != "created"} == {
        k: v for k, v in lineage.items() if k != "created"
    }
    assert (merged / "recipe.yaml").read_text() == (out / "recipe.yaml").read_text()

    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = torch.tensor([tokenizer((REPO / "data/sample/heldout/ta.txt").read_text().splitlines()[0])["input_ids"]])
    assert ids.max() >= lineage["new_token_ids"][0]  # the text uses the trained new rows
    with torch.no_grad():
        reloaded = AutoModelForCausalLM.from_pretrained(merged).eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, trainer.model.eval()(input_ids=ids).logits, atol=1e-4)


def test_gradient_accumulation_matches_one_large_batch(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    def run(name, batch, accumulate):
        argv = train_argv(
            tmp_path / name,
            prepared_sample[0],
            tiny_base_dir,
            extended_tokenizer_dir,
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            str(batch),
            "--gradient_accumulation_steps",
            str(accumulate),
        )
        return load_train_script().main(argv)

    whole, accumulated = run("whole", 8, 1), run("accumulated", 2, 4)
    assert losses_by_step(whole.state.log_history) == pytest.approx(
        losses_by_step(accumulated.state.log_history), abs=1e-3
    )
    for (name, a), (_, b) in zip(whole.model.named_parameters(), accumulated.model.named_parameters()):
        if a.requires_grad:  # summed in another order, after three Adam steps: ~1e-5 apart, far below a step (5e-3)
            assert torch.allclose(a, b, atol=5e-5), name


def test_languages_mix_by_temperature_with_an_english_replay_share():
    lengths = {"hi": [100] * 80, "ta": [100] * 15, "en": [100] * 5}
    docs = Dataset.from_dict(
        {
            "input_ids": [[1] * n for lang in lengths for n in lengths[lang]],
            "lang": [lang for lang in lengths for _ in lengths[lang]],
            "length": [n for lang in lengths for n in lengths[lang]],
        }
    )
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
    from indictune.training import config, packing

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


def test_sft_trains_assistant_turns_and_the_new_rows_of_the_output_layer(
    tmp_path, tiny_base_dir, extended_tokenizer_dir
):
    chat = tmp_path / "chat.jsonl"
    bad = [
        {"messages": [{"role": "user", "content": "अकेला सवाल"}]},
        {"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
    ]
    chat.write_text(
        (REPO / "data/sample/chat/chat.jsonl").read_text()
        + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bad)
    )
    trainer = load_train_script().main(
        [
            "--config",
            str(REPO / "recipes/train/demo/sft-lora.yaml"),
            "--model_name_or_path",
            str(tiny_base_dir),
            "--tokenizer_name_or_path",
            str(extended_tokenizer_dir),
            "--train_data",
            str(chat),
            "--output_dir",
            str(tmp_path / "sft"),
            "--max_steps",
            "6",
            "--lora_r",
            "8",
            "--learning_rate",
            "5e-3",
            "--logging_steps",
            "1",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]
    )
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


def test_embedding_rows_get_their_own_learning_rate_and_throughput_is_logged(
    tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = train_argv(
        tmp_path,
        prepared_sample[0],
        tiny_base_dir,
        extended_tokenizer_dir,
        "--max_steps",
        "1",
        "--embedding_learning_rate",
        "1e-4",
        "--lr_scheduler_type",
        "constant",
    )
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

    trainer = load_train_script().main(
        train_argv(tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir, "--max_steps", "2")
    )
    out = tmp_path / "run"
    assert checkpoint.verify_saved_adapter(trainer.model, str(out), True) > 0
    saved = load_file(str(out / "adapter_model.safetensors"))
    name = next(k for k in saved if "embed_tokens" in k)
    save_file({**saved, name: torch.zeros(0)}, str(out / "adapter_model.safetensors"))  # what ZeRO-3 used to write
    with pytest.raises(checkpoint.SavedAdapterMismatch, match="zero3_save_16bit_model"):
        checkpoint.verify_saved_adapter(trainer.model, str(out), True)


def test_untrained_new_rows_are_refused(tmp_path, prepared_sample, tiny_base_dir, extended_tokenizer_dir):
    with pytest.raises(SystemExit, match="trainable_embeddings: none would leave"):
        load_train_script().main(
            train_argv(
                tmp_path, prepared_sample[0], tiny_base_dir, extended_tokenizer_dir, "--trainable_embeddings", "none"
            )
        )


def test_the_library_raises_typed_errors_and_the_scripts_exit_with_them(tmp_path, tiny_base_dir):
    from indictune.core.recipe import RecipeError
    from indictune.training import config, model

    recipe = str(REPO / "recipes/train/demo/cpt-lora.yaml")
    argv = ["--config", recipe, "--replay_fraction", "1.5"]
    expected = f"{recipe}: replay_fraction must be between 0 and 1, got 1.5"
    with pytest.raises(RecipeError) as raised:
        config.parse(argv)
    assert str(raised.value) == expected
    for script in ("train", "pack_data"):
        spec = importlib.util.spec_from_file_location(script, REPO / "scripts" / f"{script}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit) as exited:
            module.main(argv)
        assert str(exited.value) == f"error: {expected}"

    args, training_args, model_args = config.parse(
        [
            "--config",
            recipe,
            "--model_name_or_path",
            str(tiny_base_dir),
            "--trainable_embeddings",
            "full",
            "--trainable_tokens",
            "<s>",
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    with pytest.raises(model.TrainingSetupError, match=r"^trainable_tokens needs trainable_embeddings: new_rows"):
        model.lora_config(model_args, args, tiny_llama(len(tokenizer)), tokenizer, [])


def test_importing_the_model_set_up_leaves_peft_alone_until_asked():
    probe = (
        "from peft.tuners.trainable_tokens.layer import TrainableTokensLayer as Layer\n"
        "peft_own = Layer._collect_token_weights\n"
        "from indictune.training import model\n"
        "assert Layer._collect_token_weights is peft_own\n"
        "model.patch_trainable_tokens_for_cpu()\n"
        "model.patch_trainable_tokens_for_cpu()\n"
        "import torch\n"
        "patched = Layer._collect_token_weights is model._collect_token_rows_on_any_device\n"
        "assert patched != torch.cuda.is_available(), patched\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_only_the_main_process_logs_progress_and_every_process_warns(capsys):
    from indictune.core.log import get_logger, setup_logging

    logger = get_logger("tests")
    setup_logging(main_process=False)
    logger.info("progress on another rank")
    logger.warning("a warning on another rank")
    setup_logging(main_process=True)  # again: the handler is replaced, not added twice
    logger.info("progress")
    get_logger("indictune.training.tests").info("a library's progress")
    assert capsys.readouterr().out.splitlines() == ["a warning on another rank", "progress", "a library's progress"]


def test_flops_per_token_follow_torchtitan_for_llama_3_1_8b():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    non_embedding = sum(p.numel() for p in model.parameters()) - 128256 * 4096
    assert flops_per_token(model, 8192) == 6 * non_embedding + 12 * 32 * 4096 * 8192
    assert flops_per_token(model, 8192) == pytest.approx(5.8e10, rel=0.02)  # training-anchors.md section 2.1
    model.requires_grad_(False)  # a frozen base (LoRA): no weight gradients
    assert flops_per_token(model, 8192) == 4 * non_embedding + 12 * 32 * 4096 * 8192


MODEL_RECIPES = sorted(p for p in (REPO / "recipes/train").rglob("*.yaml") if p.parent.name != "demo")
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def tiny_model_like(family: str, tokenizer):
    """A two-layer model of the family a recipe is for (named by its folder), randomly initialised."""
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config

    torch.manual_seed(0)
    tiny = {**TINY, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family.startswith("gemma-2"):
        config = Gemma2Config(
            vocab_size=len(tokenizer), head_dim=16, query_pre_attn_scalar=16, sliding_window=32, **tiny
        )
    elif family.startswith("mixtral"):
        config = MixtralConfig(
            vocab_size=len(tokenizer), num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False, **tiny
        )
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
    from indictune.core.recipe import read_yaml

    settings = read_yaml(recipe)
    if recipe.parent.name.startswith(("llama-3", "qwen")):
        base_tokenizer_dir, extended_tokenizer_dir = byte_level_tokenizer_dirs
    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": settings.get("trainable_tokens", [])})
    base = tmp_path / "base"
    tiny_model_like(recipe.parent.name, tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    argv = [
        "--config",
        str(recipe),
        "--model_name_or_path",
        str(base),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--max_length",
        "64",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "1",
        "--bf16",
        "false",
        "--dtype",
        "float32",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1",
    ]
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
    if settings.get("router_aux_loss_coef"):  # an MoE recipe: the router loss trains and is logged
        assert all(h["router_aux_loss"] > 0 for h in trainer.state.log_history if "loss" in h)
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
    argv = [
        "--config",
        str(REPO / "recipes/train/llama-3.1-8b/hindi-sft.yaml"),
        "--model_name_or_path",
        str(base),
        "--train_data",
        str(REPO / "data/sample/chat/chat.jsonl"),
        "--output_dir",
        str(tmp_path / "sft"),
        "--max_steps",
        "1",
        "--bf16",
        "false",
        "--dtype",
        "float32",
        "--activation_checkpointing",
        "false",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--per_device_train_batch_size",
        "2",
    ]
    recipe = REPO / "recipes/train/llama-3.1-8b/hindi-sft.yaml"
    without = tmp_path / "without-trainable-tokens.yaml"
    without.write_text("".join(line for line in recipe.read_text().splitlines(True) if "trainable_tokens" not in line))
    with pytest.raises(
        SystemExit, match=r"never trained: \['<\|start_header_id\|>', '<\|end_header_id\|>', '<\|eot_id\|>'\]"
    ):
        load_train_script().main(["--config", str(without), *argv[2:]])
    trainer = load_train_script().main(argv)  # the recipe lists them in trainable_tokens
    assert trainer.state.global_step == 1

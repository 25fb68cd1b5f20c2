"""Mixture-of-experts training: MoE blocks found in every architecture transformers ships, ZeRO-3 leaves, the
router loss added once at the recipe's weight, LoRA on fused experts, and a Mixtral trained on two ranks."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_mixtral
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from indictune.training import moe

REPO = Path(__file__).resolve().parent.parent
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    num_local_experts=4,
    num_experts=4,
    n_routed_experts=4,
    head_dim=16,
    first_k_dense_replace=0,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
)


@pytest.mark.parametrize(
    "model_type", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "gpt_oss", "granitemoe", "phimoe"]
)
def test_every_moe_architecture_has_its_blocks_found(model_type):
    config = AutoConfig.for_model(model_type)
    for key, value in TINY.items():
        if hasattr(config, key):
            setattr(config, key, value)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = moe.moe_blocks(model)
    assert [name.split(".")[2] for name, _ in blocks] == ["0", "1"]  # one per layer
    assert all(hasattr(block, "experts") for _, block in blocks) and moe.is_moe(model)


def test_a_dense_model_has_no_moe_blocks():
    from conftest import tiny_llama

    assert not moe.is_moe(tiny_llama(64)) and moe.moe_blocks(tiny_llama(64)) == []


def test_lora_names_written_for_separate_experts_train_the_fused_experts():
    """transformers 4.x recipes name Mixtral's experts w1/w2/w3; in transformers 5 those modules are gone, and peft
    would quietly train attention only."""
    from peft import get_peft_model
    from trl import ModelConfig

    from indictune.training.config import IndictuneArguments
    from indictune.training.model import TrainingSetupError, lora_config

    model = tiny_mixtral(64)
    NO_ROWS = IndictuneArguments(trainable_embeddings="none")  # noqa: N806
    settings = dict(use_peft=True, lora_r=4, lora_target_modules=["q_proj", "v_proj", "w1", "w2", "w3"])
    config = lora_config(ModelConfig(**settings, lora_dropout=0.0), NO_ROWS, model, None, [])
    assert config.target_parameters == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    trained = {name for name, p in get_peft_model(model, config).named_parameters() if p.requires_grad}
    assert sum(".experts." in name for name in trained) == 2 * 2 * 2  # A and B, two parameters, two layers
    with pytest.raises(TrainingSetupError, match="lora_dropout is 0.05.*set lora_dropout: 0"):
        lora_config(ModelConfig(**settings, lora_dropout=0.05), NO_ROWS, tiny_mixtral(64), None, [])


def test_the_router_loss_weighs_what_the_recipe_says_under_gradient_accumulation(tmp_path):
    """transformers adds coef x aux_loss inside the forward and Trainer then neither divides that by the
    accumulation steps nor leaves it out of its rank scaling (transformers #48690): with 2 micro-batches the
    router would train at twice the weight. The gradient of one step must be that of the mean language-model
    loss plus coef x the micro-batches' mean router loss."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from indictune.training.trainer import PretrainingTrainer

    coef = 0.5  # large, so a wrong weight shows
    torch.manual_seed(1)
    row = torch.randint(3, 64, (24,)).tolist()
    rows = Dataset.from_dict({"input_ids": [row] * 4})  # alike, so each micro-batch has the same router loss

    class GradientsBeforeTheStep(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.router = model.model.layers[0].mlp.gate.weight.grad.clone()

    model = tiny_mixtral(64).train()
    reference = tiny_mixtral(64).train()
    assert moe.router_aux_loss_coefficient(model, coef) == coef
    seen = GradientsBeforeTheStep()
    trainer = PretrainingTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=1,
            learning_rate=1e-3,
            max_grad_norm=0.0,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=1,
            bf16=False,
            use_cpu=True,
        ),
        train_dataset=rows,
        data_collator=DataCollatorForLanguageModeling(pad_token_id=0),
        callbacks=[seen],
    )
    trainer.configure(None, None, coef)
    trainer.train()

    batch = torch.tensor([row] * 2)
    out = reference(input_ids=batch, labels=batch, output_router_logits=True)
    lm_loss = out.loss - reference.router_aux_loss_coef * out.aux_loss  # each micro-batch alike: their mean
    (lm_loss + coef * out.aux_loss).backward()
    expected = reference.model.layers[0].mlp.gate.weight.grad
    assert torch.allclose(seen.router, expected, rtol=1e-4, atol=1e-7)
    assert trainer.state.log_history[0]["router_aux_loss"] == pytest.approx(float(out.aux_loss), rel=1e-4)


@pytest.mark.slow
def test_a_mixtral_trains_with_lora_on_its_experts_under_zero3_on_two_ranks(
    tmp_path, prepared_sample, tiny_mixtral_dir, extended_tokenizer_dir
):
    from test_distributed import launch

    out = tmp_path / "mixtral"
    seen = launch(
        "zero3",
        29550,
        out,
        prepared_sample[0],
        tiny_mixtral_dir,
        extended_tokenizer_dir,
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--replay_data",
        str(prepared_sample[0]),
        "--embedding_learning_rate",
        "5e-3",
        "--bf16",
        "false",
        "--dtype",
        "float32",
        "--activation_checkpointing",
        "false",
        recipe="recipes/train/mixtral-8x7b/indic-cpt.yaml",
        timeout=300,
    )
    assert seen["world_size"] == 2 and seen["sharded"] and len(seen["losses"]) == 6
    steps = [h for h in seen["log_history"] if "loss" in h]
    assert all(h["router_aux_loss"] > 0 and 0 <= h["expert_load_min"] <= 1 <= h["expert_load_max"] for h in steps)
    load = json.loads((out / "expert_load.json").read_text())
    assert len(load["relative_load"]) == 2 and all(len(layer) == 4 for layer in load["relative_load"])
    routed = [torch.load(out / f"routing-{rank}.pt") for rank in (0, 1)]
    assert not torch.equal(routed[0], routed[1])  # the ranks sent their tokens to different experts

    saved = load_file(str(out / "adapter_model.safetensors"))
    experts = {k for k in saved if ".experts." in k}
    assert experts and all(saved[k].norm() > 0 for k in experts if "lora_B" in k)
    assert any("trainable_tokens_delta" in k for k in saved)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # a fresh base, resized and patched
    with torch.no_grad():
        logits = reloaded(input_ids=seen["input_ids"]).logits
    assert torch.allclose(logits, seen["logits"], atol=1e-5)


@pytest.fixture(scope="session")
def separate_experts_dir(base_tokenizer_dir, tmp_path_factory) -> Path:
    """A remote-code model (tests/remote_moe) whose experts are separate modules that run only for their tokens."""
    import shutil
    import sys

    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO / "tests" / "remote_moe"))
    from modeling_list_moe import ListMoeConfig, ListMoeForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_tokenizer_dir)
    torch.manual_seed(0)
    config = ListMoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config.auto_map = {
        "AutoConfig": "modeling_list_moe.ListMoeConfig",
        "AutoModelForCausalLM": "modeling_list_moe.ListMoeForCausalLM",
    }
    out = tmp_path_factory.mktemp("models") / "separate-experts"
    ListMoeForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(REPO / "tests" / "remote_moe" / "modeling_list_moe.py", out)
    return out


@pytest.mark.slow
def test_zero3_needs_moe_blocks_as_leaves_when_experts_run_only_for_their_tokens(
    tmp_path, prepared_sample, separate_experts_dir, extended_tokenizer_dir
):
    """Separate expert modules that run only when routed to (transformers 4.x, remote-code MoE models): ranks
    whose tokens chose different experts fetch different parameters. With each MoE block a ZeRO-3 leaf the run
    trains; without, the ranks' gathers no longer match and the run dies (gloo aborts on the mismatch; NCCL waits
    for ever, the hang users report)."""
    from test_distributed import launch

    args = (
        prepared_sample[0],
        separate_experts_dir,
        extended_tokenizer_dir,
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--trust_remote_code",
        "true",
    )
    seen = launch("zero3", 29560, tmp_path / "leaves", *args, timeout=300)
    assert seen["sharded"] and len(seen["losses"]) == 6 and seen["losses"][-1] < seen["losses"][0]
    assert "MoE blocks fetched whole under ZeRO-3: ListMoeBlock" in seen["stdout"]
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "leaves", trust_remote_code=True).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=seen["input_ids"]).logits, seen["logits"], atol=1e-5)

    failed = launch(
        "zero3", 29561, tmp_path / "no-leaves", *args, timeout=300, env={"WITHOUT_ZERO3_LEAVES": "1"}, check=False
    )
    assert failed["returncode"] != 0
    assert "all_gather" in failed["stderr"]  # it died in a parameter fetch

"""Continued pretraining (stage: cpt) or chat SFT (stage: sft) with LoRA or full fine-tuning.

    accelerate launch --config_file recipes/accelerate/<setup>.yaml scripts/train.py \
        --config recipes/train/<model>/<recipe>.yaml [--learning_rate 1e-4 ...]

cpt packs prepared documents to max_length without letting them attend to each other, with languages
mixed by temperature and an optional English replay share. sft trains on chat data through TRL's
SFTTrainer, with the loss on assistant turns. With an extended tokenizer the model is resized and the
new rows initialised from the base tokenizer's pieces; with LoRA those rows train too
(trainable_embeddings). A run resumes from the last checkpoint in output_dir if that was trained with
the same recipe, and stops before training if not; after saving, the adapter on disk is checked against
the trained weights.
"""

from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

from indictune.core.log import get_logger, setup_logging
from indictune.core.recipe import RecipeError
from indictune.data.corpus import parquet_files
from indictune.training import checkpoint, config, lineage, memory, moe
from indictune.training.data import load_chat
from indictune.training.model import (
    TrainingSetupError,
    fit_to_tokenizer,
    load_model,
    load_tokenizer,
    lora_config,
    require_trained_tokens,
    with_adapter,
)
from indictune.training.packing import collator, packed_dataset
from indictune.training.trainer import ChatTrainer, PretrainingTrainer

logger = get_logger("train")


def main(argv: list[str] | None = None):
    try:
        return train(argv)
    except (RecipeError, TrainingSetupError, moe.MoESetupError, memory.PlanDoesNotFit, checkpoint.ResumeRefused) as err:
        raise SystemExit(f"error: {err}") from None


def train(argv: list[str] | None):
    args, training_args, model_args = config.parse(argv)
    # The recipe's log_level and log_level_replica (transformers' keys) set transformers' and datasets' verbosity.
    setup_logging(training_args.process_index == 0, library_level=training_args.get_process_log_level())
    if args.stage == "cpt":
        training_args.remove_unused_columns = False  # the collator needs seq_lengths to restart position ids
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(args, model_args, training_args)
    # Before the weights load: a plan that does not fit the GPUs stops here, with what to change.
    try:
        planned = memory.plan_for_this_run(args, training_args, model_args, tokenizer)  # None without a GPU
    except memory.PlanError as err:
        planned = None
        logger.warning("no memory plan for this run: %s", err)
    if planned:
        memory.check(*planned)
    model, base_tokenizer = load_model(args, model_args, training_args, tokenizer)
    new_token_ids = fit_to_tokenizer(model, tokenizer, base_tokenizer)
    router_aux_loss_coef = moe.router_aux_loss_coefficient(model, training_args.router_aux_loss_coef)
    if is_deepspeed_zero3_enabled() and moe.is_moe(model):
        logger.info("MoE blocks fetched whole under ZeRO-3: %s", ", ".join(moe.register_zero3_leaves(model)))
    peft_config = lora_config(model_args, args, model, tokenizer, new_token_ids)
    if peft_config is not None:
        model = with_adapter(model, peft_config, training_args)

    if args.stage == "cpt":
        train_dataset, mixture, cache = packed_dataset(args, training_args, tokenizer)
        data_files, extra = parquet_files(args.train_data + args.replay_data), {"mixture": mixture}
    else:
        train_dataset, rejected = load_chat(args.train_data)
        data_files, extra = args.train_data, {"chat_records": len(train_dataset), "rejected": dict(rejected)}

    recipe = lineage.resolved_recipe(args, training_args, model_args)
    record = lineage.record(args, training_args, model_args, tokenizer, new_token_ids, data_files, **extra)
    resume = checkpoint.plan_resume(training_args.output_dir, training_args.resume_from_checkpoint, recipe, record)
    record["resumed_from"] = resume.resumed_from() if resume else None
    if resume:
        logger.info(resume.announcement())

    if args.stage == "cpt":
        trainer = PretrainingTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            data_collator=collator(tokenizer, model, training_args),
            processing_class=tokenizer,
        )
        logger.info("training on %d packed rows from %s", len(train_dataset), cache)
    else:
        trainer = ChatTrainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer)
        if rejected:
            logger.info("rejected chat records: %s", dict(rejected))
        require_trained_tokens(trainer.model, tokenizer, trainer.train_dataset, peft_config)
    trainer.configure(args.embedding_learning_rate, args.peak_tflops_per_gpu, router_aux_loss_coef)
    trainer.add_callback(checkpoint.RecipeInCheckpoints(record, recipe))

    trainer.train(resume_from_checkpoint=resume.checkpoint if resume else None)
    trained_steps = trainer.state.global_step - (resume.step if resume else 0)

    trainer.save_model(training_args.output_dir)
    is_main = trainer.accelerator.is_main_process
    if peft_config is not None:
        checkpoint.verify_saved_adapter(trainer.model, training_args.output_dir, is_main)
    if is_main:
        lineage.write(training_args.output_dir, record, recipe)
        if args.merge_adapter and peft_config is not None:
            checkpoint.merge(
                training_args.output_dir, tokenizer, model.dtype, training_args.trust_remote_code, record, recipe
            )
        print(f"trained {trained_steps} steps; saved to {training_args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    main()

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

from accelerate import PartialState
from peft import get_peft_model
from transformers import AutoTokenizer, set_seed

from indictune.training import checkpoint, config, lineage
from indictune.data.corpus import parquet_files
from indictune.training.data import load_chat
from indictune.training.model import fit_to_tokenizer, load_model, lora_config, require_trained_tokens
from indictune.training.packing import collator, packed_dataset
from indictune.training.trainer import ChatTrainer, PretrainingTrainer


def main(argv: list[str] | None = None):
    args, training_args, model_args = config.parse(argv)
    if args.stage == "cpt":
        training_args.remove_unused_columns = False  # the collator needs seq_lengths to restart position ids
    set_seed(training_args.seed)

    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name_or_path or model_args.model_name_or_path,
        trust_remote_code=training_args.trust_remote_code,
    )
    model, base_tokenizer = load_model(args, model_args, training_args, tokenizer)
    new_token_ids = fit_to_tokenizer(model, tokenizer, base_tokenizer)
    peft_config = lora_config(model_args, args, model, tokenizer, new_token_ids)
    if peft_config is not None:
        if training_args.activation_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
        model = get_peft_model(model, peft_config)

    if args.stage == "cpt":
        train_dataset, mixture, cache = packed_dataset(args, training_args, tokenizer)
        data_files, extra = parquet_files(args.train_data + args.replay_data), {"mixture": mixture}
    else:
        train_dataset, rejected = load_chat(args.train_data)
        data_files, extra = args.train_data, {"chat_records": len(train_dataset), "rejected": dict(rejected)}

    recipe = lineage.resolved_recipe(args, training_args, model_args)
    record = lineage.record(args, training_args, model_args, tokenizer, new_token_ids, data_files, **extra)
    try:
        resume = checkpoint.plan_resume(training_args.output_dir, training_args.resume_from_checkpoint, recipe, record)
    except checkpoint.ResumeRefused as err:
        raise SystemExit(f"error: {err}") from None
    record["resumed_from"] = resume.resumed_from() if resume else None
    if resume:
        PartialState().print(resume.announcement())

    if args.stage == "cpt":
        trainer = PretrainingTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            data_collator=collator(tokenizer, model, training_args),
            processing_class=tokenizer,
        )
        trainer.accelerator.print(f"training on {len(train_dataset)} packed rows from {cache}")
    else:
        trainer = ChatTrainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer)
        if rejected:
            trainer.accelerator.print(f"rejected chat records: {dict(rejected)}")
        require_trained_tokens(trainer.model, tokenizer, trainer.train_dataset, peft_config)
    trainer.configure(args.embedding_learning_rate, args.peak_tflops_per_gpu)
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
            checkpoint.merge(training_args.output_dir, tokenizer, model.dtype, training_args.trust_remote_code,
                             record, recipe)
        trainer.accelerator.print(f"trained {trained_steps} steps; saved to {training_args.output_dir}")
    trainer.accelerator.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    main()

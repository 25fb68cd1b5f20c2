"""Continued pretraining with LoRA (or full fine-tuning) on a prepared Indic corpus.

    accelerate launch --config_file recipes/accelerate/<setup>.yaml scripts/train.py \
        --config recipes/train/<model>/<recipe>.yaml [--learning_rate 1e-4 ...]

Documents are packed to max_length without attending to each other. With an extended tokenizer the
model is resized and the new rows initialised from the base tokenizer's pieces; with LoRA those rows
train too (trainable_embeddings). A run resumes from the last checkpoint in output_dir.
"""

import os

from peft import get_peft_model
from transformers import AutoTokenizer, Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from training import config, lineage
from training.data import load_corpus
from training.model import fit_to_tokenizer, load_model, lora_config
from training.packing import collator, tokenize_and_pack


def main(argv: list[str] | None = None) -> Trainer:
    args, training_args, model_args = config.parse(argv)
    set_seed(training_args.seed)

    tokenizer = AutoTokenizer.from_pretrained(
        args.tokenizer_name_or_path or model_args.model_name_or_path,
        trust_remote_code=training_args.trust_remote_code,
    )
    model, base_tokenizer = load_model(args, model_args, training_args, tokenizer)
    new_token_ids = fit_to_tokenizer(model, tokenizer, base_tokenizer)
    peft_config = lora_config(model_args, args, model, new_token_ids)
    if peft_config is not None:
        if training_args.activation_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
        model = get_peft_model(model, peft_config)

    corpus = load_corpus(args.train_data, args.languages)
    train_dataset = tokenize_and_pack(corpus, tokenizer, training_args)
    training_args.remove_unused_columns = False  # the collator needs seq_lengths to restart position ids

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator(tokenizer, model, training_args),
        processing_class=tokenizer,
    )
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = get_last_checkpoint(training_args.output_dir)  # None when no checkpoint was saved yet
    trainer.train(resume_from_checkpoint=resume)

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        lineage.write(training_args.output_dir, args, training_args, model_args, tokenizer, new_token_ids)
        if args.merge_adapter and peft_config is not None:
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(f"{training_args.output_dir}/merged")
            tokenizer.save_pretrained(f"{training_args.output_dir}/merged")
        trainer.accelerator.print(f"saved to {training_args.output_dir}")
    return trainer


if __name__ == "__main__":
    main()

"""Plan a training run's memory per GPU before launching it: weights, gradients, optimizer states, the module ZeRO-3
gathers, activations and an allowance, against the GPU's memory, with what to change when it does not fit.

    python scripts/plan.py --config recipes/train/<model>/<recipe>.yaml --accelerate_config recipes/accelerate/<x>.yaml
        [--num_machines N] [--num_processes P] [--gpu_memory_gib G] [--model_config config.json] [--key value ...]

Runs on a machine without a GPU (a login node) and, with --model_config, without network: the model is built on the
meta device from its config. Without --model_config the config of model_name_or_path is read (on a cluster that
downloads config.json only). Any other --key value overrides the training recipe, as for scripts/train.py. GPU
memory: --gpu_memory_gib, else this machine's GPU, else the plan is printed without a verdict. Exits 1, with the
advice, when the plan does not fit. See "Memory per GPU" in docs/benchmarks.md.
"""

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the training recipe")
    parser.add_argument("--accelerate_config", required=True, help="the accelerate config the run launches with")
    parser.add_argument("--num_machines", type=int, help="override the accelerate config's num_machines")
    parser.add_argument("--num_processes", type=int, help="override its num_processes (all machines together)")
    parser.add_argument("--gpu_memory_gib", type=float, help="memory of one GPU (default: this machine's GPU)")
    parser.add_argument("--model_config", help="the model's config.json, to plan without network")
    options, overrides = parser.parse_known_args(argv)
    if options.gpu_memory_gib is not None and options.gpu_memory_gib <= 0:
        raise SystemExit(f"error: --gpu_memory_gib must be positive, got {options.gpu_memory_gib}")
    for flag, path in (("--accelerate_config", options.accelerate_config), ("--model_config", options.model_config)):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"error: {flag} {path}: no such file")

    # Imported once the command line is read, so that --help answers without loading torch and transformers.
    import torch

    from indictune.core.recipe import RecipeError
    from indictune.training import config, memory
    from indictune.training.model import TrainingSetupError

    recipe_argv = ["--config", options.config, *overrides]
    if not torch.cuda.is_available() and "--use_cpu" not in overrides:
        # TrainingArguments refuses bf16 without a GPU unless use_cpu is set; nothing in the plan reads use_cpu.
        recipe_argv += ["--use_cpu", "true"]
    try:
        args, training_args, model_args = config.parse(recipe_argv)
        setup = memory.DistributedSetup.from_accelerate_config(
            options.accelerate_config, options.num_machines, options.num_processes
        )
        model_config = None
        if options.model_config:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(options.model_config)
        plan = memory.plan_memory(args, training_args, model_args, setup, model_config=model_config)
    except (RecipeError, memory.PlanError, TrainingSetupError, OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    gpu_bytes = memory.local_gpu_bytes() if options.gpu_memory_gib is None else int(options.gpu_memory_gib * 2**30)
    print(plan.table(gpu_bytes))
    if gpu_bytes is None:
        print("no verdict: no GPU here and no --gpu_memory_gib")
        return
    try:
        memory.check(plan, gpu_bytes)
    except memory.PlanDoesNotFit as err:
        raise SystemExit(f"does not fit: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])

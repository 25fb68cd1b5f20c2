"""Score a checkpoint and its base model on Indic tasks and record both on the leaderboard.

python scripts/evaluate.py --config recipes/eval/<suite>.yaml --model ID_OR_DIR [--adapter DIR ...] [--base ID_OR_DIR]

Data-parallel, one model copy per process: accelerate launch --num_processes N scripts/evaluate.py ... (or
torchrun --nproc_per_node N scripts/evaluate.py ...). A model too big for one GPU: --device_map auto, one process.
"""

import os

# Launchers number their processes in RANK. Only the main process prints; the others show no progress bars either
# (tqdm reads TQDM_DISABLE when it is imported).
MAIN_PROCESS = os.environ.get("RANK", "0") == "0"
if not MAIN_PROCESS:
    os.environ["TQDM_DISABLE"] = "1"

from indictune.core.log import setup_logging  # noqa: E402
from indictune.core.recipe import RecipeError, parse_cli  # noqa: E402
from indictune.eval.suite import EvalConfig, EvalError, evaluate  # noqa: E402
from indictune.eval.tasks import MissingTaskData  # noqa: E402


def main() -> None:
    setup_logging(main_process=MAIN_PROCESS)  # indictune's messages at INFO on the main process, WARNING elsewhere
    try:
        config = parse_cli(EvalConfig, description=__doc__)
        results = evaluate(config)
    except (EvalError, RecipeError, MissingTaskData) as err:
        raise SystemExit(f"error: {err}" if MAIN_PROCESS else 1) from None
    except SystemExit as stop:  # parse_cli's own message for a bad command line
        raise SystemExit(stop.code if MAIN_PROCESS or not isinstance(stop.code, str) else 1) from None
    if not MAIN_PROCESS:
        return
    for run in results["runs"]:
        print(run["label"])
        for score in run["scores"]:
            delta = ""
            if score.get("delta") is not None:
                delta = f"  {score['delta']:+.4f}"
                if score.get("delta_low") is not None:
                    delta += f" [{score['delta_low']:+.4f}, {score['delta_high']:+.4f}]"
                if score.get("p_value") is not None:
                    delta += f"  p={score['p_value']:.3g}"
            print(f"  {score['task']:<16} {score['lang']:<4} {score['metric']:<20} {score['value']:.4f}{delta}")
    for skipped in results["skipped"]:
        print(f"skipped: {skipped['reason']}")
    for where, reasons in results["rejected"].items():
        if reasons:
            print(f"rejected items in {where}: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    print(f"results: {config.output_dir}/results.json; leaderboard store: {config.db}")


if __name__ == "__main__":
    main()

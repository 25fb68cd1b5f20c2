"""Score a checkpoint and its base model on Indic tasks and record both on the leaderboard.

python scripts/evaluate.py --config recipes/eval/<suite>.yaml --model ID_OR_DIR [--adapter DIR ...] [--base ID_OR_DIR]
"""

from indictune.core.log import setup_logging
from indictune.core.recipe import RecipeError, parse_cli
from indictune.eval.suite import EvalConfig, EvalError, evaluate
from indictune.eval.tasks import MissingTaskData


def main() -> None:
    config = parse_cli(EvalConfig, description=__doc__)
    setup_logging(main_process=True)  # one process: indictune's messages at INFO, the libraries' as they are
    try:
        results = evaluate(config)
    except (EvalError, RecipeError, MissingTaskData) as err:
        raise SystemExit(f"error: {err}") from None
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

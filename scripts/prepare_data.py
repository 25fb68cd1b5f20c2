"""Prepare an Indic corpus: read, normalize, identify, clean, redact, filter, deduplicate; Parquet out.

python scripts/prepare_data.py --config recipes/data/sample.yaml [--output_dir DIR] [--key value ...]
python scripts/prepare_data.py --config RECIPE --executor ray [--ray_address auto | HOST:PORT]   # on a Ray cluster

A problem with the recipe, the sources, a stage's settings or the output folder (one that holds the inputs
or files the pipeline did not write, or that another run is writing) ends the run with one line
``error: ...`` and exit code 1, before any output is touched.
"""

from indictune.core.io import OutputDirError
from indictune.core.recipe import RecipeError, parse_cli
from indictune.data import pipeline
from indictune.data.readers import SourceError
from indictune.data.stages import StageError


def main() -> None:
    config = parse_cli(pipeline.PrepareConfig, description=__doc__)
    try:
        report = pipeline.run(config)
    except (RecipeError, SourceError, StageError, OutputDirError) as err:
        raise SystemExit(f"error: {err}") from None
    totals = report["totals"]
    print(f"{totals['input']} records: {totals['kept']} kept, {totals['rejected']} rejected")
    print(f"kept:     {config.output_dir}/data/")
    print(f"rejected: {config.output_dir}/rejected/")
    print(f"report:   {config.output_dir}/report.md")


if __name__ == "__main__":
    main()

"""Prepare an Indic corpus: read, normalize, identify, clean, redact, filter, deduplicate; Parquet out.

python scripts/prepare_data.py --config recipes/data/sample.yaml [--output_dir DIR] [--key value ...]
"""

from indictune.core.recipe import parse_cli
from indictune.data import pipeline


def main() -> None:
    config = parse_cli(pipeline.PrepareConfig, description=__doc__)
    report = pipeline.run(config)
    totals = report["totals"]
    print(f"{totals['input']} records: {totals['kept']} kept, {totals['rejected']} rejected")
    print(f"kept:     {config.output_dir}/data/")
    print(f"rejected: {config.output_dir}/rejected/")
    print(f"report:   {config.output_dir}/report.md")


if __name__ == "__main__":
    main()

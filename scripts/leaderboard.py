"""Render the leaderboard store as Markdown, a self-contained HTML page and PNG charts.

python scripts/leaderboard.py [--db runs/leaderboard.sqlite] [--out DIR]
"""

from pathlib import Path

from indictune.core.recipe import parse_cli
from indictune.eval.leaderboard import LeaderboardConfig, LeaderboardError, render


def main() -> None:
    config = parse_cli(LeaderboardConfig, description=__doc__)
    try:
        render(config)
    except LeaderboardError as err:
        raise SystemExit(f"error: {err}") from None
    print(Path(config.out, "leaderboard.md").read_text(encoding="utf-8"))
    print(f"leaderboard: {config.out}/leaderboard.md, {config.out}/leaderboard.html")


if __name__ == "__main__":
    main()

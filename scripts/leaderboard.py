"""Render the leaderboard store as Markdown, a self-contained HTML page and PNG charts.

    python scripts/leaderboard.py [--db runs/leaderboard.sqlite] [--out DIR]
"""

from data.recipe import parse_cli
from eval.leaderboard import LeaderboardConfig, render, to_markdown


def main() -> None:
    config = parse_cli(LeaderboardConfig, description=__doc__)
    print(to_markdown(render(config)))
    print(f"leaderboard: {config.out}/leaderboard.md, {config.out}/leaderboard.html")


if __name__ == "__main__":
    main()

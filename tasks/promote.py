from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from tuneline.config import Config
from tuneline.storage import read_json
from tuneline.tasks._common import stage_task


def decision_artifact(config: Config, root: Path) -> None:
    path = root / config.paths.promotion
    if not path.is_file():
        return
    d = read_json(path)
    rows = "\n".join(f"| {k} | {d[k]} |" for k in ("version", "previous_champion", "metric", "candidate", "champion",
                                                       "delta", "p_value", "test") if d.get(k) is not None)
    create_markdown_artifact(
        f"### {'Promoted' if d['promote'] else 'Not promoted'}: {d['reason']}\n\n| | |\n|---|---|\n{rows}\n",
        key="promotion-decision", description="champion/challenger gate",
    )


promote_task = stage_task("promote", retries=3, retry_delay_seconds=[10, 30, 60], report=decision_artifact, cached=False)

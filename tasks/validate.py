from pathlib import Path

from prefect.artifacts import create_markdown_artifact

from tuneline.config import Config
from tuneline.storage import read_json
from tuneline.tasks._common import stage_task
from tuneline.expectations import summary_markdown


def validation_artifact(config: Config, root: Path) -> None:
    report = root / config.paths.validation_dir / "report.json"
    if report.is_file():
        create_markdown_artifact(summary_markdown(read_json(report)), key="data-validation", description="Great Expectations")


validate_task = stage_task("validate", report=validation_artifact)

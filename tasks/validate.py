from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from tuneline.config import Config
from tuneline.stages import run_stage
from tuneline.storage import read_json
from tuneline.validation import summary_markdown


@task(name="validate", cache_policy=NONE, persist_result=False)
def validate_task(config: Config, root: str) -> dict:
    """Validate the data; the summary becomes a Prefect artifact whether it passes or fails."""
    try:
        return run_stage("validate", config, Path(root))
    finally:
        report = Path(root) / config.paths.validation_dir / "report.json"
        if report.is_file():
            create_markdown_artifact(summary_markdown(read_json(report)), key="data-validation", description="Great Expectations")

"""`tuneline run` boots Prefect's temporary server while it loads the libraries, and a project's
first run copies an empty, already migrated Prefect database kept once per machine. Both only save
time: the runs they speed up must be complete and recorded in their own project's database."""
from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import venv_env


def _run(project: Path, cache: Path) -> subprocess.CompletedProcess:
    project.mkdir()
    env = {k: v for k, v in venv_env().items() if not k.startswith(("PREFECT_HOME", "PREFECT_API_URL"))}
    env["XDG_CACHE_HOME"] = str(cache)
    # one frozen-feature candidate: the test is about the Prefect database, not about training
    overrides = ["preprocess.sample_size=300", "cv.k=2", "select.strategies=[feature_extraction]", "select.baseline=false"]
    return subprocess.run(["tuneline", "run", *sum((["--set", o] for o in overrides), [])],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


def _recorded(project: Path) -> tuple[list, list]:
    with sqlite3.connect(project / ".prefect" / "prefect.db") as db:
        flows = db.execute("select state_type from flow_run").fetchall()
        tasks = sorted(r[0].rsplit("-", 1)[0] for r in db.execute("select name from task_run where state_type = 'COMPLETED'"))
    return flows, tasks


@pytest.mark.smoke
def test_new_projects_start_from_the_migrated_prefect_template(tmp_path):
    cache = tmp_path / "cache"
    template = cache / "tuneline" / "prefect"
    first = _run(tmp_path / "a", cache)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = list(template.glob("empty-*.db"))
    assert len(kept) == 1, "the first project's freshly migrated database is kept as the template"
    with sqlite3.connect(kept[0]) as db:
        assert db.execute("select count(*) from flow_run").fetchone() == (0,), "the template holds no runs"
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)

    second = _run(tmp_path / "b", cache)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = sorted(["ingest", "validate", "preprocess", "select", "crossval", "refit", "register", "promote"])
    for project in ("a", "b"):  # each project's database holds its own run, and only that one
        flows, tasks = _recorded(tmp_path / project)
        assert flows == [("COMPLETED",)], project
        assert tasks == steps, project
    assert "champion" in second.stdout and (tmp_path / "b" / "metrics" / "test.json").is_file()

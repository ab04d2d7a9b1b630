import pytest
import yaml

from tuneline.config import Config, ConfigError, load_config

from conftest import REPO, venv_env

pytestmark = pytest.mark.unit


def test_params_yaml_equals_embedded_defaults():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == Config().to_dict()


def test_overrides_are_parsed_as_yaml():
    c = load_config(None, ["cv.k=4", "preprocess.sample_size=null", "validate.labels=[a, b]"])
    assert c.cv.k == 4 and c.preprocess.sample_size is None and c.validate_.labels == ["a", "b"]


@pytest.mark.parametrize(
    "override, must_name",
    [
        (["cv.folds=3"], ["cv.folds", "unknown key", "allowed: k, seed"]),
        (["bogus.x=1"], ["bogus", "unknown key", "allowed:", "preprocess"]),
        (["cv.k=three"], ["cv.k", "valid integer", "'three'"]),
        (["cv.k=1"], ["cv.k", "greater than or equal to 2"]),
        (["train.class_weight=auto"], ["train.class_weight", "'balanced'", "'none'"]),
        (["select.strategies=[magic]"], ["select.strategies.0", "'feature_extraction'", "'lora'"]),
        (["data.source=/nonexistent/file.csv"], ["data.source", "/nonexistent/file.csv", "not found"]),
        (["preprocess.test_size=1.5"], ["preprocess.test_size", "less than 1"]),
        (["cv.k"], ["cv.k", "KEY=VALUE"]),
        (["cv.task_runner=dask"], ["cv.task_runner: dask needs cv.dask_address"]),
        (["tune.task_runner=dask"], ["tune.task_runner: dask needs cv.dask_address"]),
        (["data.delimiter=;;"], ["data.delimiter", "single character"]),
        (["data.encoding=klingon"], ["data.encoding", "unknown encoding 'klingon'"]),
        (["deploy.cron=0 3 * *"], ["deploy.cron", "5-field cron"]),
        (["train.handoff=origin"], ["train.handoff='origin'", "set train.work_pool too"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(override, must_name):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    for fragment in must_name:
        assert fragment in str(err.value)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_params_file_errors_name_the_file(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("cv:\n  k: 0\n")
    with pytest.raises(ConfigError, match=rf"{p}[\s\S]*cv.k"):
        load_config(p)


def test_config_is_frozen():
    c = Config()
    with pytest.raises(Exception):
        c.cv.k = 3


def test_cli_fails_before_any_work(tmp_path):
    import subprocess

    proc = subprocess.run(
        ["tuneline", "run", "--set", "cv.k=1"], cwd=tmp_path, env=venv_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "cv.k" in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()

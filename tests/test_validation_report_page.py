"""The validation report of the default data, opened in headless Chromium, shows every expectation."""
from __future__ import annotations

import html
import json

import pytest

from browser import dump_dom, screenshot
from tuneline.config import load_config
from tuneline.pipeline.shell import run_stage
from tuneline.expectations import observed_text

pytestmark = pytest.mark.data


def test_report_page_lists_every_expectation_and_observed_value(tmp_path):
    config = load_config(None, [])
    run_stage("ingest", config, tmp_path)
    run_stage("validate", config, tmp_path)
    page = tmp_path / "data/validation/report.html"
    report = json.loads((tmp_path / "data/validation/report.json").read_text())

    dom = html.unescape(dump_dom(page.as_uri(), tmp_path))
    assert "Data validation: PASSED" in dom
    assert dom.count("<tr class=") == len(report["results"]) >= 10
    for r in report["results"]:
        assert r["expectation"] in dom
        assert observed_text(r) in dom
    assert '"negative": 16186' in dom  # rows per class, observed

    png = screenshot(page.as_uri(), tmp_path, "validation_report.png")
    assert png.stat().st_size > 20_000
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1400, 1000)
        assert len(set(img.convert("L").resize((140, 100)).getdata())) > 10  # not a blank page

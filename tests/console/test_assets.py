"""The console's vendored charting library is the one web/package-lock.json pins."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "app/console/static/vendor/chart.umd.min.js"
INSTALLED = ROOT / "web/node_modules/chart.js/dist/chart.umd.min.js"


def test_vendored_chart_library_matches_the_lock() -> None:
    lock = json.loads((ROOT / "web/package-lock.json").read_text())
    version = lock["packages"]["node_modules/chart.js"]["version"]
    assert f"Chart.js v{version}" in VENDORED.read_text()[:200]
    assert INSTALLED.exists(), "web/node_modules is missing: `make test` runs `npm ci` in web/"
    assert VENDORED.read_bytes() == INSTALLED.read_bytes(), "run `make console-assets`"

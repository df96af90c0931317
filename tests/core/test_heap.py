"""The heap a started service built is frozen out of the cyclic collector's full passes
while it serves (the flash-crowd tail was its pauses), and given back when it stops."""

from __future__ import annotations

import subprocess
import sys

from app.core.settings import Settings

CODE = """
import asyncio, gc, sys
from app.core.settings import Settings
from app.main import create_app

async def main() -> None:
    app = create_app(Settings(
        env="test", database_url=sys.argv[1], jwt_secret="x" * 40, run_worker=False,
        rate_limit_enabled=False, data_dir=sys.argv[2], _env_file=None,
    ))
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        serving = gc.get_freeze_count()
    print(before, serving, gc.get_freeze_count())

asyncio.run(main())
"""


def test_the_startup_heap_is_frozen_while_serving_and_released_after(
    settings: Settings, tmp_path: object
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CODE, str(settings.database_url), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, serving, after = (int(n) for n in done.stdout.split())
    print(f"frozen objects: before start {before}, serving {serving}, after stop {after}")
    assert before == 0
    assert serving > 50_000  # the framework and the app, not a handful
    assert after == 0

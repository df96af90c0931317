"""The heap built at start-up, kept out of the cyclic garbage collector's way.

A started service holds a few hundred thousand long-lived objects (FastAPI, pydantic, SQLAlchemy
and their caches). Every full collection of the cyclic garbage collector walks all of them,
and while it does the process answers nothing: under a flash crowd that pause lands on every
request in flight and shows as the tail latency. `gc.freeze()` moves what exists after start-up
into a permanent generation the collector skips; requests' own garbage is collected as
before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_startup_heap() -> Iterator[None]:
    """Freeze the objects alive now for the block; unfreeze them afterwards, so an app
    started and stopped many times in one process (the tests) leaks nothing."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

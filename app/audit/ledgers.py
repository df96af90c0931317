"""The sealed logs, in the order they are verified and reported: the redemption history
(`app/books/seal.py`) and the promo purchase log (`app/promos/purchase_log.py`). The worker
seals each, `GET /audit/verify` and `python -m app check` verify each."""

from __future__ import annotations

from app.books.seal import HISTORY
from app.core.chain import Ledger
from app.promos.purchase_log import PURCHASES

LEDGERS: tuple[Ledger, ...] = (HISTORY, PURCHASES)

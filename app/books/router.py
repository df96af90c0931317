"""HTTP routes of the books domain."""

from fastapi import APIRouter

router = APIRouter(tags=["books"])

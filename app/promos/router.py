"""HTTP routes of the promos domain."""

from fastapi import APIRouter

router = APIRouter(tags=["promos"])

"""HTTP routes of the segments domain."""

from fastapi import APIRouter

router = APIRouter(tags=["segments"])

"""``GET /``: a single-page console to pick a function, fill a form made from its manifest,
run it and watch its events live. It uses only the public API (and ``?token=`` for its
EventSource when auth is on), so it doubles as a worked example of a browser client."""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def console() -> HTMLResponse:
    page = files("gateway").joinpath("static/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

"""The console: ``GET /`` and ``GET /jobs/{id}/view`` (the same page, showing that job), its static files
under ``/static``, and ``/favicon.ico``.

The page is plain HTML, CSS and JavaScript shipped in the package (``gateway/static``): no build
step and nothing fetched from another host. It uses only the public API (and ``?token=`` for its
EventSource when auth is on), so it doubles as a worked example of a browser client. The page and
its files hold no data, so, like ``/docs``, they are served without credentials; the API calls the
page makes carry the key the user enters.
"""

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)

STATIC = files("gateway").joinpath("static")


def _page() -> HTMLResponse:
    page = STATIC.joinpath("index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/", response_class=HTMLResponse)
async def console() -> HTMLResponse:
    return _page()


async def job_page(request: Request) -> HTMLResponse:
    """A job's own URL: the console opens on that job and resumes its events."""
    return _page()


async def favicon(request: Request) -> Response:
    icon = STATIC.joinpath("favicon.svg").read_bytes()
    return Response(icon, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})


def install_assets(app: FastAPI) -> None:
    """The page's files and the job view URL, as plain routes outside the API's auth."""
    app.mount("/static", StaticFiles(packages=[("gateway", "static")]), name="static")
    app.add_route("/favicon.ico", favicon, include_in_schema=False)
    app.add_route("/jobs/{job_id}/view", job_page, include_in_schema=False)

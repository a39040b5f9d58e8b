"""The web app: `create_app(database_url)` builds the FastAPI application (pages for people in
`pages.py`, the JSON API in `api.py`). Each request gets its own database session; nothing is kept
in memory between requests, so a restart loses nothing that was acknowledged."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from alignlab.feedback.db import open_database
from alignlab.feedback.store import FeedbackError

log = logging.getLogger("alignlab.feedback")
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str):
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return TEMPLATES.TemplateResponse(request, "error.html", {"message": message, "status": status, "user": None},
                                      status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        if tuple(err.get("loc", ())) == ("body",) or err.get("type") == "json_invalid":
            parts.append("the request body must be a JSON object (check the JSON syntax and Content-Type)")
            continue
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts)


def create_app(database_url: str, *, secure_cookies: bool = False) -> FastAPI:
    from alignlab.feedback import api, pages

    app = FastAPI(title="Feedback (alignlab)", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.sessions = open_database(database_url)
    app.state.secure_cookies = secure_cookies

    @app.exception_handler(FeedbackError)
    async def _feedback_error(request: Request, exc: FeedbackError):
        return _error(request, exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        return _error(request, 422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if exc.status_code in (302, 303):
            return HTMLResponse("", status_code=exc.status_code, headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no page {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _error(request, exc.status_code, message)

    app.include_router(api.router)
    app.include_router(pages.router)
    return app

"""Request dependencies: a database session, the API token's user, the logged-in user, CSRF."""

from __future__ import annotations

import secrets
from typing import Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from alignlab.feedback.auth import same_token, session_for, user_for_token
from alignlab.feedback.db import User

SESSION_COOKIE = "alignlab_session"
CSRF_COOKIE = "alignlab_csrf"  # before login only: the double-submit token of the login form


def database(request: Request) -> Iterator[Session]:
    db = request.app.state.sessions()
    try:
        yield db
    finally:
        db.close()


def api_user(request: Request, db: Session = Depends(database)) -> User:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "send your API token as the header 'Authorization: Bearer <token>' "
                                 "(an admin creates one with `alignlab feedback token USER`)")
    user = user_for_token(db, token.strip())
    if user is None:
        raise HTTPException(401, "invalid or revoked API token")
    return user


class Login:
    """The logged-in browser user (None when logged out) and the CSRF token its forms carry."""

    def __init__(self, user: User | None, csrf: str, new_csrf_cookie: str | None = None):
        self.user, self.csrf, self.new_csrf_cookie = user, csrf, new_csrf_cookie


def login(request: Request, db: Session = Depends(database)) -> Login:
    row = session_for(db, request.cookies.get(SESSION_COOKIE))
    if row is not None:
        return Login(db.get(User, row.user_id), row.csrf)
    cookie = request.cookies.get(CSRF_COOKIE)
    if cookie:
        return Login(None, cookie)
    fresh = secrets.token_urlsafe(32)
    return Login(None, fresh, new_csrf_cookie=fresh)


def page_user(request: Request, who: Login = Depends(login)) -> Login:
    if who.user is None:
        raise HTTPException(303, headers={"Location": "/login"})
    return who


def check_csrf(who: Login, sent: str | None) -> None:
    if not same_token(sent, who.csrf) or who.new_csrf_cookie is not None:
        raise HTTPException(403, "this form has expired or was sent from another site (CSRF check failed); "
                                 "reload the page and try again")

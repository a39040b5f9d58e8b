"""Passwords, API tokens, login sessions and CSRF tokens.

Passwords: scrypt (RFC 7914) from the standard library, n=2**14, r=8, p=1 (the parameters
OWASP's password storage cheat sheet lists as a minimum for scrypt), a 16-byte random salt, and
the result stored as `scrypt$n$r$p$salt$hash`. Tokens and session keys are 32 random bytes; the
database keeps only their SHA-256, so a copy of the database does not hold working credentials.
CSRF: every form carries the login session's random token (or, before login, a random cookie's
value: the double-submit pattern), compared in constant time.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from alignlab.feedback.db import ApiToken, LoginSession, User, now, write

SCRYPT = dict(n=2**14, r=8, p=1)
TOKEN_PREFIX = "alf_"
SESSION_HOURS = 12


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        salt_b, digest_b = base64.b64decode(salt), base64.b64decode(digest)
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=salt_b, n=int(n), r=int(r), p=int(p), dklen=len(digest_b))
    return hmac.compare_digest(got, digest_b)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def issue_token(db: Session, user: User) -> str:
    """A new API token for `user`; returned once, stored only as its hash."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with write(db):
        db.add(ApiToken(user_id=user.id, token_hash=sha256(token), prefix=token[:8], revoked=False))
    return token


def revoke_tokens(db: Session, user: User) -> int:
    """Revoke every API token of `user`; returns how many were active."""
    with write(db):
        tokens = db.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))).all()
        for token in tokens:
            token.revoked = True
    return len(tokens)


def user_for_token(db: Session, token: str) -> User | None:
    return db.scalar(select(User).join(ApiToken, ApiToken.user_id == User.id)
                     .where(ApiToken.token_hash == sha256(token), ApiToken.revoked.is_(False)))


def start_session(db: Session, user: User) -> str:
    """A login session; returns the cookie value (its hash and a CSRF token are stored)."""
    key = secrets.token_urlsafe(32)
    expires = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=SESSION_HOURS)).isoformat()
    with write(db):
        db.add(LoginSession(key_hash=sha256(key), user_id=user.id, csrf=secrets.token_urlsafe(32),
                            expires_at=expires))
    return key


def session_for(db: Session, key: str | None) -> LoginSession | None:
    if not key:
        return None
    row = db.get(LoginSession, sha256(key))
    if row is None or row.expires_at < now():
        return None
    return row


def end_session(db: Session, key: str | None) -> None:
    with write(db):
        row = session_for(db, key)
        if row is not None:
            db.delete(row)


def same_token(sent: str | None, expected: str | None) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(str(sent), str(expected))

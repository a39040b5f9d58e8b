"""The database: tables as SQLAlchemy models, engines for SQLite and PostgreSQL, migrations.

Every table is created by the Alembic migrations in `migrations/versions`, never by
`create_all`, so an existing database is upgraded in place; `tests/test_feedback_*` check that
the migrated schema and these models agree. Times are stored as ISO-8601 UTC strings, so they
read back exactly the same from either database.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from pathlib import Path

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from alignlab.feedback.names import DEFAULT_URL, STRATEGIES, TASKS  # noqa: F401 (re-exported)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[str] = mapped_column(String(40), default=now)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    task: Mapped[str] = mapped_column(String(16))
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    strategy: Mapped[str] = mapped_column(String(16), default="uniform")
    attributes: Mapped[list] = mapped_column(JSON, default=list)
    scale: Mapped[int] = mapped_column(Integer, default=5)
    instructions: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[str] = mapped_column(String(40), default=now)


class Membership(Base):
    __tablename__ = "memberships"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored (the token itself is shown once)."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[str] = mapped_column(String(40), default=now)


class LoginSession(Base):
    """A browser login: the cookie holds a random key, the table its SHA-256 and the CSRF token."""

    __tablename__ = "login_sessions"
    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(40), default=now)
    expires_at: Mapped[str] = mapped_column(String(40))


class Item(Base):
    """One thing to judge: a prompt (text or chat messages) and its responses; `member_scores`
    holds a reward ensemble's (K, n) scores when the uncertainty strategies need them."""

    __tablename__ = "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt: Mapped[object] = mapped_column(JSON)
    responses: Mapped[list] = mapped_column(JSON)
    sources: Mapped[list | None] = mapped_column(JSON, nullable=True)
    member_scores: Mapped[list | None] = mapped_column(JSON, nullable=True)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[str] = mapped_column(String(40), default=now)


class Assignment(Base):
    """An item shown to an annotator, with the presentation order (response indices as shown)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_assignment_item_user"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    order: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[str] = mapped_column(String(40), default=now)
    answered_at: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Vote(Base):
    """One judgement. `payload` is in terms of the item's response indices, not screen positions;
    `order` is the presentation order the annotator saw. One vote per (item, annotator) and per
    (annotator, idempotency key)."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("item_id", "user_id", name="uq_vote_item_user"),
                      UniqueConstraint("user_id", "idempotency_key", name="uq_vote_user_key"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict] = mapped_column(JSON)
    order: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[str] = mapped_column(String(40), default=now)


_IMMEDIATE = contextvars.ContextVar("alignlab_feedback_immediate", default=False)


@contextlib.contextmanager
def write(session):
    """One write transaction (see `begin_write`), committed at the end of the block and rolled back
    on an error. It never outlives the block: a request's session is closed only after its
    response, by a worker thread that may all be busy waiting for this very lock."""
    begin_write(session)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def begin_write(session) -> None:
    """Start the session's next transaction as a write transaction: on SQLite `BEGIN IMMEDIATE`,
    which waits for the write lock up front. A deferred transaction that has read and then writes
    fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT, no busy wait) when another
    connection wrote in between; reads stay deferred, so readers never wait for writers (WAL).
    Anything pending is committed first. PostgreSQL needs nothing here: at READ COMMITTED every
    statement sees the newest committed rows."""
    if session.get_bind().dialect.name != "sqlite":
        return
    session.commit()
    token = _IMMEDIATE.set(True)
    try:
        session.connection()  # begins the transaction now, while the flag is set
    finally:
        _IMMEDIATE.reset(token)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL (readers never block the writer), a 30 s busy wait, foreign keys, and our own BEGIN
    (pysqlite's implicit transactions would not let `writing` choose BEGIN IMMEDIATE)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _IMMEDIATE.get() else "BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for `url` (sqlite:///path or postgresql://...; postgresql:// uses psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # more connections than the server's worker threads (40): a thread never waits for a connection
        # held by a request whose session can only be closed by another worker thread
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=10,
                               max_overflow=60)
        _sqlite_pragmas(engine)
        return engine
    if not url.startswith("postgresql"):
        raise ValueError(f"database URL {redact(url)!r}: use sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
    return create_engine(url, pool_size=10, max_overflow=60, pool_pre_ping=True)


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    head, sep, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@", 1)[0]:
        user = tail.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{tail.split('@', 1)[1]}"
    return url


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates every table in a new database)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def open_database(url: str) -> sessionmaker:
    """Migrate the database at `url` and return a session factory for it."""
    engine = make_engine(url)
    migrate(engine)
    return sessionmaker(engine, expire_on_commit=False)

"""The feedback app: people compare, rank, rate or thumb responses in a browser (or through an
HTTP API), and their votes come back out as the record types alignlab trains on.

FastAPI + SQLAlchemy (an SQLite file by default, PostgreSQL by URL), schema migrations with
Alembic (shipped in `migrations/`), accounts with per-project isolation, assignment strategies
(uniform, reward-ensemble uncertainty, randomized active queries) and inter-annotator agreement.
See docs/feedback.md (team lead) and docs/annotating.md (annotators). Nothing here imports
trainers; `push` loads a policy or reward model only when asked to.
"""

"""What the web pages, the HTTP API and the command line do to the database, in one place:
accounts, projects, items, assignments, votes and progress. Errors are `FeedbackError`s with
the HTTP status they map to and a message that says what to do."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignlab.feedback import assign
from alignlab.feedback.agreement import krippendorff_alpha, mean_pairwise_kappa
from alignlab.feedback.auth import hash_password
from alignlab.feedback.db import STRATEGIES, Assignment, Item, Membership, Project, User, Vote, now, write
from alignlab.feedback.tasks import TASKS, VoteError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ASSIGNMENT_TTL = dt.timedelta(minutes=30)  # an item shown but not answered is offered to others after this
MAX_KEY = 128


class FeedbackError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise FeedbackError(400, f"{kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                                 "starting with a letter or digit")
    return name


# --- accounts and projects ----------------------------------------------------------------------


def create_user(db: Session, name: str, password: str | None = None, *, admin: bool = False) -> User:
    _name("user", name)
    try:
        hashed = hash_password(password) if password else None
    except ValueError as exc:
        raise FeedbackError(400, str(exc)) from None
    with write(db):
        if db.scalar(select(User).where(User.name == name)) is not None:
            raise FeedbackError(409, f"user {name!r} already exists")
        user = User(name=name, password_hash=hashed, is_admin=admin)
        db.add(user)
    return user


def set_password(db: Session, user: User, password: str) -> None:
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        raise FeedbackError(400, str(exc)) from None
    with write(db):
        user.password_hash = hashed


def find_user(db: Session, name: str) -> User | None:
    return db.scalar(select(User).where(User.name == name))


def get_user(db: Session, name: str) -> User:
    user = find_user(db, name)
    if user is None:
        raise FeedbackError(404, f"no user {name!r}")
    return user


def create_project(db: Session, slug: str, task: str, *, overlap: int = 1, strategy: str = "uniform",
                   attributes: list[str] | None = None, scale: int = 5, title: str = "",
                   instructions: str = "") -> Project:
    _name("project", slug)
    if task not in TASKS:
        raise FeedbackError(400, f"task {task!r}: use one of {', '.join(TASKS)}")
    if strategy not in STRATEGIES:
        raise FeedbackError(400, f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not (isinstance(overlap, int) and overlap >= 1):
        raise FeedbackError(400, f"overlap must be a whole number >= 1, got {overlap!r}")
    if not (isinstance(scale, int) and 2 <= scale <= 10):
        raise FeedbackError(400, f"scale must be a whole number from 2 to 10, got {scale!r}")
    attributes = [a.strip() for a in (attributes or []) if a.strip()]
    for a in attributes:
        _name("attribute", a)
    with write(db):
        if db.scalar(select(Project).where(Project.slug == slug)) is not None:
            raise FeedbackError(409, f"project {slug!r} already exists")
        project = Project(slug=slug, task=task, overlap=overlap, strategy=strategy, attributes=attributes,
                          scale=scale, title=title or slug, instructions=instructions)
        db.add(project)
    return project


def get_project(db: Session, slug: str) -> Project:
    project = db.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise FeedbackError(404, f"no project {slug!r}")
    return project


def add_member(db: Session, project: Project, user: User) -> None:
    with write(db):
        if db.get(Membership, (project.id, user.id)) is None:
            db.add(Membership(project_id=project.id, user_id=user.id))


def projects_of(db: Session, user: User) -> list[Project]:
    query = select(Project).order_by(Project.slug)
    if not user.is_admin:
        query = query.join(Membership, Membership.project_id == Project.id).where(Membership.user_id == user.id)
    return list(db.scalars(query))


def project_for(db: Session, slug: str, user: User) -> Project:
    """The project, if `user` may see it. Non-members get the same 404 as for a project that does
    not exist, so project names do not leak across teams."""
    query = select(Project).where(Project.slug == slug)
    if not user.is_admin:
        query = query.join(Membership, (Membership.project_id == Project.id) & (Membership.user_id == user.id))
    project = db.scalar(query)
    if project is None:
        raise FeedbackError(404, f"no project {slug!r} that you are a member of")
    return project


# --- items --------------------------------------------------------------------------------------


def add_items(db: Session, project: Project, rows: list[dict]) -> list[Item]:
    """rows: {prompt, responses, sources?, member_scores?, meta?}; checked against the task first.
    Returns the stored items (with their ids)."""
    task = TASKS[project.task]
    for i, row in enumerate(rows):
        n = len(row["responses"])
        if not task.fits(n):
            raise FeedbackError(400, f"item {i}: a {project.task} item holds {task.responses} response(s), got {n}")
        scores = row.get("member_scores")
        if scores is not None and any(len(s) != n for s in scores):
            raise FeedbackError(400, f"item {i}: member_scores must hold one score per response")
    items = [Item(project_id=project.id, prompt=row["prompt"], responses=list(row["responses"]),
                  sources=row.get("sources"), member_scores=row.get("member_scores"), meta=row.get("meta") or {})
             for row in rows]
    with write(db):
        db.add_all(items)
    return items


def get_item(db: Session, project: Project, item_id: int) -> Item:
    item = db.get(Item, item_id)
    if item is None or item.project_id != project.id:
        raise FeedbackError(404, f"no item {item_id} in project {project.slug!r}")
    return item


# --- assignments --------------------------------------------------------------------------------


def _open_assignment(db: Session, project: Project, user: User) -> Assignment | None:
    return db.scalar(select(Assignment).join(Item, Item.id == Assignment.item_id)
                     .where(Item.project_id == project.id, Assignment.user_id == user.id,
                            Assignment.answered_at.is_(None)).order_by(Assignment.id).limit(1))


def next_assignment(db: Session, project: Project, user: User, rng: random.Random | None = None):
    """(item, assignment) to show `user` next, or None when nothing is left for them. An item
    already shown and not yet answered is shown again (same order) before anything new.

    No lock is held while choosing: a new assignment is committed, then checked against the
    item's overlap; when concurrent requests took the item's slots (possible on PostgreSQL;
    SQLite's write lock serializes them), it is withdrawn and another item chosen."""
    rng = rng or random.Random()
    for _attempt in range(20):
        try:
            with write(db):
                found, new = _next_assignment(db, project, user, rng)
        except IntegrityError:  # the same annotator asked twice at once: give the one that won
            current = _open_assignment(db, project, user)
            return None if current is None else (db.get(Item, current.item_id), current)
        if not new or not _beyond_overlap(db, project, found[1]):
            return found
        with write(db):
            db.delete(found[1])
    raise FeedbackError(503, "too many annotators asked for the same items at once; try again")


def _live(cutoff: str):
    """Assignments that count towards an item's overlap: answered, or shown within the TTL."""
    return or_(Assignment.answered_at.is_not(None), Assignment.created_at >= cutoff)


def _cutoff() -> str:
    return (dt.datetime.now(dt.timezone.utc) - ASSIGNMENT_TTL).isoformat()


def _beyond_overlap(db: Session, project: Project, assignment: Assignment) -> bool:
    """Whether the item already has `overlap` other live assignments, counted after ours was
    committed. Every one of them counts, whatever its id: ids are drawn at insert, not at commit,
    so a check limited to lower ids lets two concurrent requests each miss the other. Of two racing
    requests, the one that checks later sees the other's committed row, so both cannot stay (both
    may withdraw; each then picks again)."""
    others = db.scalar(select(func.count()).select_from(Assignment).where(
        Assignment.item_id == assignment.item_id, Assignment.id != assignment.id, _live(_cutoff())))
    db.commit()  # end the read (a rollback would expire the loaded objects)
    return others >= project.overlap


def _next_assignment(db: Session, project: Project, user: User, rng: random.Random):
    """((item, assignment), is it new) or (None, False)."""
    current = _open_assignment(db, project, user)
    if current is not None:
        return (db.get(Item, current.item_id), current), False
    live = (select(Assignment.item_id, func.count().label("n")).join(Item, Item.id == Assignment.item_id)
            .where(Item.project_id == project.id, _live(_cutoff())).group_by(Assignment.item_id).subquery())
    shown = func.coalesce(live.c.n, 0)
    mine = select(Assignment.item_id).where(Assignment.user_id == user.id)
    open_items = (select(Item.id, Item.member_scores, shown.label("shown")).outerjoin(live, live.c.item_id == Item.id)
                  .where(Item.project_id == project.id, shown < project.overlap, Item.id.not_in(mine)))
    if project.strategy == "uniform":  # the same rule as assign.choose, done by the database
        sub = open_items.subquery()
        picked_id = db.scalar(select(sub.c.id).order_by(sub.c.shown, func.random()).limit(1))
    else:
        rows = db.execute(open_items).all()
        picked = assign.choose([_Candidate(i, s) for i, s, _ in rows], {i: n for i, _, n in rows}, project.strategy,
                               rng)
        picked_id = None if picked is None else picked.id
    if picked_id is None:
        return None, False
    item = db.get(Item, picked_id)
    order = list(range(len(item.responses)))
    rng.shuffle(order)
    assignment = Assignment(item_id=item.id, user_id=user.id, order=order)
    db.add(assignment)
    return (item, assignment), True


class _Candidate:
    __slots__ = ("id", "member_scores")

    def __init__(self, id, member_scores):
        self.id, self.member_scores = id, member_scores


# --- votes --------------------------------------------------------------------------------------


def _request_hash(item_id: int, payload: dict) -> str:
    return hashlib.sha256(json.dumps({"item": item_id, "vote": payload}, sort_keys=True).encode()).hexdigest()


def _replay(db: Session, user: User, key: str, request_hash: str) -> Vote | None:
    vote = db.scalar(select(Vote).where(Vote.user_id == user.id, Vote.idempotency_key == key))
    if vote is not None and vote.request_hash != request_hash:
        raise FeedbackError(409, f"Idempotency-Key {key!r} was already used for a different vote "
                                 f"(vote {vote.id} on item {vote.item_id}); use a new key for a new vote")
    return vote


def submit_vote(db: Session, project: Project, user: User, item_id: int, payload: dict, key: str | None
                ) -> tuple[Vote, bool]:
    """Store a vote once: (vote, True) when new, (the stored vote, False) when `key` was seen
    before with the same request (a retry)."""
    if not key or len(key) > MAX_KEY or not key.isprintable():
        raise FeedbackError(400, f"every vote needs an Idempotency-Key header (1-{MAX_KEY} printable characters), "
                                 "the same on every retry of that vote")
    if not isinstance(payload, dict):
        raise FeedbackError(400, "the vote must be a JSON object")
    request_hash = _request_hash(item_id, payload)
    try:
        with write(db):
            return _store_vote(db, project, user, item_id, payload, key, request_hash)
    except IntegrityError:  # a retry of this same vote raced the first attempt
        stored = _replay(db, user, key, request_hash)
        db.rollback()
        if stored is None:
            raise FeedbackError(409, f"you already voted on item {item_id}") from None
        return stored, False


def _store_vote(db: Session, project: Project, user: User, item_id: int, payload: dict, key: str,
                request_hash: str) -> tuple[Vote, bool]:
    stored = _replay(db, user, key, request_hash)
    if stored is not None:
        return stored, False
    item = get_item(db, project, item_id)
    assignment = db.scalar(select(Assignment).where(Assignment.item_id == item.id, Assignment.user_id == user.id))
    if assignment is None:
        raise FeedbackError(409, f"item {item.id} was not shown to you; ask for your next item first "
                                 f"(GET /api/projects/{project.slug}/next)")
    existing = db.scalar(select(Vote).where(Vote.item_id == item.id, Vote.user_id == user.id))
    if existing is not None:
        raise FeedbackError(409, f"you already voted on item {item.id} (vote {existing.id})")
    try:
        canonical = TASKS[project.task].parse(payload, item.responses, assignment.order, project)
    except VoteError as exc:
        raise FeedbackError(422, f"bad vote for a {project.task} item: {exc}") from None
    vote = Vote(project_id=project.id, item_id=item.id, user_id=user.id, idempotency_key=key,
                request_hash=request_hash, payload=canonical, order=list(assignment.order))
    db.add(vote)
    assignment.answered_at = now()
    return vote, True


# --- progress -----------------------------------------------------------------------------------


def vote_rows(db: Session, project: Project):
    """(vote, item, annotator name) for every vote of the project, oldest first."""
    return db.execute(select(Vote, Item, User.name).join(Item, Item.id == Vote.item_id)
                      .join(User, User.id == Vote.user_id).where(Vote.project_id == project.id)
                      .order_by(Vote.id)).all()


def progress(db: Session, project: Project) -> dict:
    items = db.scalar(select(func.count()).select_from(Item).where(Item.project_id == project.id))
    per_annotator, per_item, labels = {}, {}, {}
    label = TASKS[project.task].label
    for vote, item, name in vote_rows(db, project):
        per_annotator[name] = per_annotator.get(name, 0) + 1
        per_item[item.id] = per_item.get(item.id, 0) + 1
        labels.setdefault(item.id, {})[name] = label(vote.payload)
    kappa, pairs = mean_pairwise_kappa(labels)
    return {"project": project.slug, "task": project.task, "strategy": project.strategy, "overlap": project.overlap,
            "items": items, "votes": sum(per_annotator.values()),
            "items_complete": sum(n >= project.overlap for n in per_item.values()),
            "items_multiply_labeled": sum(n >= 2 for n in per_item.values()),
            "per_annotator": dict(sorted(per_annotator.items())),
            "cohen_kappa": kappa, "kappa_pairs": pairs, "krippendorff_alpha": krippendorff_alpha(labels)}

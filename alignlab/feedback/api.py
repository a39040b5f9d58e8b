"""The JSON API (`/api/...`), authenticated by per-annotator bearer tokens. A token reaches only
the projects its user belongs to; anything else answers 404 as if it did not exist."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Body, Depends, Header, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from alignlab.feedback import store
from alignlab.feedback.db import Assignment, Project, User
from alignlab.feedback.deps import api_user, database
from alignlab.feedback.tasks import letters

router = APIRouter(prefix="/api")
log = logging.getLogger("alignlab.feedback")


def project_json(project: Project) -> dict:
    return {"slug": project.slug, "title": project.title, "task": project.task, "overlap": project.overlap,
            "strategy": project.strategy, "attributes": project.attributes, "scale": project.scale,
            "instructions": project.instructions}


def shown_item(project: Project, item, assignment) -> dict:
    """The item as this annotator sees it: responses in their presentation order, by letter."""
    return {"item": item.id, "task": project.task, "prompt": item.prompt,
            "responses": [{"letter": letter, "text": item.responses[i]}
                          for letter, i in zip(letters(len(assignment.order)), assignment.order)],
            "attributes": project.attributes, "scale": project.scale}


@router.get("/health")
def health() -> dict:
    return {"ok": True}


@router.get("/me")
def me(user: User = Depends(api_user), db: Session = Depends(database)) -> dict:
    return {"user": user.name, "admin": user.is_admin, "projects": [p.slug for p in store.projects_of(db, user)]}


@router.get("/projects")
def projects(user: User = Depends(api_user), db: Session = Depends(database)) -> list:
    return [project_json(p) for p in store.projects_of(db, user)]


@router.get("/projects/{slug}")
def project(slug: str, user: User = Depends(api_user), db: Session = Depends(database)) -> dict:
    return project_json(store.project_for(db, slug, user))


@router.get("/projects/{slug}/next")
def next_item(slug: str, user: User = Depends(api_user), db: Session = Depends(database)) -> dict:
    project = store.project_for(db, slug, user)
    found = store.next_assignment(db, project, user)
    if found is None:
        return {"item": None, "done": True}
    return {**shown_item(project, *found), "done": False}


@router.get("/projects/{slug}/items/{item_id}")
def item(slug: str, item_id: int, user: User = Depends(api_user), db: Session = Depends(database)) -> dict:
    project = store.project_for(db, slug, user)
    found = store.get_item(db, project, item_id)
    assignment = db.scalar(select(Assignment).where(Assignment.item_id == found.id, Assignment.user_id == user.id))
    if assignment is None:
        raise store.FeedbackError(409, f"item {found.id} was not shown to you; ask for your next item first")
    return shown_item(project, found, assignment)


@router.post("/projects/{slug}/items/{item_id}/vote", status_code=201)
def vote(slug: str, item_id: int, response: Response, payload: dict = Body(...),
         idempotency_key: str | None = Header(None), user: User = Depends(api_user),
         db: Session = Depends(database)) -> dict:
    project = store.project_for(db, slug, user)
    stored, created = store.submit_vote(db, project, user, item_id, payload, idempotency_key)
    if not created:
        response.status_code = 200
    log.info("vote %s on item %s by %s%s", stored.id, stored.item_id, user.name, "" if created else " (replayed)")
    return {"vote": stored.id, "item": stored.item_id, "replayed": not created, "created_at": stored.created_at}


@router.get("/projects/{slug}/progress")
def progress(slug: str, user: User = Depends(api_user), db: Session = Depends(database)) -> dict:
    return store.progress(db, store.project_for(db, slug, user))

"""Server-rendered pages for people: log in, annotate, progress, and the admin page. Every form
post carries the CSRF token of its page (`deps.check_csrf`); votes carry an idempotency key made
when the page was rendered, so a double click or a resent form stores one vote."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException

from alignlab.data.records import prompt_messages
from alignlab.feedback import store
from alignlab.feedback.app import TEMPLATES
from alignlab.feedback.auth import end_session, issue_token, start_session, verify_password
from alignlab.feedback.db import Assignment, User
from alignlab.feedback.deps import CSRF_COOKIE, SESSION_COOKIE, Login, check_csrf, database, login, page_user
from alignlab.feedback.store import FeedbackError
from alignlab.feedback.tasks import STRENGTHS, letters

router = APIRouter()
log = logging.getLogger("alignlab.feedback")


async def form_data(request: Request) -> dict:
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


def render(request: Request, name: str, who: Login, status: int = 200, **context):
    response = TEMPLATES.TemplateResponse(request, name, {"user": who.user, "csrf": who.csrf, **context},
                                          status_code=status)
    if who.new_csrf_cookie:
        response.set_cookie(CSRF_COOKIE, who.new_csrf_cookie, httponly=True, samesite="strict",
                            secure=request.app.state.secure_cookies)
    return response


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- login --------------------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, who: Login = Depends(login)):
    return render(request, "login.html", who)


@router.post("/login")
def login_post(request: Request, form: dict = Depends(form_data), who: Login = Depends(login),
               db: Session = Depends(database)):
    check_csrf(who, form.get("csrf"))
    name = form.get("username", "").strip()
    user = db.scalar(select(User).where(User.name == name))
    if user is None or not verify_password(form.get("password", ""), user.password_hash):
        log.info("failed login for user name %r", name[:64])
        return render(request, "login.html", who, status=401, error="wrong user name or password")
    key = start_session(db, user)
    db.commit()
    log.info("login: %s", user.name)
    response = _redirect("/")
    response.set_cookie(SESSION_COOKIE, key, httponly=True, samesite="lax", secure=request.app.state.secure_cookies,
                        max_age=12 * 3600)
    response.delete_cookie(CSRF_COOKIE)
    return response


@router.post("/logout")
def logout(request: Request, form: dict = Depends(form_data), who: Login = Depends(page_user),
           db: Session = Depends(database)):
    check_csrf(who, form.get("csrf"))
    end_session(db, request.cookies.get(SESSION_COOKIE))
    db.commit()
    response = _redirect("/login")
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/")
def home(request: Request, who: Login = Depends(page_user), db: Session = Depends(database)):
    return render(request, "home.html", who, projects=store.projects_of(db, who.user))


# --- annotating ---------------------------------------------------------------------------------


def _annotate(request, who, db, project, item, assignment, status=200, error=None, saved=False):
    shown = [(letter, item.responses[i]) for letter, i in zip(letters(len(assignment.order)), assignment.order)]
    return render(request, "annotate.html", who, status=status, project=project, item=item, shown=shown,
                  messages=prompt_messages(item.prompt), strengths=STRENGTHS, key=uuid.uuid4().hex,
                  error=error, saved=saved, ranks=range(1, len(shown) + 1),
                  scores=range(1, project.scale + 1))


@router.get("/p/{slug}")
def annotate(slug: str, request: Request, who: Login = Depends(page_user), db: Session = Depends(database)):
    project = store.project_for(db, slug, who.user)
    found = store.next_assignment(db, project, who.user)
    saved = request.query_params.get("saved") == "1"
    if found is None:
        return render(request, "done.html", who, project=project, saved=saved)
    return _annotate(request, who, db, project, *found, saved=saved)


def _spans(form: dict) -> list:
    quote, where = form.get("highlight", "").strip(), form.get("highlight_in", "")
    if not quote:
        return []
    return [{"response": where, "quote": quote, "label": form.get("highlight_label", "").strip() or None}]


def form_vote(task: str, form: dict, shown: dict[str, str], attributes: list[str]) -> dict:
    """The API payload a task's form stands for."""
    critique = form.get("critique") or None
    if task == "pairwise":
        payload = {"choice": form.get("choice"), "strength": form.get("strength") or None, "critique": critique}
        attrs = {}
        for name in attributes:
            scores = {x: form[f"attr:{name}:{x}"] for x in "AB" if form.get(f"attr:{name}:{x}")}
            if scores:
                attrs[name] = scores
        if attrs:
            payload["attributes"] = attrs
        spans = []
        for span in _spans(form):
            text = shown.get(span["response"])
            if text is None or span["quote"] not in text:
                raise FeedbackError(422, f"the highlighted words are not in response {span['response'] or '?'}; "
                                         "copy them exactly")
            start = text.index(span["quote"])
            spans.append({"response": span["response"], "start": start, "end": start + len(span["quote"]),
                          **({"label": span["label"]} if span["label"] else {})})
        if spans:
            payload["spans"] = spans
        return payload
    if task == "ranking":
        ranks = {x: form.get(f"rank:{x}", "") for x in shown}
        if sorted(ranks.values()) != [str(i) for i in range(1, len(shown) + 1)]:
            raise FeedbackError(422, f"give each response a different rank from 1 (best) to {len(shown)}")
        return {"ranking": sorted(ranks, key=lambda x: int(ranks[x])), "critique": critique}
    if task == "rating":
        return {"ratings": {a: form.get(f"rating:{a}") for a in (attributes or ["overall"])}, "critique": critique}
    return {"thumbs": form.get("thumbs"), "critique": critique}


@router.post("/p/{slug}/items/{item_id}")
def vote(slug: str, item_id: int, request: Request, form: dict = Depends(form_data),
         who: Login = Depends(page_user), db: Session = Depends(database)):
    check_csrf(who, form.get("csrf"))
    project = store.project_for(db, slug, who.user)
    item = store.get_item(db, project, item_id)
    assignment = db.scalar(select(Assignment).where(Assignment.item_id == item.id, Assignment.user_id == who.user.id))
    if assignment is None:
        raise FeedbackError(409, f"item {item.id} was not shown to you")
    shown = {letter: item.responses[i] for letter, i in zip(letters(len(assignment.order)), assignment.order)}
    try:
        payload = form_vote(project.task, form, shown, project.attributes)
        store.submit_vote(db, project, who.user, item.id, payload, form.get("key"))
    except FeedbackError as exc:
        if exc.status != 422:
            raise
        db.rollback()
        return _annotate(request, who, db, project, item, assignment, status=422, error=exc.message)
    return _redirect(f"/p/{project.slug}?saved=1")


@router.get("/p/{slug}/progress")
def progress(slug: str, request: Request, who: Login = Depends(page_user), db: Session = Depends(database)):
    project = store.project_for(db, slug, who.user)
    return render(request, "progress.html", who, project=project, progress=store.progress(db, project))


# --- admin --------------------------------------------------------------------------------------


def _admin(who: Login) -> None:
    if not who.user.is_admin:
        raise HTTPException(403, "only an admin can open this page")


def _admin_page(request, who, db, status=200, **context):
    users = list(db.scalars(select(User).order_by(User.name)))
    return render(request, "admin.html", who, status=status, users=users,
                  projects=store.projects_of(db, who.user), **context)


@router.get("/admin")
def admin(request: Request, who: Login = Depends(page_user), db: Session = Depends(database)):
    _admin(who)
    return _admin_page(request, who, db)


@router.post("/admin/{action}")
def admin_post(action: str, request: Request, form: dict = Depends(form_data), who: Login = Depends(page_user),
               db: Session = Depends(database)):
    _admin(who)
    check_csrf(who, form.get("csrf"))
    token = None
    try:
        if action == "users":
            store.create_user(db, form.get("name", "").strip(), form.get("password") or None,
                              admin=form.get("admin") == "on")
            message = f"user {form.get('name')} created"
        elif action == "projects":
            store.create_project(db, form.get("slug", "").strip(), form.get("task", ""),
                                 overlap=int(form.get("overlap") or 1), strategy=form.get("strategy") or "uniform",
                                 attributes=(form.get("attributes") or "").split(","),
                                 scale=int(form.get("scale") or 5), title=form.get("title", "").strip(),
                                 instructions=form.get("instructions", "").strip())
            message = f"project {form.get('slug')} created"
        elif action == "members":
            store.add_member(db, store.get_project(db, form.get("project", "")), store.get_user(db, form.get("user", "")))
            message = f"{form.get('user')} added to {form.get('project')}"
        elif action == "tokens":
            user = store.get_user(db, form.get("user", ""))
            token = issue_token(db, user)
            message = f"API token for {user.name} (shown only now: copy it)"
        else:
            raise FeedbackError(404, f"no admin action {action!r}")
        db.commit()
        log.info("admin %s: %s", who.user.name, message)
    except (FeedbackError, ValueError) as exc:
        db.rollback()
        status = exc.status if isinstance(exc, FeedbackError) else 400
        return _admin_page(request, who, db, status=status, error=getattr(exc, "message", str(exc)))
    return _admin_page(request, who, db, message=message, token=token)

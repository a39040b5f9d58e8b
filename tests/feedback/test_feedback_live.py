"""The app as deployed: `alignlab feedback serve` in its own process on loopback, on SQLite and on
a real PostgreSQL. 50 concurrent annotators x 20 votes with retries and a crash-restart in the
middle store exactly 1,000 votes; no secret reaches the server's log."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
from feedback_servers import Server
from sqlalchemy import func, select

from alignlab.feedback import store
from alignlab.feedback.auth import issue_token
from alignlab.feedback.client import FeedbackClient
from alignlab.feedback.db import Vote, open_database

ANNOTATORS, VOTES_EACH = 50, 20


def setup_load_project(url: str) -> tuple[dict, object]:
    sessions = open_database(url)
    with sessions() as db:
        # 600 items x overlap 2: slack, so the last annotators still find items they have not judged
        project = store.create_project(db, "load", "pairwise", overlap=2)
        store.add_items(db, project, [{"prompt": f"question {i}", "responses": [f"answer {i}a", f"answer {i}b"]}
                                      for i in range(ANNOTATORS * VOTES_EACH * 3 // 5)])
        tokens = {}
        for k in range(ANNOTATORS):
            user = store.create_user(db, f"a{k:02d}")
            store.add_member(db, project, user)
            tokens[user.name] = issue_token(db, user)
        db.commit()
    return tokens, sessions


def stored_votes(sessions) -> int:
    with sessions() as db:  # a read: never waits for the server's writes
        return db.scalar(select(func.count()).select_from(Vote))


def test_concurrent_annotators_with_retries_and_a_restart_store_every_vote_once(live_server):
    tokens, sessions = setup_load_project(live_server.database_url)
    live_server.start()
    replays, errors = [], []

    def annotator(name: str, token: str) -> None:
        client = FeedbackClient(live_server.url, token, retries=60, timeout=5, max_backoff=0.5)
        try:
            for n in range(VOTES_EACH):
                shown = client.next("load")
                assert not shown["done"], f"{name}: nothing left after {n} votes"
                key = uuid.uuid4().hex
                vote = {"choice": "A" if n % 3 else "B", "strength": n % 4}
                first = client.vote("load", shown["item"], vote, key)
                if n % 4 == 0:  # the answer "got lost": the client sends the same vote with the same key again
                    again = client.vote("load", shown["item"], vote, key)
                    assert again["vote"] == first["vote"] and again["replayed"], (first, again)
                    replays.append(1)
        except Exception as exc:  # reported below: a thread's assertion does not fail the test by itself
            errors.append(f"{name}: {exc!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=annotator, args=item) for item in tokens.items()]
    for t in threads:
        t.start()
    # crash the server (SIGKILL) once about half the votes are in, and start it again on the same port
    deadline = time.monotonic() + 120
    while stored_votes(sessions) < ANNOTATORS * VOTES_EACH // 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    before_crash = stored_votes(sessions)
    live_server.kill()
    live_server.start()
    for t in threads:
        t.join(180)
    assert not errors, errors[:5]
    assert 0 < before_crash < ANNOTATORS * VOTES_EACH
    assert stored_votes(sessions) == ANNOTATORS * VOTES_EACH and len(replays) == ANNOTATORS * VOTES_EACH // 4
    with sessions() as db:
        per_user = db.execute(select(Vote.user_id, func.count()).group_by(Vote.user_id)).all()
        per_item = db.execute(select(Vote.item_id, func.count()).group_by(Vote.item_id)).all()
    assert len(per_user) == ANNOTATORS and {n for _, n in per_user} == {VOTES_EACH}
    assert max(n for _, n in per_item) <= 2  # overlap 2; an item is never voted twice by one annotator
    assert len(re.findall(r"alignlab feedback: serving", live_server.log_path.read_text())) == 2


def test_secrets_never_reach_the_log(database_url, tmp_path):

    db_password = "db-Secret-Pw-0"
    if database_url.startswith("postgresql"):  # trust auth: the password is accepted and unused
        database_url = database_url.replace("alignlab@", f"alignlab:{db_password}@")
    sessions = open_database(database_url)
    passwords = {"boss": "boss-Secret-Pw-1", "ann": "ann-Secret-Pw-2"}
    with sessions() as db:
        project = store.create_project(db, "p1", "pairwise")
        store.add_items(db, project, [{"prompt": "hi", "responses": ["a", "b"]}, {"prompt": "yo", "responses": ["c", "d"]}])
        store.create_user(db, "boss", passwords["boss"], admin=True)
        ann = store.create_user(db, "ann", passwords["ann"])
        store.add_member(db, project, ann)
        token = issue_token(db, ann)
        db.commit()
    server = Server(database_url, tmp_path / "server.log").start()
    secrets = [db_password, *passwords.values(), "wrong-Secret-Pw-3", token, "alf_bogus-Secret-token"]
    try:
        with httpx.Client(base_url=server.url) as browser:
            csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/login").text).group(1)
            browser.post("/login", data={"username": "ann", "password": "wrong-Secret-Pw-3", "csrf": csrf})
            assert browser.post("/login", data={"username": "ann", "password": passwords["ann"],
                                                "csrf": csrf}).status_code == 303
            secrets += [browser.cookies["alignlab_session"], csrf]
            page = browser.get("/p/p1").text
            fields = dict(re.findall(r'name="(csrf|key)" value="([^"]+)"', page))
            item = re.search(r'action="/p/p1/items/(\d+)"', page).group(1)
            assert browser.post(f"/p/p1/items/{item}", data={**fields, "choice": "A"}).status_code == 303
            secrets.append(fields["csrf"])
        with httpx.Client(base_url=server.url) as admin:
            csrf = re.search(r'name="csrf" value="([^"]+)"', admin.get("/login").text).group(1)
            admin.post("/login", data={"username": "boss", "password": passwords["boss"], "csrf": csrf})
            csrf = re.search(r'name="csrf" value="([^"]+)"', admin.get("/admin").text).group(1)
            made = admin.post("/admin/tokens", data={"csrf": csrf, "user": "ann"}).text
            secrets.append(re.search(r'id="token">([^<]+)<', made).group(1))
        client = FeedbackClient(server.url, token)
        shown = client.next("p1")
        client.vote("p1", shown["item"], {"choice": "B"})
        assert httpx.get(server.url + "/api/me", headers={"Authorization": "Bearer alf_bogus-Secret-token"}
                         ).status_code == 401
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "POST /login" in log and "failed login for user name 'ann'" in log and "vote" in log  # the log works
    leaked = [s for s in secrets if s in log]
    assert not leaked, f"secrets in the server log: {leaked}"

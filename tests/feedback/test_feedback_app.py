"""The feedback app in-process (FastAPI's TestClient), each test on SQLite and on a real
PostgreSQL: schema, accounts, isolation, CSRF, votes and idempotency, tasks, export, agreement."""

from __future__ import annotations

import json
import random
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alignlab.data import load_records
from alignlab.feedback import store
from alignlab.feedback.agreement import cohen_kappa, krippendorff_alpha, mean_pairwise_kappa
from alignlab.feedback.app import create_app
from alignlab.feedback.auth import issue_token, verify_password
from alignlab.feedback.db import Base, Vote, make_engine, migrate
from alignlab.feedback.export import export, project_records, record_row

PROMPT = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
          {"role": "user", "content": "Now politely."}]


def seed(app, task="pairwise", items=None, overlap=1, annotators=("ann",), **project):
    """Project p1 (+ an unrelated p2 with one item), an admin, annotators in p1; returns tokens."""
    with app.state.sessions() as db:
        store.create_user(db, "boss", "boss-password", admin=True)
        p1 = store.create_project(db, "p1", task, overlap=overlap, **project)
        p2 = store.create_project(db, "p2", "pairwise")
        tokens = {}
        for name in annotators:
            user = store.create_user(db, name, f"{name}-password")
            store.add_member(db, p1, user)
            tokens[name] = issue_token(db, user)
        other = store.create_user(db, "eve", "eve-password")
        store.add_member(db, p2, other)
        tokens["eve"] = issue_token(db, other)
        store.add_items(db, p1, items or [{"prompt": PROMPT, "responses": ["Hello, nice to meet you.", "hey"]}])
        store.add_items(db, p2, [{"prompt": "secret prompt of p2", "responses": ["x", "y"]}])
        db.commit()
    return tokens


def auth(token, key=None):
    return {"Authorization": f"Bearer {token}", **({"Idempotency-Key": key} if key else {})}


@pytest.fixture
def app(database_url):
    return create_app(database_url)


@pytest.fixture
def client(app):
    return TestClient(app)


def count_votes(app) -> int:
    with app.state.sessions() as db:
        return db.scalar(select(func.count()).select_from(Vote))


def test_migrations_create_the_models_schema_and_rerun_cleanly(database_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # already at head: nothing to do, no error
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert MigrationContext.configure(conn).get_current_revision() == "0001"


def test_passwords_are_salted_scrypt_and_tokens_stored_as_hashes(app):
    tokens = seed(app)
    with app.state.sessions() as db:
        user = store.get_user(db, "ann")
        other = store.create_user(db, "twin", "ann-password")
        assert user.password_hash.startswith("scrypt$16384$8$1$") and "ann-password" not in user.password_hash
        assert user.password_hash != other.password_hash  # salted
        assert verify_password("ann-password", user.password_hash)
        assert not verify_password("ann-passwordX", user.password_hash)
        stored = db.scalars(select(store.User.name)).all()
        from alignlab.feedback.db import ApiToken

        assert all(tokens["ann"] not in (t.token_hash, t.prefix) for t in db.scalars(select(ApiToken)))
        assert "ann" in stored
    with pytest.raises(store.FeedbackError, match="at least 8"):
        with app.state.sessions() as db:
            store.create_user(db, "short", "1234567")


def test_a_pairwise_vote_is_stored_by_response_with_the_order_shown(app, client):
    tokens = seed(app, attributes=["helpful"])
    shown = client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json()
    assert shown["prompt"] == PROMPT and [r["letter"] for r in shown["responses"]] == ["A", "B"]
    b_text = shown["responses"][1]["text"]
    vote = {"choice": "B", "strength": 3, "critique": "  more polite  ", "attributes": {"helpful": {"A": 2, "B": 5}},
            "spans": [{"response": "A", "start": 0, "end": 2, "label": "rude"}]}
    r = client.post(f"/api/projects/p1/items/{shown['item']}/vote", headers=auth(tokens["ann"], "k1"), json=vote)
    assert r.status_code == 201, r.text
    with app.state.sessions() as db:
        stored = db.scalar(select(Vote))
        item = store.get_item(db, store.get_project(db, "p1"), shown["item"])
    winner = item.responses.index(b_text)
    assert stored.payload["choice"] == "ab"[winner]
    assert [item.responses[i] for i in stored.order] == [r["text"] for r in shown["responses"]]
    assert stored.payload["strength"] == 3 and stored.payload["critique"] == "more polite"
    assert stored.payload["attributes"]["helpful"][winner] == 5 and stored.payload["attributes"]["helpful"][1 - winner] == 2
    a_index = stored.order[0]
    assert stored.payload["spans"] == [{"response": a_index, "start": 0, "end": 2,
                                        "text": item.responses[a_index][:2], "label": "rude"}]


def test_the_presentation_order_is_randomized(app, client):
    items = [{"prompt": f"p{i}", "responses": ["first", "second"]} for i in range(40)]
    tokens = seed(app, items=items)
    firsts = []
    for i in range(40):
        shown = client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json()
        firsts.append(shown["responses"][0]["text"])
        assert client.post(f"/api/projects/p1/items/{shown['item']}/vote", headers=auth(tokens["ann"], f"k{i}"),
                           json={"choice": "tie"}).status_code == 201
    # 40 fair coin flips: P(fewer than 8 of either) < 1e-4
    assert 8 <= firsts.count("first") <= 32
    assert client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json() == {"item": None, "done": True}


def test_idempotency_keys_store_each_vote_once(app, client):
    tokens = seed(app)
    item = client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json()["item"]
    url = f"/api/projects/p1/items/{item}/vote"
    first = client.post(url, headers=auth(tokens["ann"], "key-1"), json={"choice": "A"})
    again = client.post(url, headers=auth(tokens["ann"], "key-1"), json={"choice": "A"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["vote"] == first.json()["vote"] and again.json()["replayed"] is True
    changed = client.post(url, headers=auth(tokens["ann"], "key-1"), json={"choice": "B"})
    assert changed.status_code == 409 and "already used for a different vote" in changed.json()["error"]
    second = client.post(url, headers=auth(tokens["ann"], "key-2"), json={"choice": "B"})
    assert second.status_code == 409 and "already voted on item" in second.json()["error"]
    assert count_votes(app) == 1


@pytest.mark.parametrize("headers,body,status,message", [
    ({}, {"choice": "A"}, 400, "needs an Idempotency-Key header"),
    ({"Idempotency-Key": "k"}, {"choice": "C"}, 422, "choice: expected one of A, B, tie, both_bad, got 'C'"),
    ({"Idempotency-Key": "k"}, {"choice": "A", "strength": 7}, 422, "strength: expected 0-3"),
    ({"Idempotency-Key": "k"}, {"choice": "A", "colour": 1}, 422, "colour: unknown field"),
    ({"Idempotency-Key": "k"}, {"choice": "A", "spans": [{"response": "A", "start": 5, "end": 2}]}, 422,
     "spans[0]: start and end must satisfy"),
    ({"Idempotency-Key": "k"}, None, 422, "the request body must be a JSON object"),
])
def test_bad_votes_get_a_4xx_naming_the_problem(app, client, headers, body, status, message):
    tokens = seed(app)
    item = client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json()["item"]
    kwargs = {"content": b"{not json"} if body is None else {"json": body}
    r = client.post(f"/api/projects/p1/items/{item}/vote", headers={**auth(tokens["ann"]), **headers}, **kwargs)
    assert r.status_code == status and message in r.json()["error"], r.text
    assert count_votes(app) == 0


def test_bad_requests_and_tokens_get_clear_4xx(app, client):
    tokens = seed(app)
    assert client.get("/api/projects/p1/next").status_code == 401
    r = client.get("/api/projects/p1/next", headers=auth("alf_not-a-token"))
    assert r.status_code == 401 and r.json()["error"] == "invalid or revoked API token"
    assert client.get("/api/projects/nope/next", headers=auth(tokens["ann"])).json()["error"] == \
        "no project 'nope' that you are a member of"
    r = client.get("/api/projects/p1/items/abc", headers=auth(tokens["ann"]))
    assert r.status_code == 422 and "item_id" in r.json()["error"]
    assert client.post("/api/projects/p1/items/99999/vote", headers=auth(tokens["ann"], "k"),
                       json={"choice": "A"}).status_code == 404


def test_a_token_cannot_read_or_write_another_projects_items(app, client):
    tokens = seed(app)
    ann, eve = auth(tokens["ann"]), auth(tokens["eve"])
    assert [p["slug"] for p in client.get("/api/projects", headers=ann).json()] == ["p1"]
    p2_item = client.get("/api/projects/p2/next", headers=eve).json()["item"]
    for method, url in [("GET", "/api/projects/p2"), ("GET", "/api/projects/p2/next"),
                        ("GET", "/api/projects/p2/progress"), ("GET", f"/api/projects/p2/items/{p2_item}")]:
        r = client.request(method, url, headers=ann)
        assert r.status_code == 404 and "secret" not in r.text, (url, r.text)
    r = client.post(f"/api/projects/p2/items/{p2_item}/vote", headers={**ann, "Idempotency-Key": "x"},
                    json={"choice": "A"})
    assert r.status_code == 404
    # the item id of p2 through ann's own project: no such item there
    client.get("/api/projects/p1/next", headers=ann)
    r = client.post(f"/api/projects/p1/items/{p2_item}/vote", headers={**ann, "Idempotency-Key": "y"},
                    json={"choice": "A"})
    assert r.status_code == 404 and r.json()["error"] == f"no item {p2_item} in project 'p1'"
    assert count_votes(app) == 0


def login(client, name, password) -> str:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": name, "password": password, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf


def form_fields(html: str) -> dict:
    return dict(re.findall(r'name="(csrf|key)" value="([^"]+)"', html))


def test_browser_forms_need_their_csrf_token(app):
    seed(app)
    browser = TestClient(app)
    page = browser.get("/login")
    r = browser.post("/login", data={"username": "ann", "password": "ann-password"})
    assert r.status_code == 403 and "CSRF" in r.text
    cross_site = TestClient(app)  # a form posted from elsewhere carries no cookie of ours
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    assert cross_site.post("/login", data={"username": "ann", "password": "ann-password",
                                           "csrf": csrf}).status_code == 403
    assert browser.post("/login", data={"username": "ann", "password": "wrong", "csrf": csrf}).status_code == 401
    login(browser, "ann", "ann-password")
    page = browser.get("/p/p1")
    fields = form_fields(page.text)
    item = re.search(r'action="/p/p1/items/(\d+)"', page.text).group(1)
    forged = browser.post(f"/p/p1/items/{item}", data={"csrf": "forged", "key": fields["key"], "choice": "A"})
    assert forged.status_code == 403 and count_votes(app) == 0
    ok = browser.post(f"/p/p1/items/{item}", data={**fields, "choice": "A", "strength": "1"}, follow_redirects=False)
    assert ok.status_code == 303 and count_votes(app) == 1
    resent = browser.post(f"/p/p1/items/{item}", data={**fields, "choice": "A", "strength": "1"},
                          follow_redirects=False)  # a double click
    assert resent.status_code == 303 and count_votes(app) == 1
    assert browser.get("/p/p2").status_code == 404 and browser.get("/admin").status_code == 403


def test_the_admin_page_creates_projects_accounts_and_tokens(app):
    seed(app)
    browser = TestClient(app)
    csrf = login(browser, "boss", "boss-password")
    csrf = form_fields(browser.get("/admin").text)["csrf"]
    assert browser.post("/admin/projects", data={"csrf": csrf, "slug": "p3", "task": "ranking"}).status_code == 200
    assert browser.post("/admin/users", data={"csrf": csrf, "name": "zed", "password": "zed-password"}).status_code == 200
    assert browser.post("/admin/members", data={"csrf": csrf, "project": "p3", "user": "zed"}).status_code == 200
    r = browser.post("/admin/tokens", data={"csrf": csrf, "user": "zed"})
    token = re.search(r'id="token">([^<]+)<', r.text).group(1)
    assert TestClient(app).get("/api/me", headers=auth(token)).json() == {"user": "zed", "admin": False,
                                                                         "projects": ["p3"]}
    bad = browser.post("/admin/projects", data={"csrf": csrf, "slug": "p4", "task": "essay"})
    assert bad.status_code == 400 and "task &#39;essay&#39;: use one of" in bad.text
    assert browser.post("/admin/users", data={"csrf": "nope", "name": "x1"}).status_code == 403


@pytest.mark.parametrize("task,responses,vote", [
    ("ranking", ["one", "two", "three"], lambda shown: {"ranking": ["C", "A", "B"], "critique": "C is best"}),
    ("rating", ["only"], lambda shown: {"ratings": {"overall": 4}}),
    ("thumbs", ["only"], lambda shown: {"thumbs": "down", "critique": "wrong"}),
])
def test_ranking_rating_and_thumbs_export_and_load_back_unchanged(app, client, tmp_path, task, responses, vote):
    tokens = seed(app, task=task, items=[{"prompt": PROMPT, "responses": responses}])
    shown = client.get("/api/projects/p1/next", headers=auth(tokens["ann"])).json()
    assert client.post(f"/api/projects/p1/items/{shown['item']}/vote", headers=auth(tokens["ann"], "k"),
                       json=vote(shown)).status_code == 201
    text = [r["text"] for r in shown["responses"]]
    records, _ = project_records(app.state.sessions, "p1")
    record = records[0]
    if task == "ranking":
        assert record.responses == [text[2], text[0], text[1]]
        assert record.meta["feedback"]["critique"] == "C is best"
    elif task == "rating":
        assert record.ratings == [{"overall": 4.0}]
    else:
        assert record.desirable is False and record.meta["feedback"]["critique"] == "wrong"
    assert_round_trip(app, tmp_path)


def assert_round_trip(app, tmp_path):
    out = tmp_path / "prefs.jsonl"
    summary = export(app.state.sessions, "p1", out, overwrite=True)
    written, _ = project_records(app.state.sessions, "p1")
    loaded = load_records(out, to_pairs=False).records
    assert summary["records"] == len(written) == len(loaded) > 0
    for ours, theirs in zip(written, loaded):
        for key in ("file", "line", "location"):
            theirs.meta.pop(key)
        assert type(theirs) is type(ours) and theirs == ours
    return summary


def test_pairwise_export_round_trips_with_annotators_times_order_and_strength(app, client, tmp_path):
    items = [{"prompt": PROMPT if i % 2 else f"prompt {i}", "responses": [f"good {i}", f"bad {i}"],
              "sources": ["policy-a", "policy-b"]} for i in range(6)]
    tokens = seed(app, items=items, annotators=("ann", "bob"), overlap=2)
    choices = iter(["A", "B", "tie", "both_bad", "A", "B"] * 2)
    for name in ("ann", "bob"):
        for i in range(6):
            shown = client.get("/api/projects/p1/next", headers=auth(tokens[name])).json()
            body = {"choice": next(choices), "strength": i % 4, "critique": f"note {i}" if i % 3 == 0 else None}
            assert client.post(f"/api/projects/p1/items/{shown['item']}/vote", headers=auth(tokens[name], f"{i}"),
                               json=body).status_code == 201
    summary = assert_round_trip(app, tmp_path)
    assert summary["votes"] == 12 and summary["ties"] == 2 and summary["both_bad"] == 2 and summary["records"] == 8
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert {r["annotator"] for r in rows} == {"ann", "bob"}
    assert all(r["chosen"].startswith("good") or r["chosen"].startswith("bad") for r in rows)
    assert all(r["feedback"]["created_at"].endswith("+00:00") and sorted(r["feedback"]["order"]) == [0, 1]
               and r["feedback"]["sources"] == ["policy-a", "policy-b"] for r in rows)
    assert all(isinstance(r["margin"], float) for r in rows)
    assert record_row(load_records(tmp_path / "prefs.jsonl").records[0])["margin"] == rows[0]["margin"]


def test_overlap_shows_each_item_to_m_annotators_and_progress_reports_agreement(app, client):
    items = [{"prompt": f"q{i}", "responses": ["x", "y"]} for i in range(4)]
    tokens = seed(app, items=items, annotators=("ann", "bob", "cid"), overlap=2)
    labels = {}
    for name, answers in (("ann", ["A", "A", "A", "A"]), ("bob", ["A", "A", "A", "A"]), ("cid", ["A"] * 4)):
        for i in range(4):
            shown = client.get("/api/projects/p1/next", headers=auth(tokens[name])).json()
            if shown["done"]:
                break
            x_first = shown["responses"][0]["text"] == "x"
            choice = "A" if x_first == (shown["item"] % 2 == 0 or name == "ann") else "B"
            r = client.post(f"/api/projects/p1/items/{shown['item']}/vote", headers=auth(tokens[name], str(i)),
                            json={"choice": choice})
            assert r.status_code == 201
            labels.setdefault(shown["item"], {})[name] = "a" if (choice == "A") == x_first else "b"
    assert all(len(v) == 2 for v in labels.values()) and len(labels) == 4  # 4 items x 2 = 8 votes, then done
    progress = client.get("/api/projects/p1/progress", headers=auth(tokens["ann"])).json()
    assert progress["votes"] == 8 and progress["items_complete"] == 4
    assert progress["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(labels))
    assert progress["cohen_kappa"] == pytest.approx(mean_pairwise_kappa(labels)[0] if mean_pairwise_kappa(labels)[0]
                                                     is not None else None)
    page = TestClient(app)
    login(page, "ann", "ann-password")
    assert "Krippendorff" in page.get("/p/p1/progress").text


def test_agreement_matches_hand_worked_values():
    # kappa: p_o = 3/4; p_e = .5 * .25 + .5 * .75 = .5; (0.75 - 0.5) / 0.5 = 0.5
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "y", "y"]) == pytest.approx(0.5)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None
    # alpha: units {x,x}, {x,y}, {y,y} and a single label (not pairable): o_xx = o_yy = 2, o_xy = o_yx = 1,
    # n_x = n_y = 3, n = 6; alpha = 1 - (6 - 1) * 2 / (3 * 3 * 2) = 4/9
    labels = {1: {"a": "x", "b": "x"}, 2: {"a": "x", "b": "y"}, 3: {"a": "y", "c": "y"}, 4: {"a": "x"}}
    assert krippendorff_alpha(labels) == pytest.approx(4 / 9)
    assert krippendorff_alpha({1: {"a": "x", "b": "x"}}) is None
    # pairs: (a, b) share items 1, 2 -> p_o = 1/2, p_e = (2*1)/4 = 1/2 -> kappa 0; (a, c) share one item only
    assert mean_pairwise_kappa(labels) == (pytest.approx(0.0), 1)


class FakeItem:
    def __init__(self, id, member_scores):
        self.id, self.member_scores = id, member_scores


def test_uncertainty_and_thompson_query_where_the_ensemble_disagrees():
    from alignlab.feedback.assign import choose

    agree = FakeItem(1, [[2.0, 0.0], [3.0, 0.0], [1.0, 0.0], [2.5, 0.0]])  # every member prefers the first
    split = FakeItem(2, [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # two and two
    lean = FakeItem(3, [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # three to one
    rng = random.Random(0)
    items = [agree, split, lean]
    assert {choose(items, {}, "uncertainty", rng).id for _ in range(20)} == {2}
    picks = [choose(items, {}, "thompson", rng).id for _ in range(400)]
    # two random members disagree with p = 1/2 on `split`, 3/8 on `lean`, never on `agree`, which is
    # served only when no draw disagrees (p = 5/16, then one of three): P = 0.51, 0.39, 0.10
    assert picks.count(1) < 70 and picks.count(2) > picks.count(3) > 2 * picks.count(1)
    assert {choose(items, {}, "uniform", rng).id for _ in range(60)} == {1, 2, 3}
    assert choose([agree], {}, "thompson", rng).id == 1  # nothing informative left: any open item
    assert choose(items, {2: 1, 3: 1}, "uncertainty", rng).id == 1  # fewest annotators first


@pytest.mark.parametrize("task,fields,expected", [
    ("ranking", {"rank:A": "2", "rank:B": "1", "rank:C": "3"}, lambda shown: {"ranking": [shown["B"], shown["A"],
                                                                                          shown["C"]]}),
    ("rating", {"rating:overall": "4", "critique": "fine"}, lambda shown: {"ratings": {"overall": 4.0},
                                                                           "critique": "fine"}),
    ("thumbs", {"thumbs": "up"}, lambda shown: {"up": True}),
    ("pairwise", {"choice": "B", "highlight": "nice", "highlight_in": "A", "highlight_label": "vague"},
     lambda shown: {"choice": "ab"[shown["B"]], "spans": [{"response": shown["A"], "start": [6, 3][shown["A"]],
                                                           "end": [10, 7][shown["A"]], "text": "nice",
                                                           "label": "vague"}]}),
])
def test_each_task_form_stores_what_was_chosen(app, task, fields, expected):
    responses = {"ranking": ["r0", "r1", "r2"], "pairwise": ["Hello nice day", "Hi nice day"]}.get(task, ["only"])
    seed(app, task=task, items=[{"prompt": PROMPT, "responses": responses}])
    browser = TestClient(app)
    login(browser, "ann", "ann-password")
    page = browser.get("/p/p1")
    item = int(re.search(r'action="/p/p1/items/(\d+)"', page.text).group(1))
    r = browser.post(f"/p/p1/items/{item}", data={**form_fields(page.text), **fields}, follow_redirects=False)
    assert r.status_code == 303, r.text
    with app.state.sessions() as db:
        vote = db.scalar(select(Vote))
    shown = {letter: index for letter, index in zip("ABC", vote.order)}
    assert {k: v for k, v in vote.payload.items() if v} == expected(shown)


def test_a_bad_form_shows_the_item_again_with_the_problem(app):
    seed(app, task="ranking", items=[{"prompt": "q", "responses": ["r0", "r1", "r2"]}])
    browser = TestClient(app)
    login(browser, "ann", "ann-password")
    page = browser.get("/p/p1")
    item = re.search(r'action="/p/p1/items/(\d+)"', page.text).group(1)
    r = browser.post(f"/p/p1/items/{item}", data={**form_fields(page.text), "rank:A": "1", "rank:B": "1",
                                                  "rank:C": "2"})
    assert r.status_code == 422 and "give each response a different rank from 1 (best) to 3" in r.text
    assert f'action="/p/p1/items/{item}"' in r.text and count_votes(app) == 0


def test_logout_ends_the_session(app):
    seed(app)
    browser = TestClient(app)
    login(browser, "ann", "ann-password")
    csrf = form_fields(browser.get("/").text)["csrf"]
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert browser.get("/p/p1", follow_redirects=False).headers["location"] == "/login"


def test_cli_accounts_with_passwords_from_stdin(tmp_path, capsys, monkeypatch):
    import io

    from alignlab.cli import main

    url = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    monkeypatch.setattr("sys.stdin", io.StringIO("first-password\n"))
    assert main(["feedback", "user", "ann", "--password-stdin", *url]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("second-password\n"))
    assert main(["feedback", "user", "ann", "--reset-password", "--password-stdin", *url]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["feedback", "user", "ann", "--password-stdin", *url]) == 2
    assert "error: a password needs at least 8 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("another-password\n"))
    assert main(["feedback", "user", "ann", "--password-stdin", *url]) == 2
    assert "error: user 'ann' already exists" in capsys.readouterr().err
    app = create_app(url[1])
    with app.state.sessions() as db:
        assert verify_password("second-password", store.get_user(db, "ann").password_hash)
    assert main(["feedback", "token", "ann", *url]) == 0
    token = capsys.readouterr().out.strip()
    client = TestClient(app)
    assert client.get("/api/me", headers=auth(token)).status_code == 200
    assert main(["feedback", "token", "ann", "--revoke", *url]) == 0
    assert capsys.readouterr().out.strip() == "revoked 1 API token(s) of ann"
    assert client.get("/api/me", headers=auth(token)).json() == {"error": "invalid or revoked API token"}
    assert main(["feedback", "progress", "--project", "nope", *url]) == 2
    assert "error: no project 'nope'" in capsys.readouterr().err


def test_an_assignment_beyond_the_overlap_is_withdrawn(app):
    """Two requests that both took an item's last slot (a PostgreSQL race): once both rows are
    committed, each sees the other, so neither may stay whatever their ids (a rule that counted
    only lower ids let two concurrent requests both stay: an item got 3 votes at overlap 2 in
    CI); alone, an assignment is within the overlap; the annotator gets another item."""
    from alignlab.feedback.db import Assignment
    from alignlab.feedback.store import _beyond_overlap

    seed(app, items=[{"prompt": "x", "responses": ["a", "b"]}, {"prompt": "y", "responses": ["c", "d"]}],
         annotators=("ann", "bob"))
    with app.state.sessions() as db:
        project, ann, bob = store.get_project(db, "p1"), store.get_user(db, "ann"), store.get_user(db, "bob")
        first, a_first = store.next_assignment(db, project, ann)
        raced = Assignment(item_id=first.id, user_id=bob.id, order=[0, 1])  # committed just after ann's
        db.add(raced)
        db.commit()
        assert _beyond_overlap(db, project, a_first) and _beyond_overlap(db, project, raced)
        db.delete(raced)
        db.commit()
        assert not _beyond_overlap(db, project, a_first)
        other, _ = store.next_assignment(db, project, bob)
        assert other.id != first.id

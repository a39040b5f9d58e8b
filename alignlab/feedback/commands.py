"""The feedback command group: `alignlab feedback serve` runs the app; user, project, member and
token manage accounts; push queues items, export writes votes as records, progress reports.
Every command takes --database-url (default: $ALIGNLAB_FEEDBACK_DB or sqlite:///feedback.db) and
migrates the database first."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from alignlab.feedback.names import DEFAULT_URL, STRATEGIES, TASKS

ENV_URL = "ALIGNLAB_FEEDBACK_DB"


def require_app() -> None:
    """A clear message when the app's optional dependencies are not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "sqlalchemy", "alembic", "uvicorn", "jinja2", "httpx")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"the feedback app needs {', '.join(missing)}: pip install 'alignlab[feedback]'")


def _sessions(args):
    require_app()
    from alignlab.feedback.db import open_database

    return open_database(args.database_url)


def _print(obj) -> None:
    print(json.dumps(obj, indent=1, ensure_ascii=False))


def cmd_serve(args, rest) -> int:
    import logging

    require_app()
    import uvicorn

    from alignlab.feedback.app import create_app
    from alignlab.feedback.db import redact

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.database_url, secure_cookies=args.secure_cookies)
    print(f"alignlab feedback: serving {redact(args.database_url)} on http://{args.host}:{args.port}", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", proxy_headers=False,
                timeout_graceful_shutdown=5)
    return 0


def _password(args) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ValueError("give the password with --password-stdin (or --no-password for an API-token-only account)")
    first, second = getpass.getpass("password: "), getpass.getpass("again: ")
    if first != second:
        raise ValueError("the two passwords differ")
    return first


def cmd_user(args, rest) -> int:
    from alignlab.feedback import store

    sessions = _sessions(args)
    password = _password(args)
    with sessions() as db:
        existing = store.find_user(db, args.name) if args.reset_password else None
        if existing is not None:
            store.set_password(db, existing, password or "")
        else:
            store.create_user(db, args.name, password, admin=args.admin)
        db.commit()
    print(f"user {args.name}: {'password reset' if existing is not None else 'created'}"
          f"{' (admin)' if args.admin else ''}")
    return 0


def cmd_project(args, rest) -> int:
    from alignlab.feedback import store

    with _sessions(args)() as db:
        project = store.create_project(db, args.slug, args.task, overlap=args.overlap, strategy=args.strategy,
                                       attributes=(args.attributes or "").split(","), scale=args.scale,
                                       title=args.title or "", instructions=args.instructions or "")
        db.commit()
        print(f"project {project.slug} created: {project.task}, overlap {project.overlap}, {project.strategy}")
    return 0


def cmd_member(args, rest) -> int:
    from alignlab.feedback import store

    with _sessions(args)() as db:
        project = store.get_project(db, args.project)
        for name in args.users:
            store.add_member(db, project, store.get_user(db, name))
        db.commit()
    print(f"{', '.join(args.users)} can now annotate {args.project}")
    return 0


def cmd_token(args, rest) -> int:
    from alignlab.feedback import store
    from alignlab.feedback.auth import issue_token, revoke_tokens

    with _sessions(args)() as db:
        user = store.get_user(db, args.user)
        if args.revoke:
            print(f"revoked {revoke_tokens(db, user)} API token(s) of {user.name}")
            return 0
        token = issue_token(db, user)
    print(token)  # stdout only, once: it is stored as a hash
    return 0


def cmd_push(args, rest) -> int:
    from alignlab.feedback.push import generate_responses, push, read_prompts, read_responses

    if bool(args.responses) == bool(args.policy):
        raise ValueError("give either --responses FILE or --policy NAME (twice or more, with --prompts)")
    prompts = read_prompts(args.prompts) if args.prompts else None
    if args.policy and prompts is None:
        raise ValueError("--policy needs --prompts FILE")
    sessions = _sessions(args)
    rows = read_responses(args.responses, prompts) if args.responses else \
        generate_responses(prompts, args.policy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed)
    _print(push(sessions, args.project, rows, rm=args.rm))
    return 0


def cmd_export(args, rest) -> int:
    from alignlab.feedback.export import export

    _print(export(_sessions(args), args.project, args.output, overwrite=args.overwrite))
    return 0


def cmd_progress(args, rest) -> int:
    from alignlab.feedback import store

    with _sessions(args)() as db:
        _print(store.progress(db, store.get_project(db, args.project)))
    return 0


def add_parser(sub) -> None:
    """The `feedback` command group (called by alignlab.cli.build_parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--database-url", default=os.environ.get(ENV_URL, DEFAULT_URL),
                        help=f"sqlite:///FILE or postgresql://USER:PASSWORD@HOST:PORT/DB (default ${ENV_URL} or "
                             f"{DEFAULT_URL})")
    feedback = sub.add_parser("feedback", help="the human-feedback web app: serve, accounts, push items, export votes")
    fsub = feedback.add_subparsers(dest="feedback_command", required=True)

    serve = fsub.add_parser("serve", parents=[common], help="run the web app and its JSON API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--secure-cookies", action="store_true",
                       help="mark cookies Secure (behind an HTTPS reverse proxy)")
    serve.set_defaults(func=cmd_serve)

    user = fsub.add_parser("user", parents=[common], help="create an account (or reset its password)")
    user.add_argument("name")
    user.add_argument("--admin", action="store_true", help="may create projects, accounts and tokens, sees all")
    user.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    user.add_argument("--no-password", action="store_true", help="no browser login: API tokens only")
    user.add_argument("--reset-password", action="store_true", help="set a new password for an existing account")
    user.set_defaults(func=cmd_user)

    project = fsub.add_parser("project", parents=[common], help="create a project")
    project.add_argument("slug", help="short name used in URLs and commands")
    project.add_argument("--task", required=True, choices=TASKS)
    project.add_argument("--overlap", type=int, default=1, help="annotators per item (agreement needs 2 or more)")
    project.add_argument("--strategy", default="uniform", choices=STRATEGIES,
                         help="which item comes next: uniform | uncertainty (ensemble disagreement) | thompson "
                              "(randomized active queries); the last two need `push --rm`")
    project.add_argument("--attributes", help="comma-separated attributes scored 1..scale (ratings; optional for pairs)")
    project.add_argument("--scale", type=int, default=5, help="top score of ratings and attribute scores")
    project.add_argument("--title")
    project.add_argument("--instructions", help="shown to annotators above every item")
    project.set_defaults(func=cmd_project)

    member = fsub.add_parser("member", parents=[common], help="let users annotate a project")
    member.add_argument("project")
    member.add_argument("users", nargs="+")
    member.set_defaults(func=cmd_member)

    token = fsub.add_parser("token", parents=[common], help="print a new API token for a user (shown once)")
    token.add_argument("user")
    token.add_argument("--revoke", action="store_true", help="revoke all of the user's tokens instead")
    token.set_defaults(func=cmd_token)

    push = fsub.add_parser("push", parents=[common], help="queue items: a responses file, or sample from policies")
    push.add_argument("--project", required=True)
    push.add_argument("--prompts", help=".jsonl with a `prompt` per line (or .txt, one per line)")
    push.add_argument("--responses", help=".jsonl: {prompt, responses: [...], sources?} per line")
    push.add_argument("--policy", action="append", help="sample one response per prompt from this policy "
                                                        "(give --policy twice or more)")
    push.add_argument("--rm", help="reward-model ensemble scoring the items for --strategy uncertainty/thompson "
                                   "(DIR or DIR1+DIR2+...)")
    push.add_argument("--max-new-tokens", type=int, default=128)
    push.add_argument("--temperature", type=float, default=1.0)
    push.add_argument("--seed", type=int, default=0)
    push.set_defaults(func=cmd_push)

    export = fsub.add_parser("export", parents=[common], help="write the votes as training records (jsonl)")
    export.add_argument("--project", required=True)
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    export.set_defaults(func=cmd_export)

    progress = fsub.add_parser("progress", parents=[common], help="votes per annotator and agreement (JSON)")
    progress.add_argument("--project", required=True)
    progress.set_defaults(func=cmd_progress)

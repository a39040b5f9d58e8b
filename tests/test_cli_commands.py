"""Every `alignlab ...` command that a message, help string or doc names exists (issue 19, defect 9):
the command words parse with the real CLI parser, `train` names a real algorithm, `lab` a real
experiment, and each `--flag` of a train command is one of that trainer's settings."""

import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from alignlab.cli import LAB_EXPERIMENTS, build_parser, main
from alignlab.train.trainers import TRAINERS

ROOT = Path(__file__).resolve().parents[1]
TOP = ("train", "data", "eval", "bon", "lab", "demo", "feedback")
# `alignlab WORD ...` in code, or a bare `train WORD` / `data WORD` span (as in "needs `train kto`").
# A launcher prefix (`accelerate launch ... -m alignlab`, `torchrun ... -m alignlab`) counts too.
LAUNCHER = r"(?:accelerate launch|torchrun)[^`\n]*? -m alignlab(?:\.cli)?"
IN_TICKS = re.compile(r"`((?:alignlab|%s) [^`]+|(?:%s) [a-z][^`]*)`" % (LAUNCHER, "|".join(TOP)))
# In Python strings outside backticks, a command starts with a command word and is no label
# ("alignlab data report:" heads a printed report); prose such as "alignlab does ..." is skipped.
IN_TEXT = re.compile(r"\balignlab((?> (?:%s)(?: [a-z][\w.-]*)*))(?![\w.:-])" % "|".join(TOP))


def _python_strings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _markdown_code(text: str):
    fenced, spans = False, []
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced and re.match(r"\s*(\$ )?(alignlab |%s )" % LAUNCHER, line):
            spans.append(line.split("#")[0])
    return spans + [f"`{m}`" for m in re.findall(r"`([^`\n]+)`", text)]


def collect() -> dict[str, set[str]]:
    """{command text: {files naming it}}."""
    found: dict[str, set[str]] = {}
    sources = [(p, list(_python_strings(p))) for p in (ROOT / "alignlab").rglob("*.py")]
    sources += [(p, _markdown_code(p.read_text())) for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]]
    for path, texts in sources:
        for text in texts:
            commands = [m.group(1) for m in IN_TICKS.finditer(text)]
            commands += ["alignlab" + m.group(1) for m in IN_TEXT.finditer(text) if path.suffix == ".py"]
            if path.suffix == ".md" and not text.startswith("`") and re.search(r"alignlab |-m alignlab", text):
                commands.append(text.strip().removeprefix("$ "))
            for command in commands:
                found.setdefault(command.strip(), set()).add(str(path.relative_to(ROOT)))
    return found


def _words(command: str) -> list[str]:
    command = re.sub(r"^(%s|alignlab) " % LAUNCHER, "", command).replace("\\", " ")
    try:
        tokens = shlex.split(command)
    except ValueError:
        tokens = command.split()
    return [t for t in tokens if t not in ("...", "[", "]")]


def _placeholder(word: str) -> bool:
    """METHOD or <experiment>: a word a reader fills in."""
    return word.isupper() or (word.startswith("<") and word.endswith(">"))


def check(command: str) -> str | None:
    """None if `command` exists, else what is wrong."""
    tokens = _words(command)
    words = [t.strip("[]") for t in tokens]
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    if not words or words[0] not in choices:
        return f"no command {words[:1]}"
    sub = choices[words[0]]
    nested = [a for a in sub._actions if isinstance(a, type(parser._subparsers._group_actions[0]))]
    if nested:
        if len(words) < 2 or words[1] not in nested[0].choices:
            return f"no command '{' '.join(words[:2])}'"
    if words[0] == "train":
        if len(words) < 2 or words[1].startswith("-") or _placeholder(words[1]):
            return None  # `alignlab train --help`, `alignlab train METHOD`: no algorithm named
        if words[1] not in TRAINERS:
            return f"no algorithm '{words[1]}'"
        names = {f.name for f in dataclasses.fields(TRAINERS[words[1]].config)} | {"config", "dry_run", "help_settings"}
        for token in words[2:]:
            key = token[2:].split("=")[0].replace("-", "_") if token.startswith("--") else None
            if key and key not in names:
                return f"'train {words[1]}' has no setting --{key}"
    if words[0] == "lab" and len(words) > 1 and not words[1].startswith("-") and not _placeholder(words[1]) \
            and words[1] not in LAB_EXPERIMENTS:
        return f"no lab experiment '{words[1]}'"
    return None


COMMANDS = collect()


def test_commands_are_found_in_code_and_docs():
    assert len(COMMANDS) > 30
    assert any("alignlab train rm" in c for c in COMMANDS)  # a help string
    assert any(c.startswith("alignlab lab rm-accuracy") for c in COMMANDS)  # a docstring
    assert check("alignlab train ktoo") == "no algorithm 'ktoo'" and check("train ktoo") == "no algorithm 'ktoo'"
    assert check("alignlab data report") == "no command 'data report'"
    assert check("alignlab train dpo --betta 0.1") == "'train dpo' has no setting --betta"
    launched = [c for c in COMMANDS if c.startswith(("accelerate launch", "torchrun"))]
    assert any("-m alignlab train grpo" in c for c in launched)  # docs/distributed.md
    assert check("torchrun --standalone --nproc_per_node 2 -m alignlab train dpo --betta 1") == \
        "'train dpo' has no setting --betta"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_named_command_exists(command):
    problem = check(command)
    assert problem is None, f"{sorted(COMMANDS[command])}: `{command}`: {problem}"


@pytest.mark.parametrize("experiment", LAB_EXPERIMENTS)
def test_every_listed_lab_experiment_runs(experiment, capsys):
    assert main(["lab", experiment, "--help-settings"]) == 0
    assert "settings of" in capsys.readouterr().out


def test_the_trainer_table_is_the_cli_s_one_list_of_trainers():
    from alignlab.train.online import ONLINE_METHODS

    assert set(TRAINERS) == {"dpo", "pm", "rm", "sft", "kto", "listwise", *ONLINE_METHODS}
    for name, trainer in TRAINERS.items():
        assert trainer.name == name and trainer.paper and f"--{'kl-coef' if name in ONLINE_METHODS else 'seed'}" in trainer.help()
    assert "[default: 0.04]" in next(l for l in TRAINERS["grpo"].help().splitlines() if "--kl-coef" in l)

"""Preference sources named by a short string, as configs and the CLI give them:

    annotator:REWARD     a simulated annotator: hard labels sampled by Bradley-Terry from the
                         reward source REWARD (any reward spec, e.g. annotator:lab:sentiment) at
                         `temperature`, flipped with `flip_prob`
    judge:MODEL          an LLM judge (`judge`): judge:embedded (SmolLM2) or judge:DIR, a local model
    pm:DIR               a pairwise preference model from `alignlab train pm` (`pairwise`)
    cycle:short=N,long=N,margin=M  the lab's intransitive judge on response length in words:
                         short ≻ medium ≻ long ≻ short (`cycle`)
    app:PROJECT@URL      people voting in the feedback app: pairwise project PROJECT of the app's
                         database URL (e.g. app:online@sqlite:///feedback.db; needs the feedback extra)
    PREFIX:NAME          any other registered preference family (`register_preference_family`)
    REWARD               any other reward spec (rm:DIR, lab:sentiment, python:mod:fn, ...) as a
                         soft judgement through Bradley-Terry at `temperature`
"""

from __future__ import annotations

from collections.abc import Callable

from alignlab.preferences.base import (
    AnnotatorPreference,
    PreferenceSource,
    RewardPreference,
)
from alignlab.rewards.spec import build_reward_source

# (NAME after "PREFIX:", options) -> the preference source
PreferenceFamily = Callable[[str, dict], PreferenceSource]
PREFERENCE_FAMILIES: dict[str, PreferenceFamily] = {}


def register_preference_family(prefix: str, factory: PreferenceFamily) -> None:
    """Resolve `PREFIX:NAME` preference specs to `factory(NAME, options)`. Registering a prefix
    twice with different factories, or the built-in `annotator`, is an error."""
    if prefix == "annotator":
        raise ValueError("preference prefix 'annotator' is built in; choose another")
    if PREFERENCE_FAMILIES.get(prefix, factory) is not factory:
        raise ValueError(f"preference prefix {prefix!r} is already registered to {PREFERENCE_FAMILIES[prefix]!r}")
    PREFERENCE_FAMILIES[prefix] = factory


def build_preference_source(spec: str, *, temperature: float = 1.0, flip_prob: float = 0.0, seed: int = 0,
                            answers: dict | None = None, **options) -> PreferenceSource:
    """One preference source from its spec string. `temperature` is the Bradley-Terry temperature
    of reward-based sources; `flip_prob` and `seed` apply to simulated annotators; `options` are
    passed to registered families."""
    kind, _, rest = spec.partition(":")
    if kind in PREFERENCE_FAMILIES:
        return PREFERENCE_FAMILIES[kind](rest, dict(options, temperature=temperature, seed=seed))
    if kind == "annotator":
        if not rest:
            raise ValueError("preference source 'annotator:REWARD' needs a reward spec after 'annotator:', "
                             "e.g. annotator:lab:sentiment")
        gold = build_reward_source(rest, answers=answers)
        return AnnotatorPreference(gold, temperature, flip_prob, seed, name=spec)
    if flip_prob:
        raise ValueError(f"flip_prob applies to simulated annotators (annotator:REWARD), not to {spec!r}")
    try:
        reward = build_reward_source(spec, answers=answers)
    except ValueError as exc:
        families = "".join(f"{p}:NAME, " for p in PREFERENCE_FAMILIES)
        raise ValueError(f"{exc}; preference sources are {families}annotator:REWARD or a reward spec") from None
    return RewardPreference(reward, temperature, name=spec)


# The model-backed families are registered here but imported on first use, so that importing
# alignlab.preferences stays light (no model code until a judge or a preference model is built).
def _judge_family(name: str, options: dict) -> PreferenceSource:
    from alignlab.preferences.judge import load_judge

    return load_judge(name, options)


register_preference_family("judge", _judge_family)


def _pm_family(name: str, options: dict) -> PreferenceSource:
    from alignlab.preferences.pairwise import load_pairwise_preference

    return load_pairwise_preference(name, options)


register_preference_family("pm", _pm_family)


def _app_family(name: str, options: dict) -> PreferenceSource:
    project, at, url = name.partition("@")
    if not (project and at and url):
        raise ValueError(f"preference source 'app:{name}': write app:PROJECT@DATABASE_URL, "
                         "e.g. app:online@sqlite:///feedback.db")
    try:
        from alignlab.feedback.preferences import AppPreferenceSource
    except ImportError as exc:
        raise ValueError(f"preference source 'app:' needs the feedback app's packages ({exc.name} is missing): "
                         "pip install 'alignlab[feedback]'") from None
    return AppPreferenceSource(url, project, poll_seconds=float(options.get("poll_seconds", 5.0)),
                               timeout=options.get("timeout"))


register_preference_family("app", _app_family)


def _cycle_family(name: str, options: dict) -> PreferenceSource:
    from alignlab.preferences.cycle import parse_cycle_spec

    return parse_cycle_spec(name)


register_preference_family("cycle", _cycle_family)

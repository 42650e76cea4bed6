"""Every trigger survives the triggerer: ``serialize()`` names each constructor argument, the
classpath imports, the kwargs rebuild the same trigger, also after the serde/JSON round trip the
triggerer stores them through (a trigger resumed after a triggerer restart comes from those kwargs).
"""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
from airflow.sdk.serde import deserialize, serialize
from airflow.serialization.enums import stringify_encoding_keys
from airflow.triggers.base import BaseTrigger

from image_rollout import triggers

BUILD_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}
PROMOTED = "2026-11-25T14:03:12.417000Z"
UNREADABLE = "2026-11-25T15:40:00Z"
DEADLINE = "2026-11-26T14:03:12.417000Z"

#: Realistic arguments, as the operators pass them, with every optional argument set off its default
#: (a key that serialize() dropped would come back as its default and differ).
REALISTIC = {
    "ChangeRequestTrigger": dict(
        poll=60.0, deadline=DEADLINE, request_id="6543f0c2a1b2c3d4e5f60718",
        inconclusive_timeout=1800.0, unreadable_since=UNREADABLE, escalated=True,
    ),
    "ReloadsTrigger": dict(
        poll=300.0, deadline=DEADLINE, carrier="dev-sjc04-carrier12", image_id=BUILD_MAP["dev"],
        since=PROMOTED, required=3, max_failed=0, inconclusive_timeout=3600.0,
        unreadable_since=UNREADABLE, escalated=True,
    ),
    "SoakTrigger": dict(
        poll=300.0, incident_poll=30.0, deadline=None, region="ap-south", image_map=BUILD_MAP,
        image_id=BUILD_MAP["prod"], floors=[PROMOTED, "2026-11-25T16:00:00Z"], min_duration=86400.0,
        min_reloads=10, timeout=172800.0, incident_title="autorecovery_failed", holding=True,
        inconclusive_timeout=3600.0, unreadable_since=UNREADABLE, escalated=True,
    ),
    "ReportBuildTrigger": dict(
        poll=900.0, deadline=DEADLINE, job="Conductors/reportCarrierWorkerIaasImageCounts", after_number=4711,
        inconclusive_timeout=None, unreadable_since=UNREADABLE, escalated=True,
    ),
}


def trigger_classes() -> list[type[BaseTrigger]]:
    """Every concrete trigger class defined in triggers.py."""
    return sorted(
        (
            cls for _, cls in inspect.getmembers(triggers, inspect.isclass)
            if issubclass(cls, BaseTrigger) and cls.__module__ == triggers.__name__
            and not inspect.isabstract(cls) and not cls.__name__.startswith("_")
        ),
        key=lambda cls: cls.__name__,
    )


def build(cls: type[BaseTrigger]) -> BaseTrigger:
    return cls(**REALISTIC[cls.__name__])


def stored(kwargs: dict) -> dict:
    """The kwargs as the triggerer stores and reads them back (``Trigger.encrypt_kwargs`` without the fernet)."""
    return deserialize(json.loads(json.dumps(serialize(stringify_encoding_keys(kwargs)))))


def test_every_trigger_has_realistic_arguments_here():
    assert {cls.__name__ for cls in trigger_classes()} == set(REALISTIC)


@pytest.mark.parametrize("cls", trigger_classes(), ids=lambda cls: cls.__name__)
def test_serialize_names_every_constructor_argument(cls):
    params = inspect.signature(cls.__init__).parameters
    arguments = {name for name, p in params.items() if name != "self" and p.kind is p.KEYWORD_ONLY}
    assert arguments == {name for name in params if name != "self"}, "arguments are keyword-only"
    assert set(REALISTIC[cls.__name__]) == arguments, "the realistic arguments set every argument"
    _, kwargs = build(cls).serialize()
    assert set(kwargs) == arguments
    assert kwargs == REALISTIC[cls.__name__]


@pytest.mark.parametrize("cls", trigger_classes(), ids=lambda cls: cls.__name__)
def test_the_classpath_rebuilds_the_same_trigger(cls):
    trigger = build(cls)
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert type(rebuilt) is cls
    assert rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.parametrize("cls", trigger_classes(), ids=lambda cls: cls.__name__)
def test_kwargs_survive_the_triggerer_s_serde(cls):
    classpath, kwargs = build(cls).serialize()
    back = stored(kwargs)
    assert back == kwargs
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**back).serialize() == (classpath, kwargs)


def test_a_soak_serialized_before_the_optional_arguments_still_resumes():
    """Kwargs stored by a deployment whose operator left the optional soak arguments out."""
    kwargs = {k: v for k, v in REALISTIC["SoakTrigger"].items() if k not in ("floors", "holding", "incident_poll")}
    rebuilt = triggers.SoakTrigger(**stored(kwargs))
    assert rebuilt.serialize()[1] == {**kwargs, "floors": None, "holding": False, "incident_poll": None}

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowFailException

from image_rollout.contracts import BUILD_NAME_SCHEMA_PATTERN, IMAGE_ID_SCHEMA_PATTERN
from image_rollout.inputs import is_build_name, is_image_id, parse_image_ids
from image_rollout.operators.build import VerifyBuildOperator, validate_request

GOOD = {"build_name": "532-1250-879-20210818", "build_number": None, "image_ids": {}, "dry_run": False}
GOOD_MAP = {"dev": "8495980", "prod": "8496814", "prodfr2": "8496815", "stage": "8495981"}


def test_a_good_request():
    assert validate_request(GOOD, {"build_name": "532-1250-879-20210818"})["build_name"] == "532-1250-879-20210818"
    assert validate_request({**GOOD, "build_number": "434"}, {})["build_number"] == 434
    assert validate_request({**GOOD, "build_number": 434}, {})["build_number"] == 434
    ids = validate_request({**GOOD, "image_ids": {"prod": "8496814", "dev": 8495980}}, {})["image_ids"]
    assert ids == {"prod": "8496814", "dev": "8495980"}


@pytest.mark.parametrize(
    "params,conf,message",
    [
        (GOOD, {"build_name": "532-1250-879-20210818", "dryrun": True}, "unknown key(s) ['dryrun']"),
        ({**GOOD, "build_name": "532-1250-879-2021081"}, {}, "build_name"),
        ({**GOOD, "build_name": "1-2-3-20210818\n; rm -rf /"}, {}, "build_name"),
        ({**GOOD, "build_name": "532-1250-879-20210818\n"}, {}, "build_name"),
        ({**GOOD, "build_name": "532-1250-879-２０２１０８１８"}, {}, "build_name"),  # full-width digits
        ({**GOOD, "build_name": "٥٣٢-1250-879-20210818"}, {}, "build_name"),  # Arabic-Indic digits
        ({**GOOD, "build_name": 5321250879}, {}, "build_name"),
        ({**GOOD, "build_number": "43a"}, {}, "build_number"),
        ({**GOOD, "build_number": "٤٣٤"}, {}, "build_number"),
        ({**GOOD, "build_number": "434\n"}, {}, "build_number"),
        ({**GOOD, "build_number": True}, {}, "build_number"),
        ({**GOOD, "image_ids": {"prod": "84968 14"}}, {}, "image_ids.prod"),
        ({**GOOD, "image_ids": {"prod": "8496814\n"}}, {}, "image_ids.prod"),
        ({**GOOD, "image_ids": {"prod": "849٦814"}}, {}, "image_ids.prod"),
        ({**GOOD, "image_ids": {"dev": "１２３"}}, {}, "image_ids.dev"),
        ({**GOOD, "image_ids": {"stage": ""}}, {}, "image_ids.stage"),
        ({**GOOD, "image_ids": {"stage": "1234567890123"}}, {}, "image_ids.stage"),
        ({**GOOD, "image_ids": {"stage": "-1"}}, {}, "image_ids.stage"),
        ({**GOOD, "image_ids": {"stage": True}}, {}, "image_ids.stage"),
        ({**GOOD, "image_ids": {"stage": 1.5}}, {}, "image_ids.stage"),
        ({**GOOD, "image_ids": {"qa": "8496814"}}, {}, "unknown environment 'qa'"),
        ({**GOOD, "image_ids": ["8496814"]}, {}, "image_ids must be an object"),
        ({**GOOD, "dry_run": "false"}, {}, "dry_run"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(params, conf, message):
    with pytest.raises(AirflowFailException) as err:
        validate_request(params, conf)
    assert message in str(err.value)


@pytest.mark.parametrize("value", ["0", "8496814", "123456789012", 8496814])
def test_image_ids_are_one_to_twelve_ascii_digits(value):
    assert is_image_id(value)


@pytest.mark.parametrize(
    "value", ["", "8496814\n", "\n8496814", " 8496814", "8496814 ", "849٦814", "１２３", "1234567890123",
              "+1", "-1", "1e3", "0x1f", "1_000", True, None, 1.0, [], -1]
)
def test_anything_else_is_not_an_image_id(value):
    assert not is_image_id(value)


def test_build_names_are_ascii():
    assert is_build_name("532-1250-879-20210818")
    for bad in ("532-1250-879-20210818\n", "532-1250-879-2021081８", "a532-1250-879-20210818", "532-1250-879"):
        assert not is_build_name(bad)


def _artifact(**overrides) -> str:
    return json.dumps({**GOOD_MAP, **overrides})


def test_the_image_ids_artifact_is_parsed_strictly():
    assert parse_image_ids(_artifact()) == GOOD_MAP
    assert parse_image_ids(_artifact(dev=8495980)) == GOOD_MAP  # a JSON number is its digits


@pytest.mark.parametrize(
    "text,message",
    [
        (_artifact(prod="8496814\n"), "prod"),
        (_artifact(prod="849٦814"), "prod"),
        (_artifact(stage=" 8495981"), "stage"),
        (_artifact(dev=True), "dev"),
        (_artifact(dev=None), "dev"),
        (_artifact(prodfr2=12.0), "prodfr2"),
        (_artifact(qa="1"), "exactly the keys"),
        (json.dumps({"dev": "1"}), "exactly the keys"),
        (json.dumps(["8495980"]), "exactly the keys"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"dev": "1", "dev": "2", "prod": "3", "prodfr2": "4", "stage": "5"}', "duplicate"),
    ],
)
def test_a_malformed_artifact_fails_at_once_naming_the_field(text, message):
    # AirflowFailException: the task fails without retrying, as the artifact will not change.
    with pytest.raises(AirflowFailException) as err:
        parse_image_ids(text)
    assert message in str(err.value)


def test_check_images_refuses_loose_values_and_mismatches():
    with pytest.raises(AirflowFailException, match="prod"):
        VerifyBuildOperator._check_images({**GOOD_MAP, "prod": "8496814\n"}, {})
    with pytest.raises(AirflowFailException, match="does not match"):
        VerifyBuildOperator._check_images(GOOD_MAP, {"prod": "1"})
    assert VerifyBuildOperator._check_images(GOOD_MAP, {"prod": "8496814"}) == GOOD_MAP


@pytest.mark.parametrize("pattern,good,bad", [
    (IMAGE_ID_SCHEMA_PATTERN, ["8496814", "0"], ["8496814\n", "849٦814", "", "1234567890123", "12 3"]),
    (BUILD_NAME_SCHEMA_PATTERN, ["532-1250-879-20210818"], ["532-1250-879-20210818\n", "532-1250-879-2021081٨"]),
])
def test_schema_patterns_refuse_what_the_check_refuses(pattern, good, bad):
    """The Params form patterns, as jsonschema applies them (``re.search``)."""
    import jsonschema

    schema = {"type": "string", "pattern": pattern}
    for value in good:
        jsonschema.validate(value, schema)
    for value in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from image_rollout.operators.build import validate_request

GOOD = {"build_name": "532-1250-879-20210818", "build_number": None, "image_ids": {}, "dry_run": False}


def test_a_good_request():
    assert validate_request(GOOD, {"build_name": "532-1250-879-20210818"})["build_name"] == "532-1250-879-20210818"
    assert validate_request({**GOOD, "build_number": "434"}, {})["build_number"] == 434


@pytest.mark.parametrize(
    "params,conf,message",
    [
        (GOOD, {"build_name": "532-1250-879-20210818", "dryrun": True}, "unknown key(s) ['dryrun']"),
        ({**GOOD, "build_name": "532-1250-879-2021081"}, {}, "build_name"),
        ({**GOOD, "build_name": "1-2-3-20210818\n; rm -rf /"}, {}, "build_name"),
        ({**GOOD, "build_number": "43a"}, {}, "build_number"),
        ({**GOOD, "image_ids": {"prod": "84968 14"}}, {}, "image_ids.prod"),
        ({**GOOD, "image_ids": {"qa": "8496814"}}, {}, "unknown environment 'qa'"),
        ({**GOOD, "image_ids": ["8496814"]}, {}, "image_ids must be an object"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(params, conf, message):
    with pytest.raises(AirflowFailException) as err:
        validate_request(params, conf)
    assert message in str(err.value)

from __future__ import annotations

import json

import pytest

from image_rollout.plan import PLANS_DIR, PlanError, load_plan, parse_duration

RUNBOOK_ORDER = [
    "dev-sjc04-carrier12", "dev-south", "prestage-mon01-carrier1", "prestage-south", "stage-dal10-carrier0",
    "stage-south", "ap-south", "ap-north", "eu-central", "uk-south", "us-east", "us-south", "br-sao", "ca-tor",
    "jp-osa", "eu-fr2",
]


@pytest.mark.parametrize("name", ["default", "sandbox"])
def test_plans_follow_the_runbook_order(name):
    plan = load_plan(name)
    assert [t.target for t in plan.targets] == RUNBOOK_ORDER
    assert plan.image_key("eu-fr2") == "prodfr2"
    assert plan.image_key("stage-south") == "stage"
    assert [s.carrier for s in plan.stages if s.carrier] == [
        "dev-sjc04-carrier12", "prestage-mon01-carrier1", "stgiks-dal10-carrier0"]
    assert plan.reloads.required == 3
    assert plan.soak.min_autorecovery_reloads == 10


def test_production_plan_has_the_runbook_durations():
    plan = load_plan("default")
    assert plan.stage("bake").wait == 24 * 3600
    assert plan.soak.min_duration == 24 * 3600
    assert plan.evidence_path("532-1250-879-20210818") == (
        "train_evidence/smith-immutable-image/immutableimage_532-1250-879-20210818_evidence.md")


def test_production_soak_reads_pagerduty_twice_a_minute_and_the_rest_every_5_minutes():
    soak = load_plan("default").soak
    assert (soak.poll, soak.incident_poll) == (300, 30)
    assert soak.calls_per_day() == {"pagerduty": 2880, "chlorine": 288, "launchdarkly": 576}
    sandbox = load_plan("sandbox").soak  # no incident_poll: PagerDuty is read with the rest, every poll
    assert sandbox.incident_poll is None
    assert sandbox.calls_per_day()["pagerduty"] == sandbox.calls_per_day()["chlorine"]


def test_sandbox_plan_differs_only_in_durations():
    default = json.loads((PLANS_DIR / "default.json").read_text())
    sandbox = json.loads((PLANS_DIR / "sandbox.json").read_text())

    def shape(plan):
        stages = [{k: v for k, v in s.items() if k != "wait"} for s in plan["stages"]]
        return stages, plan["flag"], plan["slack"], plan["evidence"], plan["soak"]["region"]

    assert shape(default) == shape(sandbox)


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("5s", 5), ("250ms", 0.25), (7, 7.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["24", "1 week", "-5s", -1, True])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def _write(tmp_path, mutate):
    data = json.loads((PLANS_DIR / "default.json").read_text())
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda d: d["reloads"].update(required=0), "reloads.required"),
        (lambda d: d["soak"].update(region="mars"), "soak.region 'mars' is not a target"),
        (lambda d: d["stages"].insert(0, d["stages"].pop(5)), "needs the evidence commit before it"),
        (lambda d: d["stages"][1]["targets"].append({"target": "dev-sjc04-carrier12", "image_key": "dev"}),
         "more than one stage"),
        (lambda d: d["stages"][1]["targets"][0].update(image_key="qa"), "image_key"),
        (lambda d: d["stages"][8].update(wait="forever"), "not a duration"),
        (lambda d: d.update(unexpected=1), "unexpected"),
        (lambda d: d.update(source="sandbox"), "source: set by load_plan"),
        (lambda d: d["evidence"].update(directory="../../etc"), "relative path"),
        (lambda d: d["soak"].update(incident_poll="10m"), "incident_poll must not be longer than soak.poll"),
        (lambda d: d["soak"].update(incident_poll="0s"), "soak.incident_poll"),
    ],
)
def test_bad_plans_are_refused_with_the_field_named(tmp_path, mutate, message):
    with pytest.raises(PlanError) as err:
        load_plan(_write(tmp_path, mutate))
    assert message in str(err.value)
    assert "plan.json is invalid" in str(err.value)


def test_missing_and_malformed_plan_files(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        load_plan(bad)


# -- loading --------------------------------------------------------------------------------------------
def test_a_changed_plan_is_read_again_and_a_bad_one_refused(tmp_path):
    path = _write(tmp_path, lambda d: None)
    assert load_plan(path).reloads.required == 3
    path.write_text(path.read_text().replace('"required": 3', '"required": 0'))
    with pytest.raises(PlanError, match="reloads.required"):
        load_plan(path)


@pytest.mark.parametrize("bad", ["[]", '{"name": "x"}', "null"])
def test_a_plan_that_is_not_a_whole_plan_is_refused(tmp_path, bad):
    path = tmp_path / "plan.json"
    path.write_text(bad)
    with pytest.raises(PlanError, match="plan.json is invalid"):
        load_plan(path)


def test_durations_are_seconds_and_every_plan_part_is_read_only():
    plan = load_plan("default")
    assert plan.retry_delay == 120 and plan.reloads.grace == 3600 and plan.stage("bake").wait == 86400
    # plain floats: the dag-processor's msgpack encoder refuses a float subclass in the parsed DAG
    durations = [plan.retry_delay, plan.soak.poll, plan.soak.incident_poll, plan.freeze.poll, plan.stage("bake").wait]
    assert all(type(v) is float for v in durations)
    with pytest.raises(AttributeError):
        plan.soak.poll = 1  # type: ignore[misc]
    assert isinstance(plan.stages, tuple) and isinstance(plan.approvers.users, tuple)


@pytest.mark.parametrize("name", ["default", "sandbox", "stack", "bench"])
def test_a_plan_loads_again_from_its_source(name, monkeypatch):
    """The operators load the plan again at run time from ``source``; the production plan's name
    ("production") is not its file's, so the name cannot be what they load from."""
    monkeypatch.delenv("ROLLOUT_PLAN", raising=False)
    plan = load_plan(name)
    assert plan.source == name
    assert load_plan(plan.source) == plan


def test_a_plan_given_by_path_is_loaded_again_from_that_path(tmp_path, monkeypatch):
    path = _write(tmp_path, lambda d: d.update(name="elsewhere"))
    monkeypatch.chdir(tmp_path)
    plan = load_plan("plan.json")
    assert plan.source == str(path.resolve())
    monkeypatch.chdir("/")
    assert load_plan(plan.source).name == "elsewhere"


def test_without_a_name_the_environment_s_plan_is_loaded(monkeypatch):
    monkeypatch.setenv("ROLLOUT_PLAN", "stack")
    assert load_plan().source == "stack" and load_plan().name == "stack"
    monkeypatch.delenv("ROLLOUT_PLAN")
    assert load_plan().source == "default" and load_plan().name == "production"


def test_plans_are_validated_from_the_command_line(capsys):
    from image_rollout.plan import main

    assert main(["default", "sandbox"]) == 0
    assert "production: valid" in capsys.readouterr().out
    assert main(["no-such-plan"]) == 1 and "does not exist" in capsys.readouterr().err


# -- the name and duration checks are written without regular expressions (none is compiled in a parse);
# -- these are the patterns they stand for, compared on every string of a generated set ----------------
_SAMPLES = sorted({
    *("", " ", "5", "5s", " 5s ", "5 s", "5ms", "5m", "5h", "5d", "1.5h", "1.h", ".5h", "1..5h", "٣s", "5S", "5sec",
      "-5s", "+5s", "5e3s", "0s", "0.0s", "1_000s", "5\n", "5s\n", "10mss", "m", "ms"),
    *("a", "a-b", "-a", "a_b", "_a", "ab1", "1ab", "A", "aB", "a b", "é", "a.b", "a@b", "a" * 100, "a" * 101,
      "U1", "U12", "U12AB", "W0X", "u12", "UAB" + "C" * 18, "UAB" + "C" * 19, "U1-2", "Ü12", "ab_c9", "x-", "٣"),
})


@pytest.mark.parametrize("text", _SAMPLES)
def test_the_duration_parser_reads_what_its_pattern_says(text):
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    if match and match.group(1).isascii():
        assert parse_duration(text) == float(match.group(1)) * units[match.group(2)]
    else:
        with pytest.raises(ValueError):
            parse_duration(text)


@pytest.mark.parametrize("text", _SAMPLES)
def test_names_are_checked_as_their_patterns_say(text):
    import re

    from image_rollout import plan

    for check in (plan.is_target_name, plan.is_stage_id, plan.is_airflow_user, plan.is_slack_user):
        pattern = check.__doc__.strip("`")  # each check's docstring is the pattern it stands for
        assert check(text) == (re.fullmatch(pattern, text, re.ASCII) is not None), (check.__name__, text)

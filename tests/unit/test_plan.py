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


# -- the validated-plan cache (what a dag-processor parse pays) -------------------------------------------
@pytest.fixture
def plan_cache(tmp_path, monkeypatch):
    from image_rollout import plan as plan_module

    monkeypatch.setattr(plan_module, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr("sys.dont_write_bytecode", False)
    plan_module._load.cache_clear()
    yield plan_module
    plan_module._load.cache_clear()


@pytest.mark.parametrize("name", ["default", "sandbox", "stack", "bench"])
def test_a_cached_plan_equals_the_validated_one_and_skips_validation(plan_cache, name, monkeypatch):
    validated = load_plan(name)
    assert len(list(plan_cache.CACHE_DIR.glob(f"plan-{name}-*.json"))) == 1
    plan_cache._load.cache_clear()

    def refuse(*_a, **_k):
        raise AssertionError("validated again although the cache holds this plan")

    monkeypatch.setattr(plan_cache.RolloutPlan, "model_validate", refuse)
    cached = load_plan(name)
    assert cached == validated and cached.stages == validated.stages
    assert isinstance(cached.stages, tuple) and isinstance(cached.approvers.users, tuple)
    assert cached.stage("bake").wait == validated.stage("bake").wait


def test_a_changed_plan_is_validated_again_and_a_bad_one_refused(plan_cache, tmp_path):
    path = _write(tmp_path, lambda d: None)
    load_plan(path)
    path.write_text(path.read_text().replace('"required": 3', '"required": 0'))
    plan_cache._load.cache_clear()
    with pytest.raises(PlanError, match="reloads.required"):
        load_plan(path)


@pytest.mark.parametrize("corrupt", [
    lambda d: d.update(unexpected=1),
    lambda d: d.pop("soak"),
    lambda d: d["stages"][0].pop("kind"),
    lambda d: d.clear(),
])
def test_a_corrupt_cache_falls_back_to_validation(plan_cache, corrupt, monkeypatch):
    validated = load_plan("default")
    validations = []
    real = plan_cache.RolloutPlan.model_validate
    monkeypatch.setattr(plan_cache.RolloutPlan, "model_validate",
                        lambda data: validations.append(1) or real(data))
    for cached in plan_cache.CACHE_DIR.glob("plan-default-*.json"):
        data = json.loads(cached.read_text())
        corrupt(data)
        cached.write_text(json.dumps(data))
    plan_cache._load.cache_clear()
    assert load_plan("default") == validated and validations == [1]


def test_no_cache_is_written_where_bytecode_is_not(plan_cache, monkeypatch):
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    load_plan("default")
    assert not plan_cache.CACHE_DIR.exists()


def test_the_cache_can_be_written_ahead_like_bytecode(plan_cache, monkeypatch, capsys):
    monkeypatch.setattr("sys.dont_write_bytecode", True)  # main() writes it whatever the environment says
    assert plan_cache.main(["default", "sandbox"]) == 0
    assert sorted(p.name.split("-")[1] for p in plan_cache.CACHE_DIR.glob("plan-*.json")) == ["default", "sandbox"]
    assert plan_cache.main(["no-such-plan"]) == 1 and "does not exist" in capsys.readouterr().err


def test_without_this_module_s_source_nothing_is_cached(plan_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(plan_cache, "__file__", str(tmp_path / "gone.py"))  # a bytecode-only deployment
    assert load_plan("default").name == "production"
    assert not plan_cache.CACHE_DIR.exists()

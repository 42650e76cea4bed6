"""What a task did is in its log at INFO: the demo's and the stacks' Airflow log at INFO, and every message a
task posts to Slack (promotions, gate results, evidence commits) is also a line of its task log."""

from __future__ import annotations

from pathlib import Path

from tests.harness.env import airflow_env


def test_the_demo_and_stack_environment_logs_at_info(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("AIRFLOW__LOGGING__LOGGING_LEVEL", raising=False)
    assert airflow_env(tmp_path, "http://127.0.0.1:1")["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "INFO"
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # a caller may still quiet it
    assert airflow_env(tmp_path, "http://127.0.0.1:1")["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "WARNING"


def test_what_a_task_posts_to_slack_is_in_its_log_at_info(monkeypatch, capsys):
    from image_rollout.operators import base
    from image_rollout.plan import load_plan
    from image_rollout.rollout_dag import build_dag

    posted = []
    monkeypatch.setattr(base, "notify", lambda text, channel: posted.append((channel, text)))
    plan = load_plan("sandbox")
    task = build_dag(plan).get_task("dev_south.promote_dev_south")
    capsys.readouterr()
    task.say("Promoted immutable image build 1-2-3-20240101 to dev-south")
    task.say("Gate failed at dev-south: 2 reloads failed", escalate=True)
    # Airflow's task logger (structlog) writes "<time> [<level>] <message> [<logger>]" lines.
    lines = [line for line in capsys.readouterr().out.splitlines() if "(to Slack" in line]
    assert len(lines) == 2, lines
    assert "[info" in lines[0] and (f"Promoted immutable image build 1-2-3-20240101 to dev-south (to Slack "
                                     f"{plan.slack.progress_channel})") in lines[0]
    assert "[info" in lines[1] and f"2 reloads failed (to Slack {plan.slack.patching_channel})" in lines[1]
    assert [c for c, _ in posted] == [plan.slack.progress_channel, plan.slack.patching_channel]

"""The calendar overhead: a rollout's wall time minus the waits the runbook and the outside systems impose.

Mandated windows, taken from what the systems recorded in the real-scheduler run:

* reload gate (per test carrier): from the target's promotion until the plan's required number
  of reloads with the new image finished on the carrier (the sandbox's reload time);
* bake: from the promotion of the stage it follows until ``wait`` later;
* prod approval: the Human-in-the-loop request, from created to answered (a person);
* prod change requests: from filed until the change board's review (``approval_delay``);
* canary soak: from the canary's promotion until both ``min_duration`` passed and the
  required autorecovery reloads with the new image finished in the region;
* adoption: from the last promotion until the image-count report that showed the threshold
  was published.

Overhead = wall time (REST trigger to the run's end) minus the union of these windows: the
scheduler, executor, triggerer and the product's own work, plus every poll's latency.

Production: the same fixed overhead (it does not grow with the waits), plus each polled
wait's detection latency at the production plan's poll intervals (on average half the
interval, at worst all of it), over the production waits. The production total counted is
the smallest the runbook allows: the 24 h bake, the 24 h soak and one 6 h image-count report
period (the report job "runs every 6 hours"); reload gates and approvals count as zero,
which makes the percentage larger, not smaller.
"""

from __future__ import annotations

from datetime import datetime

REPORT_PERIOD_SECONDS = 6 * 3600  # RUNBOOK.md, "Monitoring rollout": the report job runs every 6 hours


def epoch(value) -> float | None:
    """Epoch seconds from an ISO string, epoch milliseconds or a datetime."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return value / 1000.0
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _nth(times: list[float], n: int) -> float | None:
    times = sorted(times)
    return times[n - 1] if len(times) >= n else None


def mandated_windows(*, plan, state: dict, hitl: list[dict], adoption_report_time) -> list[tuple[str, float, float]]:
    """``(name, start, end)`` in epoch seconds for every mandated wait of the run."""
    new_build = state["builds"]["new"]
    promoted = _first_promotions(state, new_build)
    reloads = [r for r in state["reloads"] if r.get("status") == "succeeded" and r.get("finished_at")]
    windows: list[tuple[str, float, float]] = []
    for stage in plan.stages:
        windows += _stage_windows(plan, stage, promoted, state["images"]["new"], reloads)
    windows += _change_board_windows(state, new_build)
    windows += [(f"approval {h['task_id']}", epoch(h["created_at"]), epoch(h["responded_at"]))
                for h in hitl if h.get("created_at") and h.get("responded_at")]
    if adoption_report_time is not None and promoted:
        windows.append(("adoption report", max(promoted.values()), epoch(adoption_report_time)))
    return windows


def _first_promotions(state: dict, new_build: str) -> dict[str, float]:
    """Target -> when the new build was first promoted to it: the start of the waits that follow."""
    promoted: dict[str, float] = {}
    for p in state["promotions"]:
        if p.get("build") == new_build and p["target"] not in promoted:
            promoted[p["target"]] = epoch(p["time"])
    return promoted


def _stage_windows(plan, stage, promoted: dict[str, float], new_images: dict,
                   reloads: list[dict]) -> list[tuple[str, float, float]]:
    """The wait one stage mandates: a test carrier's reload gate, the bake, the canary soak (none for the
    other stages, or before the wait started)."""
    if stage.kind == "promote" and stage.carrier:
        return _reload_window(plan, stage, promoted, new_images, reloads)
    if stage.kind == "bake":
        return _bake_window(plan, stage, promoted)
    if stage.kind == "soak_gate":
        return _soak_window(plan, promoted, new_images, reloads)
    return []


def _bake_window(plan, stage, promoted: dict[str, float]) -> list[tuple[str, float, float]]:
    """From the last promotion of the stage the bake follows until ``wait`` later."""
    after = [promoted.get(t.target) for t in plan.stage(stage.after).targets]
    if after and all(a is not None for a in after):
        start = max(after)
        return [("bake", start, start + stage.wait)]
    return []


def _reload_window(plan, stage, promoted: dict[str, float], new_images: dict,
                   reloads: list[dict]) -> list[tuple[str, float, float]]:
    """From the carrier's promotion until the plan's required reloads with the new image finished on it."""
    target = stage.targets[0]
    start = promoted.get(target.target)
    image = new_images[target.image_key]
    done = [epoch(r["finished_at"]) for r in reloads if r["carrier"] == stage.carrier
            and r.get("image_id") == image and start is not None and epoch(r["finished_at"]) >= start]
    end = _nth(done, plan.reloads.required)
    if start is not None and end is not None:
        return [(f"reloads {stage.carrier}", start, end)]
    return []


def _soak_window(plan, promoted: dict[str, float], new_images: dict,
                 reloads: list[dict]) -> list[tuple[str, float, float]]:
    """From the canary region's promotion until both ``min_duration`` passed and its required
    autorecovery reloads with the new image finished."""
    region = plan.soak.region
    start = promoted.get(region)
    image = new_images[plan.image_key(region)]
    if start is None:
        return []
    done = [epoch(r["finished_at"]) for r in reloads if r.get("region") == region
            and r.get("kind") == "autorecovery" and r.get("image_id") == image
            and epoch(r["finished_at"]) >= start]
    nth = _nth(done, plan.soak.min_autorecovery_reloads)
    end = max(start + plan.soak.min_duration, nth if nth is not None else start)
    return [(f"soak {region}", start, end)]


def _change_board_windows(state: dict, new_build: str) -> list[tuple[str, float, float]]:
    """Each prod change request of the new build, from filed until the change board's first review."""
    windows = []
    for request in state.get("approval_requests", []):
        if request.get("train") != "prod" or new_build not in (request.get("description") or ""):
            continue
        reviews = [epoch(r["creationDate"]) for r in request.get("allReviews", []) if r.get("creationDate")]
        if reviews:
            windows.append((f"change board {','.join(request.get('targets', []))}",
                            epoch(request["creationDate"]), min(reviews)))
    return windows


def union_seconds(windows: list[tuple[str, float, float]], lo: float, hi: float) -> float:
    spans = sorted((max(s, lo), min(e, hi)) for _, s, e in windows if min(e, hi) > max(s, lo))
    total, cur_s, cur_e = 0.0, None, None
    for s, e in spans:
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def compressed_overhead(queued_at, ended_at, windows) -> dict:
    start, end = epoch(queued_at), epoch(ended_at)
    wall = end - start
    mandated = union_seconds(windows, start, end)
    overhead = wall - mandated
    return {"wall_seconds": round(wall, 2), "mandated_seconds": round(mandated, 2),
            "overhead_seconds": round(overhead, 2), "percent": round(100.0 * overhead / wall, 2)}


def polled_waits(plan) -> list[tuple[str, float]]:
    """The waits on the critical path whose end is noticed by polling, with the plan's poll interval.

    The bake needs none (its trigger fires at the time), nor the Human-in-the-loop answer (the
    API resumes the task), nor stage change requests (auto-approved when filed).
    """
    polls = [(f"reload gate {s.carrier}", plan.reloads.poll) for s in plan.stages if s.kind == "promote" and s.carrier]
    polls += [(f"change request {s.id}", plan.change_request.poll) for s in plan.stages
              if s.change_request and any(t.image_key in ("prod", "prodfr2") for t in s.targets)]
    polls += [("canary soak", plan.soak.poll)]
    if any(s.kind == "adoption" for s in plan.stages):
        polls += [("adoption (new report build)", plan.adoption.poll)]
    return polls


def production_estimate(fixed_overhead_seconds: float, plan) -> dict:
    """Overhead percent at the production plan's durations and polls (see the module docstring)."""
    mandated = sum(s.wait or 0 for s in plan.stages if s.kind == "bake") + plan.soak.min_duration
    mandated += REPORT_PERIOD_SECONDS if any(s.kind == "adoption" for s in plan.stages) else 0
    polls = polled_waits(plan)
    expected = fixed_overhead_seconds + sum(p for _, p in polls) / 2
    worst = fixed_overhead_seconds + sum(p for _, p in polls)
    return {
        "mandated_hours": round(mandated / 3600, 2),
        "fixed_overhead_seconds": round(fixed_overhead_seconds, 1),
        "polls": {name: seconds for name, seconds in polls},
        "overhead_expected_minutes": round(expected / 60, 1),
        "overhead_worst_minutes": round(worst / 60, 1),
        "percent_expected": round(100.0 * expected / (mandated + expected), 3),
        "percent_worst": round(100.0 * worst / (mandated + worst), 3),
    }

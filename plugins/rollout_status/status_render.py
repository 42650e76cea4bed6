"""Server-side HTML for the status page: Jinja2 templates with autoescaping, and the SVG chart geometry."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlsplit

from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATE_COLORS = {
    "success": "#1a7f37",
    "failed": "#cf222e",
    "upstream_failed": "#bc4c00",
    "running": "#0969da",
    "deferred": "#8250df",
    "awaiting_input": "#8250df",
    "queued": "#6e7781",
    "scheduled": "#6e7781",
    "up_for_retry": "#bf8700",
    "up_for_reschedule": "#8250df",
    "skipped": "#d63384",
    "removed": "#6e7781",
    "none": "#8c959f",
}


def safe_url(value: object) -> str | None:
    """Only http(s) URLs become links: a ``javascript:`` value from XCom stays text."""
    if not isinstance(value, str):
        return None
    try:
        scheme = urlsplit(value.strip()).scheme.lower()
    except ValueError:
        return None
    return value.strip() if scheme in ("http", "https") else None


def fmt_time(value: object) -> str:
    if not value:
        return "–"
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: object) -> str:
    if seconds is None or seconds == "":
        return "–"
    try:
        total = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if total < 60:
        return f"{total:.0f}s" if total >= 10 or total == int(total) else f"{total:.1f}s"
    minutes, secs = divmod(int(round(total)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def between(start: object, end: object) -> str:
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return "–"
    return fmt_duration((b - a).total_seconds())


def state_badge(state: object) -> Markup:
    word = str(state or "none")
    color = STATE_COLORS.get(word, "#6e7781")
    return Markup('<span class="badge" style="background:{}">{}</span>').format(color, word.replace("_", " "))


def adoption_chart(
    adoption: dict | None, *, width: int = 900, bar_height: int = 22, gap: int = 8
) -> dict | None:
    """Geometry of the per-carrier adoption bars (percent of workers on the new image)."""
    if not adoption or not adoption.get("carriers"):
        return None
    label_width, value_width = 210, 150
    plot = width - label_width - value_width
    bars = []
    for i, carrier in enumerate(adoption["carriers"]):
        percent = float(carrier.get("percent") or 0.0)
        y = 24 + i * (bar_height + gap)
        bars.append(
            {
                "name": carrier["name"],
                "y": y,
                "text_y": y + bar_height * 0.7,
                "width": round(plot * max(0.0, min(percent, 100.0)) / 100.0, 1),
                "percent": percent,
                "new": carrier.get("new"),
                "total": carrier.get("total"),
            }
        )
    threshold = float(adoption.get("threshold_percent") or 0.0)
    height = 24 + len(bars) * (bar_height + gap) + 8
    return {
        "width": width,
        "height": height,
        "x0": label_width,
        "plot": plot,
        "bar_height": bar_height,
        "bars": bars,
        "threshold_x": round(label_width + plot * threshold / 100.0, 1),
        "threshold": threshold,
        "value_x": label_width + plot + 10,
        "ticks": [
            {"x": round(label_width + plot * t / 100.0, 1), "label": f"{t}%"} for t in (0, 25, 50, 75, 100)
        ],
    }


def run_link(base: str, run_id: str) -> str:
    return f"{base}/runs/{quote(str(run_id), safe='')}"


def airflow_run_link(airflow_root: str, dag_id: str, run_id: str, task_id: str | None = None) -> str:
    link = f"{airflow_root}/dags/{quote(str(dag_id), safe='')}/runs/{quote(str(run_id), safe='')}"
    return f"{link}/tasks/{quote(str(task_id), safe='')}" if task_id else link


@cache
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=fmt_time, duration=fmt_duration, safe_url=safe_url, badge=state_badge)
    env.globals.update(
        between=between, run_link=run_link, airflow_run_link=airflow_run_link, adoption_chart=adoption_chart
    )
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)

"""PagerDuty: incidents on the armada-infra service (``autorecovery_failed`` alerts)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from image_rollout.hooks._http import HeaderTokenAuth, RolloutHttpHook
from image_rollout.hooks._time import iso_utc

if TYPE_CHECKING:
    from airflow.sdk import Connection

PAGE_SIZE = 100
MAX_PAGES = 100


class PagerDutyHook(RolloutHttpHook):
    """
    List PagerDuty incidents, to catch ``autorecovery_failed`` alerts during the canary soak.

    A failed autorecovery reload in a region that runs the new image is the runbook's
    signal to stop and roll the region back.

    Connection: host = PagerDuty REST API base URL (``https://api.pagerduty.com``), password =
    API key (sent as ``Authorization: Token token=<t>``); extra ``service_id`` (default
    ``PM2KE3Q``, armada-infra).

    :param pagerduty_conn_id: the PagerDuty connection.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx, connection errors and timeouts; default from extra ``retries``.
    :param retry_wait: first backoff in seconds (doubles); default from extra ``retry_wait``.
    """

    conn_name_attr = "pagerduty_conn_id"
    default_conn_name = "pagerduty_default"
    conn_type = "http"
    hook_name = "PagerDuty"
    system = "pagerduty"
    hook_extras = frozenset({"service_id"})

    def __init__(
        self,
        *,
        pagerduty_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
    ) -> None:
        super().__init__(conn_id=pagerduty_conn_id, timeout=timeout, retries=retries, retry_wait=retry_wait)
        self.pagerduty_conn_id = pagerduty_conn_id

    def auth_for(self, connection: Connection) -> HeaderTokenAuth | None:
        """Send the key as ``Authorization: Token token=<key>``."""
        return HeaderTokenAuth(f"Token token={connection.password}") if connection.password else None

    @property
    def service_id(self) -> str:
        """The service whose incidents are listed by default (extra ``service_id``)."""
        return str(self.extra("service_id", "PM2KE3Q"))

    def list_incidents(
        self,
        since: datetime | str,
        until: datetime | str | None = None,
        title_contains: str | None = None,
        service_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """
        Return the service's incidents created in ``[since, until]``, following pagination.

        Pages are followed by ``more`` alone: ``total`` is null unless ``total=true`` is asked
        for (a count PagerDuty computes at extra cost), and nothing here needs it.

        :param since: start of the window.
        :param until: end of the window; PagerDuty's default (now) when None.
        :param title_contains: keep only incidents whose title contains this (case-insensitive).
        :param service_id: the service; default from the connection.
        """
        call = "GET /incidents"
        params: dict[str, Any] = {
            "service_ids[]": [service_id or self.service_id],
            "since": iso_utc(since),
            "limit": PAGE_SIZE,
        }
        if until is not None:
            params["until"] = iso_utc(until)
        incidents: list[dict[str, Any]] = []
        offset = 0
        for _ in range(MAX_PAGES):
            page = self.request_json(
                "GET",
                "/incidents",
                params={**params, "offset": offset},
                headers={"Accept": "application/vnd.pagerduty+json;version=2"},
            )
            items = self.require(page, "incidents", list, call)
            if not all(isinstance(item, dict) and "id" in item for item in items):
                raise self.malformed(call, "an incident lacks 'id'")
            incidents.extend(items)
            if not page.get("more") or not items:
                break
            offset += len(items)
        else:
            self.log.warning("PagerDuty listed more than %d pages of incidents; stopped", MAX_PAGES)
        if title_contains:
            needle = title_contains.lower()
            incidents = [item for item in incidents if needle in str(item.get("title", "")).lower()]
        return incidents

"""chlorine: worker reloads and the reload/autorecovery history per carrier."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from image_rollout.hooks._http import HeaderTokenAuth, RolloutHttpHook
from image_rollout.hooks._time import iso_utc

if TYPE_CHECKING:
    from airflow.sdk import Connection

RELOAD_KINDS = frozenset({"requested", "autorecovery"})


class ChlorineHook(RolloutHttpHook):
    """
    Ask chlorine to reload workers and read which image their reloads booted.

    The runbook's acceptance test is "three workers reloaded successfully with the new
    image", either by a requested reload or by carrier autorecovery; both show up in the
    reload history with the change id the evidence file quotes.

    Connection: host = chlorine base URL; password = API token, sent as ``Authorization:
    Bearer <t>`` when set.

    :param chlorine_conn_id: the chlorine connection.
    :param timeout: seconds per request; default from the connection extra ``timeout``, else 30.
    :param retries: retries on 5xx, connection errors and timeouts; default from extra ``retries``.
    :param retry_wait: first backoff in seconds (doubles); default from extra ``retry_wait``.
    """

    conn_name_attr = "chlorine_conn_id"
    default_conn_name = "chlorine_default"
    conn_type = "http"
    hook_name = "chlorine"
    system = "chlorine"

    def __init__(
        self,
        *,
        chlorine_conn_id: str = default_conn_name,
        timeout: float | None = None,
        retries: int | None = None,
        retry_wait: float | None = None,
    ) -> None:
        super().__init__(conn_id=chlorine_conn_id, timeout=timeout, retries=retries, retry_wait=retry_wait)
        self.chlorine_conn_id = chlorine_conn_id

    def auth_for(self, connection: Connection) -> HeaderTokenAuth | None:
        """Send the token as a bearer token."""
        return HeaderTokenAuth(f"Bearer {connection.password}") if connection.password else None

    def request_reload(self, carrier: str, worker: str | None = None, reason: str = "") -> dict[str, Any]:
        """
        Request a reload and return it (``id``, ``worker``, ``change_id``, ``status``: pending).

        Not retried after a read timeout (a second POST would reload a second worker).

        :param carrier: the carrier, e.g. ``dev-sjc04-carrier12``.
        :param worker: the worker to reload; chlorine picks a healthy one when None.
        :param reason: why, for chlorine's audit log (e.g. the build under test).
        """
        body: dict[str, Any] = {"carrier": carrier, "reason": reason}
        if worker:
            body["worker"] = worker
        reload = self.request_json("POST", "/api/v1/reloads", json=body)
        for key in ("id", "change_id"):
            self.require(reload, key, (str, int), "POST /api/v1/reloads")
        self.log.info("chlorine reload %s of %s: %s", reload["change_id"], carrier, reload.get("worker"))
        return reload

    def list_reloads(
        self,
        carrier: str | None = None,
        region: str | None = None,
        since: datetime | str | None = None,
        kind: str | None = None,
    ) -> list[dict[str, Any]]:
        """
        Return reloads, oldest first as chlorine lists them, filtered as given.

        :param carrier: only this carrier.
        :param region: only carriers of this target (e.g. ``ap-south``).
        :param since: only reloads requested at or after this time.
        :param kind: ``requested`` or ``autorecovery``.
        """
        if kind is not None and kind not in RELOAD_KINDS:
            raise ValueError(f"kind must be one of {sorted(RELOAD_KINDS)}, not {kind!r}")
        params = {
            key: value
            for key, value in {
                "carrier": carrier,
                "region": region,
                "since": iso_utc(since) if since is not None else None,
                "kind": kind,
            }.items()
            if value is not None
        }
        response = self.request_json("GET", "/api/v1/reloads", params=params)
        reloads = self.require(response, "reloads", list, "GET /api/v1/reloads")
        if not all(isinstance(reload, dict) and "status" in reload for reload in reloads):
            raise self.malformed("GET /api/v1/reloads", "a reload lacks 'status'")
        return reloads

    def list_carriers(self) -> list[dict[str, Any]]:
        """Return the carriers chlorine manages (``name``, ``region``, ``image_key``, ``workers``)."""
        response = self.request_json("GET", "/api/v1/carriers")
        carriers = self.require(response, "carriers", list, "GET /api/v1/carriers")
        if not all(isinstance(carrier, dict) and "name" in carrier for carrier in carriers):
            raise self.malformed("GET /api/v1/carriers", "a carrier lacks 'name'")
        return carriers

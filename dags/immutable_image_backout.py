"""
### Immutable worker image backout

The runbook's backout plan, *Rollback to previous version*, on demand: put targets of the
`worker-image` flag back on the build they served before a build's rollout.
Trigger it from the UI (*Trigger* with the form) or the REST API, with Params:

* **build_name** — the build to back out (it must have been verified by a rollout);
* **targets** — `"all"` or a list of target names (unknown names are refused);
* **to_build** — optional: the build to put back (default: what each target served before);
* **reason** — required, recorded in the evidence file and Slack;
* **dry_run** — show the plan in `resolve_backout` (log, Slack) and write nothing.

1. **resolve_backout** — checks the request and reads the plan from the rollout's records and
   LaunchDarkly; only a rule that serves the build is restored.
2. **file_backout_requests** — the trains (stage, prod, or every target when LaunchDarkly requires
   approvals), keyed `immutable-image/<build>/backout/<target>`, approved by the change board.
3. **approve_backout** — the prod start decision (*Required actions* in Airflow), as for the canary.
4. **restore_targets** — re-proves each target and the freeze, writes, appends a *Backout* section
   to the build's evidence file and posts to #sre-cfs-patching.
"""

from __future__ import annotations

from image_rollout.backout_dag import build_backout_dag
from image_rollout.plan import load_plan

dag = build_backout_dag(load_plan(), doc_md=__doc__)

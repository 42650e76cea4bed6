"""
### Immutable worker image rollout

One run per immutable_image build carries the new worker image from the Jenkins build to all
of prod, following the SRE runbook *Patching immutable image build procedure*:

1. **build_verification** — the oceanPI/immutable_image build succeeded (a timed-out build is
   rebuilt once); its image ids, console log and link are captured. A dry run stops here after
   showing the whole plan.
2. **dev_sjc04_carrier12** → **dev_south** → **prestage_mon01_carrier1** → **prestage_south** —
   Razee (LaunchDarkly) rule promotions; each test carrier needs 3 workers reloaded with the new
   image (autorecovery, then chlorine reloads after a grace period).
3. **evidence** — the train evidence file is committed to the team repo.
4. **stage_dal10_carrier0** (change request with the first evidence hash, reloads) →
   **evidence_update** (stage reloads) → **stage_south** (change request, latest hash).
5. **bake** — 24h after the stage-south promotion (deferred: no worker slot).
6. **ap_south** — prod train, approved by a person in Airflow (*Required actions*), then applied.
7. **canary_soak** — ≥10 autorecovery reloads with the new image and ≥24h with no
   `autorecovery_failed` incident on armada-infra in PagerDuty.
8. **remaining_prod** — one change request per region, in parallel; **rollout_monitoring** reads
   the image-count reports until adoption passes the threshold.

A failed gate rolls back the targets it does not vouch for (**rollout_end.rollback**) and escalates
to #sre-cfs-patching. The Variable `image_rollout_freeze` holds every promotion while set;
`image_rollout_hold` (JSON, naming builds) holds one build's rollout.
Jenkins starts a run with `dag_run_id` `rollout__<build name>`; a second trigger gets 409, and a
second run of the same build under another run id is refused at verification (a no-op once finished).
The plan (stages, targets, waits) is `include/plans/$ROLLOUT_PLAN.json`.
"""

from __future__ import annotations

# The Airflow modules build_dag uses, named here so the dag-processor imports them once, before it
# forks a parser for this file ([dag_processor] parsing_pre_import_modules, on by default), and not
# again in every parse.
import airflow.providers.standard.operators.empty  # noqa: F401
import airflow.providers.standard.operators.hitl  # noqa: F401
import airflow.providers.standard.operators.python  # noqa: F401
import airflow.providers.standard.sensors.date_time  # noqa: F401
import airflow.providers.standard.triggers.temporal  # noqa: F401
import airflow.task.trigger_rule  # noqa: F401
import airflow.triggers.base  # noqa: F401

from image_rollout.plan import load_plan
from image_rollout.rollout_dag import build_dag

dag = build_dag(load_plan(), doc_md=__doc__)

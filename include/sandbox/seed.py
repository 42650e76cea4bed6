"""Fixed seed data of the sandbox: builds, image maps, targets, workers and the texts the systems serve.

Kept apart from the simulation so the contract's numbers (API.md "Seed") live in one place.
"""

from __future__ import annotations

import json
import random
import uuid

PROJECT = "default"
FLAG_KEY = "worker-image"
ENVIRONMENT = "production"

PREVIOUS_BUILD = "532-1250-879-20210818"
PREVIOUS_NUMBER = 433
PREVIOUS_MAP = {"dev": "8495980", "prod": "8496814", "prodfr2": "8496850", "stage": "8496586"}
PREVIOUS_UPSTREAM = 1206

NEW_BUILD = "533-1251-880-20211101"
NEW_NUMBER = 434
NEW_MAP = {"dev": "8935101", "prod": "8935154", "prodfr2": "8935160", "stage": "8935122"}
NEW_UPSTREAM = 1207

IMAGE_JOB = "Conductors/oceanPI/immutable_image"
SMITH_JOB = "Conductors/Conductors-Infrastructure/SmithPackageSync-V2"
REPORT_JOB = "Conductors/Conductors-Infrastructure/reportCarrierWorkerIaasImageCounts"
FOLDERS = ("Conductors", "Conductors/oceanPI", "Conductors/Conductors-Infrastructure")
REPORT_FIRST_NUMBER = 2317
REPORT_ACCOUNT = "prod-531277"
REPORT_FILES = (f"{REPORT_ACCOUNT}-counts.log", f"{REPORT_ACCOUNT}-counts-per-carrier.log")

GITHUB_OWNER = "alchemy-conductors"
GITHUB_REPO = "team"
EVIDENCE_DIR = "train_evidence/smith-immutable-image"

PD_SERVICE_ID = "PM2KE3Q"
PD_SERVICE_SUMMARY = "armada-infra - low - prod"

#: Fleet size per prod carrier in the image-count reports, and the share that converges per report.
FLEET_SIZE = 200
FLEET_STEP = 50

#: target (flag rule) -> (carriers, image key), in rollout order.
TARGETS: list[tuple[str, list[str], str]] = [
    ("dev-sjc04-carrier12", ["dev-sjc04-carrier12"], "dev"),
    ("dev-south", ["dev-dal10-carrier2"], "dev"),
    ("prestage-mon01-carrier1", ["prestage-mon01-carrier1"], "dev"),
    ("prestage-south", ["prestage-dal09-carrier3"], "dev"),
    ("stage-dal10-carrier0", ["stgiks-dal10-carrier0"], "stage"),
    ("stage-south", ["stgiks-dal12-carrier1"], "stage"),
    ("ap-south", ["prod-syd01-carrier4", "prod-syd04-carrier2"], "prod"),
    ("ap-north", ["prod-tok02-carrier1"], "prod"),
    ("eu-central", ["prod-fra02-carrier3"], "prod"),
    ("uk-south", ["prod-lon04-carrier1"], "prod"),
    ("us-east", ["prod-wdc04-carrier5"], "prod"),
    ("us-south", ["prod-dal10-carrier8"], "prod"),
    ("br-sao", ["prod-sao01-carrier1"], "prod"),
    ("ca-tor", ["prod-tor01-carrier2"], "prod"),
    ("jp-osa", ["prod-osa21-carrier1"], "prod"),
    ("eu-fr2", ["prod-par04-carrier1"], "prodfr2"),
]
TARGET_NAMES = [t for t, _, _ in TARGETS]
PROD_KEYS = ("prod", "prodfr2")

#: Worker numbers the runbook's evidence example uses, so the sandbox's workers look familiar.
_KNOWN_WORKERS = {
    "dev-sjc04-carrier12": [504, 1003, 8003],
    "prestage-mon01-carrier1": [7005, 1011, 1002],
    "stgiks-dal10-carrier0": [1038, 8004, 1041],
}

#: Images older than the previous build that the prod fleet still runs at reset (report realism).
_OLDER_IMAGES = {"prod": ("8390187", "8233911"), "prodfr2": ("8390207", "8233944")}


def target_table() -> list[dict]:
    return [{"target": t, "carriers": list(c), "image_key": k} for t, c, k in TARGETS]


def is_prod_target(target: str) -> bool:
    return any(t == target and k in PROD_KEYS for t, _, k in TARGETS)


def carrier_workers(carrier: str) -> list[str]:
    """6-10 stable worker names per carrier (`<carrier>-worker-<n>`), the same after every reset."""
    rng = random.Random(f"workers/{carrier}")
    numbers = set(_KNOWN_WORKERS.get(carrier, []))
    wanted = rng.randint(6, 10)
    while len(numbers) < wanted:
        numbers.add(rng.choice((500, 1000, 7000, 8000)) + rng.randint(1, 60))
    return [f"{carrier}-worker-{n}" for n in sorted(numbers)]


def seed_fleet(carrier: str, image_key: str) -> dict[str, int]:
    """Image id -> worker count of one prod carrier at reset: mostly the previous image, a few older."""
    rng = random.Random(f"fleet/{carrier}")
    older, oldest = _OLDER_IMAGES[image_key]
    n_older = rng.randint(8, 40)
    n_oldest = rng.randint(0, 8)
    fleet = {PREVIOUS_MAP[image_key]: FLEET_SIZE - n_older - n_oldest, older: n_older}
    if n_oldest:
        fleet[oldest] = n_oldest
    return fleet


def stable_id(kind: str, value: object) -> str:
    """Deterministic uuid, so rule and variation ids survive a reset (hooks may cache them)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox/{kind}/{json.dumps(value, sort_keys=True)}"))


def evidence_path(build: str) -> str:
    return f"{EVIDENCE_DIR}/immutableimage_{build}_evidence.md"


def _packer_env_block(env: str, build: str, image_id: str, minutes: int, seconds: int) -> list[str]:
    guest = f"armada-worker-image-{build}-{env}"
    return [
        f"==> softlayer-{env}: Creating virtual guest {guest} in dal10 (flavor B1.4x8x100)...",
        f"    softlayer-{env}: Waiting for virtual guest to become ACTIVE...",
        f"==> softlayer-{env}: Waiting for SSH to become available...",
        f"==> softlayer-{env}: Connected to SSH!",
        f"==> softlayer-{env}: Provisioning with shell script: scripts/smith-packages.sh",
        f"    softlayer-{env}: Applying smith package set {build.rsplit('-', 1)[0]} (1251 packages)",
        f"    softlayer-{env}: Installing kernel linux-image-4.15.0-162-generic",
        f"==> softlayer-{env}: Provisioning with shell script: scripts/cis-hardening.sh",
        f"    softlayer-{env}: CIS benchmark: 212 passed, 0 failed",
        f"==> softlayer-{env}: Capturing image {guest} ...",
        f"==> softlayer-{env}: Image ID: {image_id}",
        f"Build 'softlayer-{env}' finished after {minutes} minutes {seconds} seconds.",
    ]


def packer_console(build: str, number: int, image_map: dict, *, upstream: int | None, outcome: str) -> str:
    """Console log of an immutable_image build; outcome is success, failed or timeout (API.md Jenkins)."""
    head = []
    if upstream is not None:
        head += [
            f'Started by upstream project "{SMITH_JOB}" build number {upstream}',
            "originally caused by:",
            " Started by timer",
        ]
    else:
        head += ["Started by user sandbox", f"Rebuilds build #{number - 1}"]
    ws = f"/var/lib/jenkins/workspace/{IMAGE_JOB}"
    head += [
        "Running as SYSTEM",
        "[EnvInject] - Loading node environment variables.",
        f"Building remotely on conductors-packer-07 (packer ubuntu18) in workspace {ws}",
        "The recommended git tool is: NONE",
        "using credential conductors-ghe-token",
        "Fetching changes from the remote Git repository",
        " > git config remote.origin.url https://github.ibm.com/alchemy-containers/armada-worker-image.git",
        "Checking out Revision 3f9c1e0b6a7d42c58e1f0a9b7d6c5e4f3a2b1c0d (refs/remotes/origin/master)",
        ' > git checkout -f 3f9c1e0b6a7d42c58e1f0a9b7d6c5e4f3a2b1c0d # timeout=10',
        f'Commit message: "Bump smith package set to {build.rsplit("-", 1)[0]}"',
        f"[immutable_image] $ /bin/bash -xe /tmp/jenkins{4417 + number}.sh",
        f"+ export BUILD_NAME={build}",
        "+ packer version",
        "Packer v1.7.4",
        '+ make -C packer image ENVS="dev stage prod prodfr2"',
        "softlayer-dev output will be in this color.",
        "softlayer-stage output will be in this color.",
        "softlayer-prod output will be in this color.",
        "softlayer-prodfr2 output will be in this color.",
    ]
    body: list[str] = []
    envs = ("dev", "stage", "prod", "prodfr2")
    if outcome == "timeout":
        body += _packer_env_block("dev", build, image_map["dev"], 38, 12)[:9]
        body += [
            "    softlayer-stage: Waiting for virtual guest to become ACTIVE...",
            "Build timed out (after 120 minutes). Marking the build as failed.",
            "Build was aborted",
            "[WS-CLEANUP] Deleting project workspace...",
            "Finished: FAILURE",
        ]
        return "\n".join(head + body) + "\n"
    for i, env in enumerate(envs):
        block = _packer_env_block(env, build, image_map[env], 11 + 3 * i, 7 + 13 * i)
        if outcome == "failed" and env == "prod":
            body += block[:6]
            body += [
                f"==> softlayer-{env}: E: Unable to fetch some archives, maybe run apt-get update",
                f"==> softlayer-{env}: Script exited with non-zero exit status: 100",
                f"Build 'softlayer-{env}' errored after 9 minutes 3 seconds: Script exited with non-zero "
                "exit status: 100",
                "==> Some builds didn't complete successfully and had errors:",
                f"--> softlayer-{env}: Script exited with non-zero exit status: 100",
                "ERROR: packer build failed",
                "make: *** [Makefile:31: image] Error 1",
                "Build step 'Execute shell' marked build as failure",
                "Finished: FAILURE",
            ]
            return "\n".join(head + body) + "\n"
        body += block
    body += ["", "==> Builds finished. The artifacts of successful builds are:"]
    body += [f"--> softlayer-{env}: SoftLayer image {image_map[env]}" for env in envs]
    body += [
        "+ python3 scripts/write_image_ids.py --out image_ids.json",
        json.dumps(image_map, sort_keys=True),
        "Archiving artifacts",
        "[WS-CLEANUP] Deleting project workspace...",
        "Finished: SUCCESS",
    ]
    return "\n".join(head + body) + "\n"


def smith_console(number: int, downstream: int | None) -> str:
    lines = [
        "Started by timer",
        "Running as SYSTEM",
        "Building on the built-in node in workspace /var/lib/jenkins/workspace/SmithPackageSync-V2",
        "+ ./smith-sync.sh --channel prod",
        "Synchronised 1251 packages to smith mirror (38 updated, 0 removed)",
    ]
    if downstream is not None:
        lines.append(f"Triggering a new build of Conductors » oceanPI » immutable_image #{downstream}")
    lines.append("Finished: SUCCESS")
    return "\n".join(lines) + "\n"


def report_console(number: int) -> str:
    return "\n".join(
        [
            "Started by timer",
            "Running as SYSTEM",
            f"Building on conductors-jenkins-agent-03 in workspace /var/lib/jenkins/workspace/{REPORT_JOB}",
            f"+ ./report_image_counts.sh --account {REPORT_ACCOUNT.split('-')[1]} --out {REPORT_ACCOUNT}",
            "Listing SoftLayer virtual guests for account 531277...",
            "Archiving artifacts",
            "Finished: SUCCESS",
        ]
    ) + "\n"


def evidence_markdown(build: str, number: int, image_map: dict, console: str) -> str:
    """The previous build's evidence file, as the runbook template fills it (seeded in GitHub)."""
    return (
        f"### Evidence for promotion of immutable image build `immutableimage_{build}-prod`\n\n"
        "SoftLayer armada-worker image IDs:\n```\n"
        f"{json.dumps(image_map, indent=2, sort_keys=True)}\n```\n\n"
        "All manual checks and tests have passed.\n\n"
        "### Acceptance tests: dev/prestage reloads\n\n"
        "dev machines successfully reloaded:\n"
        "- CHG5530645: dev-sjc04-carrier12-worker-504\n"
        "- CHG5530651: dev-sjc04-carrier12-worker-1003\n"
        "- CHG5530653: dev-sjc04-carrier12-worker-8003\n\n"
        "prestage machines successfully reloaded:\n"
        "- CHG1317755: prestage-mon01-carrier1-worker-7005\n"
        "- CHG1317755: prestage-mon01-carrier1-worker-1011\n"
        "- CHG1317755: prestage-mon01-carrier1-worker-1002\n\n"
        "### Acceptance tests: stage reloads\n\n"
        "stage machines successfully reloaded:\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-1038\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-8004\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-1041\n\n"
        "### Image build and test log\n\n"
        "Immutable image bootstrap pipeline: "
        f"https://alchemy-conductors-jenkins.swg-devops.com/job/Conductors/job/oceanPI/job/immutable_image/{number}/console\n\n"
        f"````\n{console}````\n\n"
        "Razee promotion link: https://razeeflags.containers.cloud.ibm.com/alchemy-containers/flags/default/"
        "production/worker-image/multiregion\n\n"
        "Concept doc: https://github.ibm.com/alchemy-containers/armada/blob/master/architecture/guild/"
        "concept-docs/concept-doc-kernel-patching.md\n"
    )

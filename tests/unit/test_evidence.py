from __future__ import annotations

from pathlib import Path

import pytest

from image_rollout.evidence_file import Evidence, EvidenceError, Reload, escape_markdown, reloads_from, render

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EXAMPLE = dict(
    build_name="532-1250-879-20210818",
    image_ids={"dev": "8495980", "prod": "8496814", "prodfr2": "8496850", "stage": "8496586"},
    console_url="https://alchemy-conductors-jenkins.swg-devops.com/job/Conductors/job/oceanPI/job/immutable_image/434/console",
    console_output="<CONSOLE OUTPUT FROM THE JENKINS JOB>",
    razee_link="https://razeeflags.containers.cloud.ibm.com/alchemy-containers/flags/default/production/worker-image/multiregion",
    concept_doc="https://github.ibm.com/alchemy-containers/armada/blob/master/architecture/guild/concept-docs/concept-doc-kernel-patching.md",
    dev_reloads=reloads_from([
        {"change_id": "CHG5530645", "worker": "dev-sjc04-carrier12-worker-504"},
        {"change_id": "CHG5530651", "worker": "dev-sjc04-carrier12-worker-1003"},
        {"change_id": "CHG5530653", "worker": "dev-sjc04-carrier12-worker-8003"},
    ]),
    prestage_reloads=reloads_from([
        {"change_id": "CHG1317755", "worker": f"prestage-mon01-carrier1-worker-{n}"} for n in (7005, 1011, 1002)
    ]),
)
STAGE = reloads_from([{"change_id": "CHG1321302", "worker": f"stgiks-dal10-carrier0-worker-{n}"}
                      for n in (1038, 8004, 1041)])


def test_renders_the_runbook_example_exactly():
    """The golden file is the runbook's own example, cut from RUNBOOK.md with its indentation removed."""
    assert render(Evidence(**EXAMPLE)) == (GOLDEN / "runbook_evidence_example.md").read_text()


def test_stage_update_inserts_the_section_after_the_prestage_reloads():
    first = render(Evidence(**EXAMPLE))
    second = render(Evidence(**EXAMPLE, stage_reloads=STAGE))
    section = (
        "### Acceptance tests: stage reloads\n\n"
        "stage machines successfully reloaded:\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-1038\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-8004\n"
        "- CHG1321302: stgiks-dal10-carrier0-worker-1041\n"
    )
    anchor = "- CHG1317755: prestage-mon01-carrier1-worker-1002\n\n"
    assert second == first.replace(anchor, anchor + section + "\n", 1)


def test_console_output_with_backtick_fences_cannot_close_the_block():
    text = render(Evidence(**{**EXAMPLE, "console_output": "ok\n````\n# injected heading\n````"}))
    assert "\n`````\nok\n````\n# injected heading\n````\n`````\n" in text


@pytest.mark.parametrize(
    "field,value",
    [
        ("build_name", "../../etc/passwd"),
        ("image_ids", {"dev": "84; rm -rf /"}),
        ("console_url", "javascript:alert(1)"),
        ("console_url", "https://x/ [click](http://evil)"),
    ],
)
def test_values_from_outside_are_refused(field, value):
    with pytest.raises(EvidenceError):
        Evidence(**{**EXAMPLE, field: value})


@pytest.mark.parametrize("change_id,worker", [("CHG1; DROP", "w-1"), ("CHG1", "[w](http://x)"), ("chg1", "w")])
def test_reload_rows_are_validated(change_id, worker):
    with pytest.raises(EvidenceError):
        Reload(change_id=change_id, worker=worker)


def test_markdown_escaping():
    assert escape_markdown("[x](http://evil)") == r"\[x\](http://evil)"
    assert escape_markdown("# heading\nnext") == r"\# heading next"
    assert escape_markdown("<script>") == r"\<script\>"
    assert escape_markdown("dev-sjc04-carrier12-worker-504") == "dev-sjc04-carrier12-worker-504"

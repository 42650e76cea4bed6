"""The train evidence file, rendered in exactly the runbook's format from ``include/templates``.

Everything that comes from outside (worker names, change ids, console output, approver
names) is either validated against a strict pattern or escaped, so a hostile value can
neither break the Markdown nor smuggle in a link.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2

from image_rollout.inputs import is_build_name, is_image_id

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "include" / "templates"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_MD_LINE_START = re.compile(r"^([#+\-=>!]|\d+\.)")
_WORKER = re.compile(r"^[a-z0-9][a-z0-9-]{0,100}$")
_CHANGE_ID = re.compile(r"^CHG\d{1,12}$")
CONSOLE_LIMIT = 60_000
CONSOLE_HEAD = 20_000
TRUNCATION_MARKER = "[... {omitted} characters of console output omitted here; full log at the console link above ...]"
NOT_PASSED = ("Not all manual checks and tests have passed: this file was first written by a rollback or "
              "another record, before the acceptance evidence; see the records below.")


def console_excerpt(text: str, limit: int = CONSOLE_LIMIT, head: int = CONSOLE_HEAD) -> str:
    """The console log cut to ``limit`` characters: the head (upstream provenance) and the tail, with an
    explicit marker between them saying how much was left out. Text within the limit is unchanged."""
    if len(text) <= limit:
        return text
    head = min(head, limit // 2)
    tail = limit - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n{TRUNCATION_MARKER.format(omitted=omitted)}\n{text[-tail:]}"


class EvidenceError(ValueError):
    """A value that must not go into the evidence file."""


def escape_markdown(value: object) -> str:
    """Escape Markdown syntax characters and flatten newlines, for a value from outside."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_LINE_START.sub(r"\\\1", text)


@dataclass(frozen=True)
class Reload:
    """One worker reload that counts as acceptance evidence."""

    change_id: str
    worker: str

    def __post_init__(self):
        if not _CHANGE_ID.match(self.change_id):
            raise EvidenceError(f"change id {self.change_id!r} is not like CHG1234567")
        if not _WORKER.match(self.worker):
            raise EvidenceError(f"worker name {self.worker!r} is not a worker name")


@dataclass(frozen=True)
class Record:
    """A section appended after the runbook's text: the prod approval, a rollback, a supersession."""

    title: str
    lines: tuple[str, ...]


@dataclass
class Evidence:
    """What the runbook's evidence file says about one build."""

    build_name: str
    image_ids: Mapping[str, str]
    console_url: str
    console_output: str
    razee_link: str
    concept_doc: str
    dev_reloads: Sequence[Reload] = ()
    prestage_reloads: Sequence[Reload] = ()
    stage_reloads: Sequence[Reload] = ()
    records: list[Record] = field(default_factory=list)
    checks_passed: bool = True

    def __post_init__(self):
        if not is_build_name(self.build_name):
            raise EvidenceError(f"build name {self.build_name!r} does not match NNN-NNNN-NNN-YYYYMMDD")
        for key, value in self.image_ids.items():
            if not is_image_id(value):
                raise EvidenceError(f"image id for {key!r} is not numeric: {value!r}")
        for url in (self.console_url, self.razee_link, self.concept_doc):
            if not re.match(r"^https?://[^\s<>()\[\]`]+$", url):
                raise EvidenceError(f"not a plain http(s) link: {url!r}")


def reloads_from(items: Iterable[Mapping]) -> list[Reload]:
    return [Reload(change_id=i["change_id"], worker=i["worker"]) for i in items]


def _fence_for(text: str) -> str:
    """The runbook's four-backtick fence, longer only if the console output itself has such a run."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(4, longest + 1)


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = escape_markdown
    return env.get_template("evidence.md.j2")


def render(evidence: Evidence) -> str:
    """Render the evidence file text."""
    console = console_excerpt(evidence.console_output.replace("\r\n", "\n").rstrip("\n"))
    return _template().render(
        build_name=evidence.build_name,
        image_ids_json=json.dumps(dict(evidence.image_ids), indent=2, sort_keys=True),
        dev_reloads=evidence.dev_reloads,
        prestage_reloads=evidence.prestage_reloads,
        stage_reloads=evidence.stage_reloads,
        console_url=evidence.console_url,
        console_output=console,
        fence=_fence_for(console),
        razee_link=evidence.razee_link,
        concept_doc=evidence.concept_doc,
        records=evidence.records,
        checks_passed=evidence.checks_passed,
        not_passed=NOT_PASSED,
    )

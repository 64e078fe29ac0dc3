"""The doctor's report: its problems, its verdict and exit status, and the report as text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tbps_runtime.paths import printable
from tbps_runtime.text import clip
from tbps_train.data.doctor.adapters import ADAPTERS
from tbps_train.data.doctor.figures import PUBLISHED_NOTES

__all__ = ["CLEAN", "MAX_EXAMPLES", "SECTIONS", "UNUSABLE", "WARNINGS", "Problem", "Report", "format_report"]

CLEAN, WARNINGS, UNUSABLE = 0, 1, 2  # exit statuses of `tbps data check`
MAX_EXAMPLES = 5
SECTIONS = ("annotation", "splits", "images", "identities", "captions")


@dataclass
class Problem:
    """One problem, reported once: ``count`` occurrences, up to :data:`MAX_EXAMPLES` of them shown."""

    severity: str  # "warning" or "error"
    code: str
    section: str  # one of SECTIONS
    message: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What :func:`~tbps_train.data.doctor.check_dataset` found; :meth:`to_json` is the ``--json`` document."""

    dataset: str
    title: str
    root: Path
    annotation: dict[str, Any]
    published_source: str | None = None
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    identities: dict[str, Any] = field(default_factory=dict)
    captions: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def status(self) -> int:
        severities = {p.severity for p in self.problems}
        return UNUSABLE if "error" in severities else WARNINGS if severities else CLEAN

    @property
    def verdict(self) -> str:
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        if errors:
            return f"unusable: {plural(errors, 'error')}" + (f", {plural(warnings, 'warning')}" if warnings else "")
        return f"usable with {plural(warnings, 'warning')}" if warnings else "clean"

    def add(self, severity: str, code: str, section: str, message: str, count: int,
            examples: Iterable[str] = ()) -> None:
        self.problems.append(Problem(severity, code, section, message, count, list(examples)[:MAX_EXAMPLES]))

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "title": self.title, "root": printable(str(self.root)),
                "annotation": self.annotation, "published_source": self.published_source, "splits": self.splits,
                "images": self.images, "identities": self.identities, "captions": self.captions,
                "problems": [asdict(p) for p in self.problems],
                "status": self.status, "verdict": self.verdict}


_PLURALS = {"entry": "entries", "identity": "identities"}
_VERBS = {"is": "are", "has": "have", "names": "name", "leads": "lead", "describes": "describe", "appears": "appear"}


def plural(n: int, noun: str, verb: str = "") -> str:
    """``plural(2, "entry", "is")`` -> ``"2 entries are"``."""
    text = f"{n:,} {noun if n == 1 else _PLURALS.get(noun, noun + 's')}"
    return f"{text} {verb if n == 1 else _VERBS[verb]}" if verb else text


def them(n: int) -> str:
    """``"it"`` or ``"them"``."""
    return "it" if n == 1 else "them"


def shown(image: str) -> str:
    """An image path as the report shows it."""
    return printable(clip(image, 80))


def relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset root, as the report shows it."""
    if path == root:  # a CSV root is the annotation file itself
        return printable(path.name)
    try:
        return printable(str(path.relative_to(root)))
    except ValueError:
        return printable(str(path))


def format_report(report: Report) -> str:
    """The report as text: a header, one section per concern with its verdict, the final verdict."""
    entries = report.annotation["entries"]
    found = report.annotation["file"] or f"none ({ADAPTERS[report.dataset].expected} expected)"
    lines = [f"dataset     {report.title} ({report.dataset})", f"root        {printable(str(report.root))}",
             f"annotation  {found}" + (f", {entries:,} entries" if entries is not None else ""), ""]
    for section in SECTIONS:
        problems = sorted((p for p in report.problems if p.section == section), key=lambda p: p.severity != "error")
        if section != "annotation" and not problems and not _section_ran(report, section):
            continue
        lines.append(f"{section}: {_section_verdict(problems)}{_section_summary(report, section)}")
        if section == "splits":
            lines += _split_table(report)
        for problem in problems:
            lines.append(f"  {problem.severity} {problem.code}: {problem.message}")
            lines += [f"      {example}" for example in problem.examples]
            if problem.count > len(problem.examples) and problem.examples:
                lines.append(f"      ... {problem.count - len(problem.examples):,} more")
    lines.append(f"verdict: {report.verdict}")
    return printable("\n".join(lines))


def _section_ran(report: Report, section: str) -> bool:
    return bool({"splits": report.splits, "images": report.images, "identities": report.identities,
                 "captions": report.captions}.get(section))


def _section_verdict(problems: list[Problem]) -> str:
    severities = {p.severity for p in problems}
    return "error" if "error" in severities else "warning" if severities else "ok"


def _section_summary(report: Report, section: str) -> str:
    if section == "images" and report.images:
        info = report.images
        decoded = (f"{info['decoded']:,} decoded, a sample (seed {info['seed']})" if info["sampled"]
                   else f"{info['decoded']:,} decoded")
        return f" ({info['referenced']:,} referenced, {info['missing']:,} missing; {decoded})"
    if section == "identities" and report.identities:
        return f" ({report.identities['total']:,} identities)"
    if section == "captions" and report.captions:
        check = report.captions.get("length_check", {})
        length = (f"; longest {check['longest']:,} {check['unit']}, limit {check['limit']:,}" if "limit" in check
                  else f"; lengths not checked: {check['skipped']}" if "skipped" in check else "")
        return f" ({report.captions['total']:,} kept{length})"
    return ""


def _split_table(report: Report) -> list[str]:
    source = f" ({report.published_source})" if report.published_source else ""
    rows = [f"  {'split':<8}{'images':>10}{'identities':>12}{'captions':>10}   "
            f"published: images / identities / captions{source}"]
    for name, split in report.splits.items():
        published = split["published"]
        figures = [f"{published[k]:,}" if k in published else "-" for k in ("images", "identities", "captions")
                   ] if published else ["none"]
        shown = " / ".join(figures)
        rows.append(f"  {printable(name):<8}{split['images']:>10,}{split['identities']:>12,}"
                    f"{split['captions']:>10,}   {shown}")
    note = PUBLISHED_NOTES.get(report.dataset)
    if note and any(s["published"] for s in report.splits.values()):
        rows.append(f"  ({note})")
    return rows

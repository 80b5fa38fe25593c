"""What passes over blocks report about skipped files and non-finite samples, in a picklable
form, and their totals over blocks."""

from __future__ import annotations

from dataclasses import dataclass, field

from bncheck.data.loader import EXAMPLES, DataIssues


@dataclass
class IssueTotals:
    """Skipped files and non-finite samples summed over blocks, examples in block order."""

    skipped_count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    nonfinite: int = 0
    nonfinite_examples: list[str] = field(default_factory=list)
    delivered: int = 0
    #: samples in the files read (before skips, exclusions and the limit); None once a block
    #: did not say (one read only up to the limit)
    available: int | None = 0

    def add(self, issues: DataIssues | dict) -> None:
        d = issues if isinstance(issues, dict) else issue_dict(issues)
        more = d.get("available")
        self.available = None if self.available is None or more is None else self.available + int(more)
        self.skipped_count += d["skipped_count"]
        self.skipped += [tuple(s) for s in d["skipped"][: max(0, EXAMPLES - len(self.skipped))]]
        self.nonfinite += d["nonfinite"]
        self.nonfinite_examples += d["nonfinite_examples"][: max(0, EXAMPLES - len(self.nonfinite_examples))]
        self.delivered += d["delivered"]


def issue_dict(issues: DataIssues, rename: dict[str, str] | None = None, available: int | None = None) -> dict:
    """A picklable summary of one pass over a block; ``rename`` maps staged local paths back;
    ``available``: the samples in the block's files, when the pass read them all."""
    fix = (lambda s: rename_text(s, rename)) if rename else (lambda s: s)
    return {
        "skipped_count": issues.skipped_count,
        "skipped": [(fix(p), fix(r)) for p, r in issues.skipped],
        "nonfinite": issues.nonfinite,
        "nonfinite_examples": [fix(e) for e in issues.nonfinite_examples],
        "delivered": issues.delivered,
        "available": available,
    }


def rename_text(text: str, rename: dict[str, str]) -> str:
    """``text`` with staged local paths replaced by the URLs they were copied from."""
    for old, new in rename.items():
        text = text.replace(old, new)
    return text

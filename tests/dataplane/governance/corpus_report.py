"""Precision and recall of every built-in detector on the labelled corpus.

``python -m tests.dataplane.governance.corpus_report`` prints the table; the corpus test
asserts on the same figures. A finding counts as true when its text and kind are one of
the sample's expected ``[kind, substring]`` pairs (each expected pair matches once); every
other finding is a false positive, and every expected pair not found a false negative.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dataplane.governance.detectors  # noqa: F401  (registers the built-ins)
from dataplane.governance import detect

CORPUS = Path(__file__).resolve().parent / "corpus"


@dataclass
class Score:
    samples: int = 0
    negatives: int = 0
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    negative_set_false_positives: int = 0
    """False positives in samples that expect nothing (the near misses)."""
    languages: set[str] = field(default_factory=set)
    formats: set[str] = field(default_factory=set)
    misses: list[str] = field(default_factory=list)
    """Where it went wrong, for the test's message: sample line and kind, never more."""

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


def load(name: str) -> list[dict[str, Any]]:
    lines = (CORPUS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


def score(name: str) -> Score:
    result = Score()
    detectors: dict[str, detect.Detector] = {}
    for number, sample in enumerate(load(name), 1):
        options = sample.get("options", {})
        key = json.dumps(options, sort_keys=True)
        if key not in detectors:
            detectors[key] = detect.build(name, options)
        text = sample["text"]
        expected = Counter((kind, value) for kind, value in sample["expect"])
        result.samples += 1
        result.negatives += not expected
        result.languages.add(sample["lang"])
        result.formats.add(sample["format"])
        for span in detectors[key].find(text):
            pair = (span.kind, text[span.start : span.end])
            if expected[pair] > 0:
                expected[pair] -= 1
                result.true_positives += 1
            else:
                result.false_positives += 1
                result.negative_set_false_positives += not sample["expect"]
                result.misses.append(f"{name}.jsonl:{number}: unexpected {span.kind} at {span.start}")
        for (kind, _), left in expected.items():
            result.false_negatives += left
            if left:
                result.misses.append(f"{name}.jsonl:{number}: missed {kind}")
    return result


def table(scores: dict[str, Score]) -> str:
    rows = [
        f"{'detector':<14}{'samples':>8}{'neg':>5}{'TP':>5}{'FP':>4}{'FN':>4}{'FP(neg)':>8}"
        f"{'precision':>10}{'recall':>8}  langs / formats"
    ]
    for name, s in scores.items():
        rows.append(
            f"{name:<14}{s.samples:>8}{s.negatives:>5}{s.true_positives:>5}{s.false_positives:>4}"
            f"{s.false_negatives:>4}{s.negative_set_false_positives:>8}{s.precision:>10.3f}{s.recall:>8.3f}"
            f"  {','.join(sorted(s.languages))} / {','.join(sorted(s.formats))}"
        )
    total = sum(s.samples for s in scores.values())
    rows.append(f"{'all':<14}{total:>8}")
    return "\n".join(rows)


def scores() -> dict[str, Score]:
    return {path.stem: score(path.stem) for path in sorted(CORPUS.glob("*.jsonl"))}


def main() -> None:
    results = scores()
    print(table(results))
    for s in results.values():
        for miss in s.misses:
            print(miss)


if __name__ == "__main__":
    main()

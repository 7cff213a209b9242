"""Precision and recall of every built-in detector on the labelled corpus (issue 10's acceptance).

Thresholds (per detector): precision at least 0.95 and recall at least 0.90 over the
corpus, and for the checksum-backed detectors (payment_card, iban, national_id) not one
false positive on the negative set, the near misses written to look like their values.
The table is printed with ``-s`` and by ``python -m tests.dataplane.governance.corpus_report``.
"""

from __future__ import annotations

import pytest

from dataplane.governance.detectors import BUILT_IN
from tests.dataplane.governance import corpus_report
from tests.dataplane.governance.corpus import make_corpus

MIN_PRECISION = 0.95
MIN_RECALL = 0.90
CHECKSUM_BACKED = ("payment_card", "iban", "national_id")


@pytest.fixture(scope="module")
def scores() -> dict[str, corpus_report.Score]:
    results = corpus_report.scores()
    print("\n" + corpus_report.table(results))
    return results


def test_the_corpus_covers_every_built_in_detector(scores: dict[str, corpus_report.Score]) -> None:
    assert set(scores) == set(BUILT_IN) == set(make_corpus.DETECTORS)
    assert sum(s.samples for s in scores.values()) >= 300
    for name, s in scores.items():
        assert s.negatives >= 8, name
        assert s.true_positives + s.false_negatives >= 20, name
        assert s.languages >= {"en", "de", "fr", "es", "nl"}, name
        assert len(s.formats) >= 4, name


@pytest.mark.parametrize("name", list(make_corpus.DETECTORS))
def test_precision_and_recall_meet_the_thresholds(scores: dict[str, corpus_report.Score], name: str) -> None:
    s = scores[name]
    assert s.precision >= MIN_PRECISION, s.misses
    assert s.recall >= MIN_RECALL, s.misses


@pytest.mark.parametrize("name", CHECKSUM_BACKED)
def test_checksum_backed_detectors_have_no_false_positive_on_the_negative_set(
    scores: dict[str, corpus_report.Score], name: str
) -> None:
    assert scores[name].negative_set_false_positives == 0, scores[name].misses


@pytest.mark.parametrize("name", list(make_corpus.DETECTORS))
def test_the_committed_corpus_is_what_the_generator_writes(name: str) -> None:
    committed = (corpus_report.CORPUS / f"{name}.jsonl").read_text(encoding="utf-8")
    assert committed == make_corpus.render(name), (
        "run python -m tests.dataplane.governance.corpus.make_corpus"
    )

"""The governance detectors alone: per-call latency on prompts of 1 KB, 4 KB and 32 KB.

Prompts are prose in English, German, French, Spanish and Dutch (sentences drawn at
random), with a few findings planted: an e-mail address and a phone number in every
prompt, plus a card number and an IBAN from 4 KB up, and twice as many at 32 KB. Each
detector (``regex`` and ``terms`` with a tenant-sized option set) is timed per ``find``
call, then "default" is the set a default profile runs, one after another on the same
text: email, phone, payment_card, iban, credential, ip_address.

    .venv/bin/python bench/governance_detectors.py [--calls 2000] [--rounds 3] [--seed 10]

Each measurement runs ``--rounds`` times and the best round is reported (on a shared
machine the other rounds measure the neighbours too). 50 different prompts per size are
cycled, so nothing is measured on one warm string.

Target: the whole governance step under 200 us p50 at 4 KB, so "default" well under it.

Then the hostile texts: for each detector, texts made of one short unit repeated (``"1:"``
for ``phone``, ``"@a"`` for ``email``, PEM BEGIN lines for ``credential``, a run of ``a`` for a
term list nesting 200 deep...), each timed once at ``--hostile-chars`` and at a quarter of
that (best of 3, CPU time of the thread), given in ms per MiB of text: the work must grow with the text, not faster (the ratio
column: ~4 is linear), whatever the text. ``--hostile-only`` skips the prompts.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataplane.governance import detect
from dataplane.governance.detectors import BUILT_IN
from dataplane.governance.detectors._digits import forget, share

SENTENCES = [
    "The quarterly report shows that revenue grew faster than expected in the northern region.",
    "Please summarise the attached meeting notes and list the open action items by owner.",
    "We need a short answer for the customer who asked why their order was delayed by a week.",
    "Translate the following paragraph into plain language suitable for a general audience.",
    "Der Bericht beschreibt die Ergebnisse der Umfrage unter zweihundert Kundinnen und Kunden.",
    "Bitte fassen Sie die wichtigsten Punkte des Vertrags in drei kurzen Absätzen zusammen.",
    "Le comité a décidé de reporter la décision finale à la prochaine réunion du conseil.",
    "Pouvez-vous rédiger une réponse polie au client qui demande un remboursement partiel ?",
    "El equipo de soporte recibió más de cien consultas durante el fin de semana pasado.",
    "Necesitamos una lista de riesgos del proyecto ordenada por probabilidad e impacto.",
    "De klant vraagt of de levering van volgende week nog op tijd kan plaatsvinden.",
    "Kun je de onderstaande tekst controleren op spelfouten en onduidelijke zinnen?",
    "In 2025 the team shipped 14 releases, closed 312 issues and reduced latency by 30 percent.",
    "Version 2.4.1 fixed the bug reported on 12.03.2025 at 14:30 by the night shift.",
]
FINDINGS = {
    "email": ["jane.doe@example.com", "max.mustermann@beispiel.de", "support@exemple.fr"],
    "phone": ["+49 30 12345678", "(415) 555-2671", "01 42 68 53 00", "020 7946 0958"],
    "card": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR7630006000011234567890189"],
}
DEFAULT_PROFILE = ["email", "phone", "payment_card", "iban", "credential", "ip_address"]
OPTIONS: dict[str, dict[str, Any]] = {
    "regex": {"patterns": [r"PRJ-[0-9]{4}", r"\bTICKET#[0-9]{3,6}\b", r"(?i)confidential|vertraulich"]},
    "terms": {"terms": [f"codename{i}" for i in range(1000)] + ["Project Falcon", "Bluebird"]},
}
SIZES = {"1 KB": 1024, "4 KB": 4096, "32 KB": 32768}
NESTED = {"terms": ["a" * i for i in range(1, 201)]}
NESTED_PHRASES = {"terms": [" ".join("a" * i) for i in range(1, 101)]}
HOSTILE: list[tuple[str, dict[str, Any] | None, str]] = [
    ("phone", None, "1:"),
    ("phone", None, "+1 "),
    ("email", None, "@a"),
    ("email", None, "a.@"),
    ("payment_card", None, "1234 "),
    ("iban", None, "DE89 "),
    ("national_id", None, "bsn 123456782 "),
    ("national_id", None, "RSSMRA85T10A562S "),
    ("national_id", None, "ssn 536904399 "),
    ("national_id", None, "idnr 36574261809 "),
    ("national_id", None, "personnummer 811218-9876 "),
    ("national_id", None, "12345678Z "),
    ("national_id", None, "ssn 536-90-4399 "),
    ("national_id", None, "X1234567L "),
    ("national_id", None, "1 84 12 76 451 089 46 "),
    ("ip_address", None, "a:1"),
    ("ip_address", None, "1."),
    ("credential", None, "sk-"),
    ("credential", None, "-----BEGIN PRIVATE KEY-----."),
    ("credential", None, "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"),
    ("terms", NESTED, "a"),
    ("terms", NESTED_PHRASES, "a "),
]


def prompt(rng: random.Random, size: int) -> str:
    kinds = ["email", "phone"] + (["card", "iban"] if size >= 4096 else [])
    kinds *= 2 if size >= 32768 else 1
    plants = [rng.choice(FINDINGS[k]) for k in kinds]
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(SENTENCES)
        parts.append(sentence)
        length += len(sentence) + 1
    for plant in plants:
        i = rng.randrange(len(parts))
        parts[i] = f"{parts[i]} Contact: {plant}."
    return " ".join(parts)[: size + 64]


def measure(run: Any, texts: list[str], calls: int) -> list[float]:
    timings = []
    gc.disable()
    try:
        for i in range(calls):
            text = texts[i % len(texts)]
            start = time.perf_counter_ns()
            run(text)
            timings.append((time.perf_counter_ns() - start) / 1000)
    finally:
        gc.enable()
    return timings


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if q < 100 else max(values)


def hostile(chars: int) -> None:
    """Each hostile text at ``chars`` and a quarter of it: ms per MiB, and the ratio."""
    print(f"\n{'detector':<14}{'unit':<34}{'ms/MiB':>10}{'ms/MiB (1/4)':>14}{'ratio':>8}")
    for name, options, unit in HOSTILE:
        detector = detect.build(name, options)
        seconds = []
        for n in (chars // 4, chars):
            best = float("inf")
            gc.disable()
            try:
                for _ in range(3):
                    text = unit * (n // len(unit))  # a new string: nothing cached for it
                    start = time.thread_time()  # CPU time: a busy machine's waits left out
                    detector.find(text)
                    best = min(best, time.thread_time() - start)
            finally:
                gc.enable()
            seconds.append(best)
        per_mib = [s * 1e3 * (1 << 20) / n for s, n in zip(seconds, (chars // 4, chars), strict=True)]
        label = f"{unit!r}" + (f" ({len(options['terms'])} nested)" if options else "")
        print(
            f"{name:<14}{label:<34}{per_mib[1]:>10.0f}{per_mib[0]:>14.0f}{seconds[1] / seconds[0]:>8.1f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--hostile-chars", type=int, default=1 << 18)
    parser.add_argument("--hostile-only", action="store_true")
    args = parser.parse_args()
    if args.hostile_only:
        hostile(args.hostile_chars)
        return
    rng = random.Random(args.seed)
    texts = {label: [prompt(rng, size) for _ in range(50)] for label, size in SIZES.items()}
    detectors = {name: detect.build(name, OPTIONS.get(name)) for name in BUILT_IN}
    default = [detectors[name] for name in DEFAULT_PROFILE]

    def run_default(text: str) -> None:
        share()  # as a governance step does: the detectors share their scan of the text
        try:
            for d in default:
                d.find(text)
        finally:
            forget()

    runs: dict[str, Any] = {name: d.find for name, d in detectors.items()}
    runs["default"] = run_default
    print(
        f"{'detector':<14}"
        + "".join(f"{label + ' p50':>12}{label + ' p99':>12}" for label in SIZES)
        + "   (us)"
    )
    for name, run in runs.items():
        cells = []
        for label in SIZES:
            calls = args.calls if label != "32 KB" else max(200, args.calls // 8)
            best = min((measure(run, texts[label], calls) for _ in range(args.rounds)), key=statistics.median)
            cells.append(f"{p(best, 50):>12.1f}{p(best, 99):>12.1f}")
        print(f"{name:<14}" + "".join(cells), flush=True)
    hostile(args.hostile_chars)


if __name__ == "__main__":
    main()

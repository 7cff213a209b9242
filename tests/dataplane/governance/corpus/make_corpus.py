"""Writes the governance detectors' labelled corpus: ``python -m tests.dataplane.governance.corpus.make_corpus``.

Every value is invented here, offline, from a fixed seed: card numbers get a Luhn digit,
IBANs their mod 97 check digits, identifiers their check digit or letter, all computed
with the same libraries the detectors use, so no real person's data is involved, and the
same seed writes the same files (the committed ``*.jsonl`` are its output; a test checks
they are current). Near misses are written on purpose: the shape without the checksum,
the number without its context word, what a detector is documented not to find.

A sample is one JSON line: ``text``, ``expect`` (a list of ``[kind, substring]``; empty for
a negative), ``lang``, ``format``, and for the option-driven detectors ``options``.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.exceptions import ValidationError
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

HERE = Path(__file__).resolve().parent
SEED = 10

Sample = dict[str, Any]

# (lang, format, template): {v} is the value, {w} the detector's word in that language.
TEMPLATES: list[tuple[str, str, str]] = [
    ("en", "prose", "Hi team, please use {w} {v} for the refund and let me know once it is done."),
    ("en", "prose", "The customer wrote: my {w} is {v}, can you check why the payment failed?"),
    ("en", "log", '2026-11-29T10:15:02Z INFO request_id=7f3a user_field="{v}" msg="{w} updated"'),
    ("en", "json", '{{"id": 4182, "{w}": "{v}", "status": "active"}}'),
    ("en", "csv", 'name,{w},city\n"Jane Placeholder","{v}",Springfield'),
    ("en", "code", 'DEFAULT_VALUE = "{v}"  # {w}, replace before release'),
    ("de", "prose", "Sehr geehrte Damen und Herren, meine {w} lautet {v}. Mit freundlichen Grüßen"),
    ("de", "prose", "Bitte überweisen Sie den Betrag; {w}: {v} (bitte prüfen)."),
    ("de", "csv", "Kunde;{w};Ort\nMax Mustermann;{v};Berlin"),
    ("fr", "prose", "Bonjour, voici mon {w} : {v}. Merci de mettre à jour mon dossier."),
    ("fr", "json", '{{"client": "Dupont", "{w}": "{v}", "pays": "FR"}}'),
    ("es", "prose", "Hola, mi {w} es {v}, por favor actualicen mis datos."),
    ("es", "log", "[WARN] 2026-11-29 10:15:02 cliente={w} valor={v} reintento=2"),
    ("nl", "prose", "Beste klantenservice, mijn {w} is {v}. Met vriendelijke groet"),
    ("nl", "yaml", "klant:\n  naam: Jan Jansen\n  {w}: {v}\n"),
]


def fill(
    rng: random.Random, word: str, value: str, *, langs: tuple[str, ...] | None = None
) -> tuple[str, str, str]:
    choices = [t for t in TEMPLATES if langs is None or t[0] in langs]
    lang, fmt, template = rng.choice(choices)
    return template.format(w=word, v=value), lang, fmt


def sample(text: str, expect: list[tuple[str, str]], lang: str, fmt: str, **extra: Any) -> Sample:
    for _, value in expect:
        assert value in text, (value, text)
    return {"text": text, "expect": [list(e) for e in expect], "lang": lang, "format": fmt, **extra}


def positives(
    rng: random.Random, n: int, words: list[str], make: Callable[[], tuple[str, str]]
) -> Iterator[Sample]:
    for i in range(n):
        kind, value = make()
        text, lang, fmt = fill(rng, words[i % len(words)], value)
        yield sample(text, [(kind, value)], lang, fmt)


def negatives(rng: random.Random, words: list[str], values: list[str]) -> Iterator[Sample]:
    for i, value in enumerate(values):
        text, lang, fmt = fill(rng, words[i % len(words)], value)
        yield sample(text, [], lang, fmt)


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


# ---- payment cards ----

CARD_PREFIXES = {
    "visa": ["4"],
    "mastercard": ["51", "53", "55", "2221", "2720"],
    "amex": ["34", "37"],
    "discover": ["6011", "65"],
    "jcb": ["3530", "3589"],
    "diners": ["300", "36"],
    "unionpay": ["62"],
    "maestro": ["6759", "5018"],
}
CARD_LENGTHS = {"amex": 15, "diners": 14}


def card(rng: random.Random, scheme: str) -> str:
    prefix = rng.choice(CARD_PREFIXES[scheme])
    body = prefix + digits(rng, CARD_LENGTHS.get(scheme, 16) - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def card_written(rng: random.Random, number: str) -> str:
    style = rng.choice(["compact", "space", "dash"])
    if style == "compact":
        return number
    sep = " " if style == "space" else "-"
    if len(number) == 15:
        return sep.join([number[:4], number[4:10], number[10:]])
    if len(number) == 14:
        return sep.join([number[:4], number[4:10], number[10:]])
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def payment_card(rng: random.Random) -> Iterator[Sample]:
    words = ["card number", "Kartennummer", "numéro de carte", "tarjeta", "kaartnummer", "card"]
    schemes = list(CARD_PREFIXES)

    def make() -> tuple[str, str]:
        scheme = schemes[rng.randrange(len(schemes))]
        return scheme, card_written(rng, card(rng, scheme))

    yield from positives(rng, 34, words, make)
    # Two cards in one text, and a card followed by its CVV.
    a, b = card(rng, "visa"), card(rng, "mastercard")
    yield sample(
        f"Cards on file: {a} and {card_written(rng, b)}.",
        [("visa", a), ("mastercard", card_written(rng, b))],
        "en",
        "prose",
    )
    c = card_written(rng, card(rng, "visa")).replace("-", " ")
    yield sample(f"card {c} 123 exp 12/29", [("visa", c)], "en", "log")
    near = []
    for scheme in ["visa", "mastercard", "amex", "discover"] * 3:
        number = card(rng, scheme)
        wrong = number[:-1] + str((int(number[-1]) + 1) % 10)  # Luhn fails
        near.append(card_written(rng, wrong))
    near += [
        "490154203237518",  # an IMEI: Luhn-valid, 15 digits, not a card
        "9780306406157",  # an ISBN-13
        "1234 5678 9012 3456 7890",  # too many groups
        "00012345678901234567",  # a 20-digit tracking number
        "2026-1129-0001-0042",  # a reference with a card's grouping, Luhn fails
        "4111 1111 1111",  # too short
    ]
    imei = "35" + digits(rng, 12)
    near.append(imei + luhn.calc_check_digit(imei))  # a Luhn-valid IMEI of another maker
    yield from negatives(rng, ["order number", "Bestellnummer", "référence", "pedido", "IMEI"], near)


# ---- IBAN ----

IBAN_COUNTRIES = ["DE", "FR", "GB", "NL", "ES", "IT", "BE", "AT", "CH", "PL", "SE", "IE"]


def _bban(rng: random.Random, structure: str) -> str:
    out = []
    for count, kind in re.findall(r"(\d+)!([nac])", structure):
        alphabet = {
            "n": string.digits,
            "a": string.ascii_uppercase,
            "c": string.digits + string.ascii_uppercase,
        }[kind]
        out.append("".join(rng.choice(alphabet) for _ in range(int(count))))
    return "".join(out)


def iban_number(rng: random.Random, country: str) -> str:
    structure = stdnum_iban._ibandb.info(country + "00")[0][1]["bban"]
    while True:  # national check digits (FR, ES, IT, BE...) pass one time in ~100: retry
        bban = _bban(rng, structure)
        number = country + stdnum_iban.calc_check_digits(country + "00" + bban) + bban
        try:
            stdnum_iban.validate(number)
        except ValidationError:
            continue
        return number


def iban_written(rng: random.Random, number: str) -> str:
    if rng.random() < 0.5:
        return number
    return " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def iban(rng: random.Random) -> Iterator[Sample]:
    words = ["IBAN", "IBAN", "Bankverbindung", "IBAN", "rekeningnummer"]

    def make() -> tuple[str, str]:
        country = IBAN_COUNTRIES[rng.randrange(len(IBAN_COUNTRIES))]
        return country, iban_written(rng, iban_number(rng, country))

    yield from positives(rng, 34, words, make)
    de = iban_written(rng, iban_number(rng, "DE"))
    yield sample(f"IBAN {de} 1250,00 EUR", [("DE", de)], "de", "csv")
    near = []
    for country in IBAN_COUNTRIES[:8]:
        number = iban_number(rng, country)
        check = (int(number[2:4]) + 1) % 100
        near.append(iban_written(rng, f"{number[:2]}{check:02d}{number[4:]}"))  # wrong check digits
    for country in ["DE", "NL", "GB"]:
        number = iban_number(rng, country)
        near.append(iban_written(rng, number[:-1]))  # one character short
        near.append(number[:6] + number[7] + number[6] + number[8:])  # two characters swapped
    near += [
        "XX82 WEST 1234 5698 7654 32",
        "DE00 0000 0000 0000 0000 00",
        "ISO 13616 IBAN format",
        "BIC COBADEFFXXX",
    ]
    yield from negatives(rng, ["reference", "Referenz", "référence", "referencia", "kenmerk"], near)


# ---- e-mail ----

NAMES = [
    "jane.doe",
    "max.mustermann",
    "jean-luc.martin",
    "maria_garcia",
    "jan.jansen",
    "j.smith+billing",
    "ops-team",
    "jürgen.müller",
    "élodie",
]
DOMAINS = [
    "example.com",
    "example.org",
    "beispiel.de",
    "exemple.fr",
    "ejemplo.es",
    "voorbeeld.nl",
    "mail.example.co.uk",
    "test-firma.de",
]


def email(rng: random.Random) -> Iterator[Sample]:
    words = ["email", "E-Mail-Adresse", "adresse e-mail", "correo", "e-mailadres"]

    def make() -> tuple[str, str]:
        return "address", f"{rng.choice(NAMES)}@{rng.choice(DOMAINS)}"

    yield from positives(rng, 30, words, make)
    yield sample(
        "From: Jane <jane.doe@example.com>\nCc: max.mustermann@beispiel.de, ops@example.org",
        [
            ("address", "jane.doe@example.com"),
            ("address", "max.mustermann@beispiel.de"),
            ("address", "ops@example.org"),
        ],
        "en",
        "log",
    )
    yield sample("Contact: support@example.com.", [("address", "support@example.com")], "en", "prose")
    near = [
        "root@localhost",
        "admin@db01",
        "@jane_doe",
        "@Override",
        "logo@2x.png",
        "icon@3x.webp",
        "jane dot doe at example dot com",
        "user@",
        "@example.com",
        "pkg@^1.2.3",
        "a@b",
        "name(at)example.com",
    ]
    yield from negatives(rng, ["handle", "Benutzer", "identifiant", "usuario", "gebruiker"], near)
    yield sample("@property\ndef name(self) -> str:\n    return self._name", [], "en", "code")
    yield sample("npm install @types/node@20.1.0 --save-dev", [], "en", "code")


# ---- phone ----


def phone_number(rng: random.Random) -> tuple[str, str]:
    while True:
        region, written = rng.choice(
            [
                ("DE", lambda: f"030 {digits(rng, 8)}"),
                ("DE", lambda: f"+49 89 {digits(rng, 7)}"),
                ("DE", lambda: f"0171 {digits(rng, 7)}"),
                ("FR", lambda: "01 " + " ".join(digits(rng, 2) for _ in range(4))),
                ("FR", lambda: "+33 6 " + " ".join(digits(rng, 2) for _ in range(4))),
                ("GB", lambda: f"020 7946 0{digits(rng, 3)}"),
                ("GB", lambda: f"+44 161 496 0{digits(rng, 3)}"),
                ("US", lambda: f"(201) 555-01{digits(rng, 2)}"),
                ("US", lambda: f"+1 415-555-01{digits(rng, 2)}"),
                ("NL", lambda: f"+31 20 {digits(rng, 3)} {digits(rng, 4)}"),
                ("ES", lambda: f"+34 91 {digits(rng, 3)} {digits(rng, 2)} {digits(rng, 2)}"),
            ]
        )
        value = written()
        try:
            parsed = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.region_code_for_number(parsed) or region, value


def phone(rng: random.Random) -> Iterator[Sample]:
    words = ["phone", "Telefonnummer", "numéro de téléphone", "teléfono", "telefoonnummer"]
    yield from positives(rng, 32, words, lambda: phone_number(rng))
    a, b = phone_number(rng), phone_number(rng)
    yield sample(f"Tel. {a[1]}, Fax {b[1]}", [a, b], "de", "prose")
    near = [
        "2026-11-29 10:15:02",
        "29.11.2026",
        "11/29/2026",
        "10115 Berlin",
        "75008 Paris",
        "v1.2.3.4",
        "192.168.10.20",
        "1.234.567,89 EUR",
        "$1,299.00",
        "1234567890",  # an order number, not written as any national number
        "12:30:45",
        "ISO 3166-1",
        "42",
        "page 123-456",
        "000 0000 0000",
    ]
    yield from negatives(rng, ["date", "Datum", "date", "fecha", "datum"], near)


# ---- national identifiers ----


def _ssn(rng: random.Random) -> str:
    while True:
        value = f"{rng.randint(1, 899):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        try:
            ssn.validate(value)
        except ValidationError:
            continue
        return value


def _nino(rng: random.Random) -> str:
    first, second = rng.choice("ABCEGHJKLMNPRSTWXYZ"), rng.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
        first = "A"
    return f"{first}{second} {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)} {rng.choice('ABCD')}"


def _idnr(rng: random.Random) -> str:
    while True:
        body = str(rng.randint(1, 9)) + digits(rng, 9)
        for check in string.digits:
            try:
                idnr.validate(body + check)
            except ValidationError:
                continue
            return body + check


def _nir(rng: random.Random) -> str:
    body = f"{rng.choice('12')}{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 95):02d}{rng.randint(1, 990):03d}{rng.randint(1, 999):03d}"
    if body[5:7] == "20":
        body = body[:5] + "75" + body[7:]
    return body + nir.calc_check_digits(body)


def _bsn(rng: random.Random) -> str:
    while True:
        value = str(rng.randint(1, 9)) + digits(rng, 8)
        if bsn.is_valid(value):
            return value


def _dni(rng: random.Random) -> str:
    body = digits(rng, 8)
    return body + dni.calc_check_digit(body)


def _nie(rng: random.Random) -> str:
    body = rng.choice("XYZ") + digits(rng, 7)
    return body + nie.calc_check_digit(body)


def _cf(rng: random.Random) -> str:
    body = (
        "".join(rng.choice(string.ascii_uppercase) for _ in range(6))
        + f"{rng.randint(50, 99):02d}"
        + rng.choice("ABCDEHLMPRST")
        + f"{rng.randint(1, 28) + rng.choice([0, 40]):02d}"
        + rng.choice(["H501", "F205", "A562", "L219"])
    )
    return body + codicefiscale.calc_check_digit(body)


def _pnr(rng: random.Random) -> str:
    body = f"{rng.randint(50, 99):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{digits(rng, 3)}"
    return f"{body[:6]}-{body[6:]}{luhn.calc_check_digit(body)}"


def national_id(rng: random.Random) -> Iterator[Sample]:
    written: list[tuple[str, Callable[[], str], str, tuple[str, ...]]] = [
        ("US.ssn", lambda: _ssn(rng), "SSN", ("en",)),
        ("GB.nino", lambda: _nino(rng), "National Insurance number", ("en",)),
        ("DE.idnr", lambda: " ".join([(v := _idnr(rng))[:2], v[2:5], v[5:8], v[8:]]), "Steuer-ID", ("de",)),
        ("FR.nir", lambda: _nir(rng), "numéro de sécurité sociale", ("fr",)),
        (
            "FR.nir",
            lambda: " ".join([(v := _nir(rng))[0], v[1:3], v[3:5], v[5:7], v[7:10], v[10:13], v[13:]]),
            "NIR",
            ("fr",),
        ),
        ("NL.bsn", lambda: f"{(v := _bsn(rng))[:4]}.{v[4:6]}.{v[6:]}", "BSN", ("nl",)),
        ("ES.dni", lambda: _dni(rng), "DNI", ("es",)),
        ("ES.nie", lambda: _nie(rng), "NIE", ("es",)),
        ("IT.codicefiscale", lambda: _cf(rng), "codice fiscale", ("en", "fr", "es")),
        ("SE.personnummer", lambda: _pnr(rng), "personnummer", ("en", "nl")),
    ]
    for i in range(30):
        kind, make, word, langs = written[i % len(written)]
        value = make()
        text, lang, fmt = fill(rng, word, value, langs=langs)
        yield sample(text, [(kind, value)], lang, fmt)
    # Bare digit runs with their context word: found.
    for kind, value, text, lang in [
        ("NL.bsn", b := _bsn(rng), f"Mijn BSN is {b}, graag aanpassen.", "nl"),
        ("NL.bsn", b2 := _bsn(rng), f'{{"burgerservicenummer": "{b2}"}}', "nl"),
        ("US.ssn", s := _ssn(rng).replace("-", ""), f"ssn={s} verified=true", "en"),
        ("DE.idnr", d := _idnr(rng), f"Steuerliche Identifikationsnummer (IdNr): {d}", "de"),
        ("SE.personnummer", p := _pnr(rng).replace("-", ""), f"Personnummer: {p}", "en"),
    ]:
        yield sample(text, [(kind, value)], lang, "prose" if "{" not in text else "json")
    # Near misses: the same shapes with a wrong check, and valid bare runs with no context word.
    near = [
        f"{(v := _dni(rng))[:-1]}{'A' if v[-1] != 'A' else 'B'}",
        f"{(v := _nie(rng))[:-1]}{'A' if v[-1] != 'A' else 'B'}",
        f"{(v := _nir(rng))[:-2]}{(int(v[-2:]) + 1) % 97:02d}",
        "000-12-3456",
        "666-12-3456",
        "123-00-4567",
        "QQ 12 34 56 C",
        "AB 12 34 56 E",
        f"{(v := _cf(rng))[:-1]}{'A' if v[-1] != 'A' else 'B'}",
        "991318-1234",
        "1234.56.789",
    ]
    yield from negatives(rng, ["reference", "Aktenzeichen", "référence", "expediente", "kenmerk"], near)
    for value in [_bsn(rng), _idnr(rng), _ssn(rng).replace("-", ""), _bsn(rng)]:
        text, lang, fmt = fill(
            rng, rng.choice(["order", "Rechnung", "commande", "pedido", "bestelling"]), value
        )
        yield sample(text, [], lang, fmt)


# ---- IP addresses ----


def ip_address(rng: random.Random) -> Iterator[Sample]:
    words = ["IP", "IP-Adresse", "adresse IP", "dirección IP", "IP-adres"]

    def make() -> tuple[str, str]:
        if rng.random() < 0.6:
            return "ipv4", ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return rng.choice(
            [
                ("ipv6", f"2001:db8::{rng.randint(1, 0xFFFF):x}"),
                ("ipv6", f"2001:db8:{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}::1"),
                ("ipv6", f"fe80::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"),
                ("ipv6", "::1"),
                ("ipv6", f"2001:0db8:0000:0000:0000:ff00:0042:{rng.randint(1, 0xFFFF):04x}"),
            ]
        )

    yield from positives(rng, 30, words, make)
    yield sample(
        '10.0.0.1 - - [29/Nov/2026:10:15:02 +0000] "GET / HTTP/1.1" 200 512 from [2001:db8::7]:443',
        [("ipv4", "10.0.0.1"), ("ipv6", "2001:db8::7")],
        "en",
        "log",
    )
    yield sample("allow 192.168.0.0/16;", [("ipv4", "192.168.0.0")], "en", "code")
    near = [
        "1.2.3.4.5",
        "256.12.1.1",
        "10.0.0",
        "1.3.6.1.4.1.311",
        "00:1A:2B:3C:4D:5E",
        "10:15:02",
        "std::vector<int>",
        "dead::beef",
        "v2.10.4",
        "3.14159",
        "a::b::c",
    ]
    yield from negatives(rng, ["version", "Version", "version", "versión", "versie"], near)


# ---- credentials ----


def _rand(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """``n`` characters of ``alphabet``, ending with one of its letters and one of its digits."""
    value = "".join(rng.choice(alphabet) for _ in range(n - 2))
    letters = [c for c in alphabet if c.isalpha()]
    return value + rng.choice(letters) + rng.choice(string.digits)


B64URL = string.ascii_letters + string.digits + "-_"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def credential(rng: random.Random) -> Iterator[Sample]:
    shapes: list[tuple[str, Callable[[], str]]] = [
        (
            "aws_access_key_id",
            lambda: rng.choice(["AKIA", "ASIA"]) + _rand(rng, 16, string.ascii_uppercase + string.digits),
        ),
        ("github_token", lambda: rng.choice(["ghp_", "gho_", "ghs_"]) + _rand(rng, 36)),
        ("github_token", lambda: "github_pat_" + _rand(rng, 22) + "_" + _rand(rng, 59)),
        ("slack_token", lambda: f"xoxb-{digits(rng, 12)}-{digits(rng, 12)}-{_rand(rng, 24)}"),
        ("stripe_key", lambda: rng.choice(["sk_live_", "rk_live_"]) + _rand(rng, 24)),
        ("openai_key", lambda: "sk-" + _rand(rng, 48)),
        ("openai_key", lambda: "sk-proj-" + _rand(rng, 120, B64URL)),
        ("anthropic_key", lambda: "sk-ant-api03-" + _rand(rng, 93, B64URL) + "AA"),
        ("google_api_key", lambda: "AIza" + _rand(rng, 35, B64URL)),
        ("signalbox_api_key", lambda: f"sbx_{_rand(rng, 32, '0123456789abcdef')}_{_rand(rng, 43, B64URL)}"),
        ("signalbox_admin_token", lambda: "sbxadm_" + _rand(rng, 43, B64URL)),
        (
            "jwt",
            lambda: (
                f"{_b64({'alg': 'RS256', 'typ': 'JWT', 'kid': _rand(rng, 8)})}.{_b64({'sub': _rand(rng, 10), 'iat': 1790000000})}.{_rand(rng, 86, B64URL)}"
            ),
        ),
    ]
    words = ["token", "API-Schlüssel", "clé API", "clave", "sleutel"]
    for i in range(30):
        kind, make = shapes[i % len(shapes)]
        value = make()
        text, lang, fmt = fill(rng, words[i % len(words)], value)
        yield sample(text, [(kind, value)], lang, fmt)
    body = "\n".join(_rand(rng, 64, string.ascii_letters + string.digits + "+/") for _ in range(4))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"
    yield sample(f"config:\n{pem}\nend", [("private_key", pem)], "en", "code")
    escaped = f"-----BEGIN PRIVATE KEY-----\\n{_rand(rng, 64, string.ascii_letters + '+/')}\\n-----END PRIVATE KEY-----"
    yield sample(f'{{"private_key": "{escaped}\\n"}}', [("private_key", escaped)], "en", "json")
    jwt = shapes[-1][1]()
    yield sample(
        f"curl -H 'Authorization: Bearer {jwt}' https://api.example.com", [("jwt", jwt)], "en", "code"
    )
    near = [
        "sk-learn-is-a-python-library",
        "AKIA1234",
        "ghp_short",
        "xoxb",
        "sk_test_" + _rand(rng, 24),
        "eyJub3QiOiJhIGhlYWRlciJ9.eyJzdWIiOiIxIn0.c2ln",
        "eyJhbGciOiJIUzI1NiJ9",
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "sbx_" + _rand(rng, 10),
        "AIzaShort",
        "task-" + _rand(rng, 30),
    ]
    yield from negatives(rng, ["id", "Kennung", "identifiant", "identificador", "id"], near)


# ---- regex and terms: tenant options ----

REGEX_OPTIONS = {"patterns": [r"PRJ-[0-9]{4}", r"\bTICKET#[0-9]{3,6}\b"], "kind": "internal_ref"}
TERMS_OPTIONS = {
    "terms": ["Project Falcon", "Bluebird", "Kernfusion-X", "Opération Azur", "Proyecto Cóndor"],
    "kind": "codename",
}


def regex(rng: random.Random) -> Iterator[Sample]:
    words = ["ref", "Vorgang", "dossier", "caso", "zaak"]
    for i in range(22):
        value = f"PRJ-{digits(rng, 4)}" if i % 2 else f"TICKET#{digits(rng, rng.randint(3, 6))}"
        text, lang, fmt = fill(rng, words[i % len(words)], value)
        yield sample(text, [("internal_ref", value)], lang, fmt, options=REGEX_OPTIONS)
    ci = {**REGEX_OPTIONS, "case_insensitive": True}
    yield sample(
        "see prj-0042 and ticket#1234",
        [("internal_ref", "prj-0042"), ("internal_ref", "ticket#1234")],
        "en",
        "prose",
        options=ci,
    )
    for value in [
        "PRJ-12",
        "PRJ 1234",
        "prj-1234",
        "TICKET#12",
        "XTICKET#1234",
        "TICKET#1234567",
        "project 1234",
        "PRJ-ABCD",
    ]:
        text, lang, fmt = fill(rng, rng.choice(words), value)
        yield sample(text, [], lang, fmt, options=REGEX_OPTIONS)


def terms(rng: random.Random) -> Iterator[Sample]:
    words = ["Projekt", "projet", "proyecto", "project", "codename"]
    names = TERMS_OPTIONS["terms"]
    for i in range(24):
        value = names[i % len(names)]
        if i % 3 == 1:
            value = value.upper()
        elif i % 3 == 2:
            value = value.lower()
        text, lang, fmt = fill(rng, words[i % len(words)], value)
        yield sample(text, [("codename", value)], lang, fmt, options=TERMS_OPTIONS)
    for value in [
        "Bluebirds",
        "Falcon",
        "Project Falconry",
        "Kernfusion",
        "Azur",
        "condor",
        "bluebird_v2",
        "Projekt Falke",
    ]:
        text, lang, fmt = fill(rng, rng.choice(words), value)
        yield sample(text, [], lang, fmt, options=TERMS_OPTIONS)


# Hand-written cases in awkward places, including some a detector is documented to miss
# (they keep its recall honest rather than perfect).
HARD: dict[str, list[Sample]] = {
    "email": [
        sample(
            '<a href="mailto:jane.doe@example.com?subject=Hi">mail</a>',
            [("address", "jane.doe@example.com")],
            "en",
            "code",
        ),
        sample("ESCRIBA A SOPORTE@EJEMPLO.ES HOY", [("address", "SOPORTE@EJEMPLO.ES")], "es", "prose"),
        sample(
            '"john smith"@example.com is valid per RFC 5322',
            [("address", '"john smith"@example.com')],
            "en",
            "prose",
        ),
    ],
    "phone": [
        sample("Ruf an: 030/1234567 (Zentrale)", [("DE", "030/1234567")], "de", "prose"),
        sample("tel:+14155550132", [("US", "+14155550132")], "en", "code"),
        sample(
            "Bureau 01 42 68 53 00 06 12 34 56 78",
            [("FR", "01 42 68 53 00"), ("FR", "06 12 34 56 78")],
            "fr",
            "prose",
        ),
    ],
    "payment_card": [
        sample("CC:4111111111111111;EXP:1229", [("visa", "4111111111111111")], "en", "log"),
        sample(
            "Karte 5555 5555 5555 4444, gültig bis 12/29",
            [("mastercard", "5555 5555 5555 4444")],
            "de",
            "prose",
        ),
    ],
    "iban": [
        sample(
            "IBAN:DE89370400440532013000,BIC:COBADEFFXXX", [("DE", "DE89370400440532013000")], "de", "csv"
        ),
        sample("mijn iban: nl91 abna 0417 1643 00", [("NL", "nl91 abna 0417 1643 00")], "nl", "prose"),
    ],
    "ip_address": [
        sample("curl http://192.168.1.1:8080/health", [("ipv4", "192.168.1.1")], "en", "code"),
        sample("listen [::1]:8443;", [("ipv6", "::1")], "en", "code"),
    ],
    "credential": [
        sample(
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\nAWS_REGION=eu-west-1",
            [("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE")],
            "en",
            "code",
        ),
    ],
    "national_id": [
        sample("SSN 536 90 4399", [("US.ssn", "536 90 4399")], "en", "prose"),
        sample(
            "BSN van de aanvrager staat hieronder vermeld in het formulier: 111222333",
            [("NL.bsn", "111222333")],
            "nl",
            "prose",
        ),
    ],
}

DETECTORS: dict[str, Callable[[random.Random], Iterator[Sample]]] = {
    "email": email,
    "phone": phone,
    "payment_card": payment_card,
    "iban": iban,
    "national_id": national_id,
    "ip_address": ip_address,
    "credential": credential,
    "regex": regex,
    "terms": terms,
}


def render(name: str) -> str:
    rng = random.Random(f"{SEED}:{name}")
    samples = [*DETECTORS[name](rng), *HARD.get(name, [])]
    return "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n" for s in samples)


def main() -> None:
    for name in DETECTORS:
        (HERE / f"{name}.jsonl").write_text(render(name), encoding="utf-8")


if __name__ == "__main__":
    main()

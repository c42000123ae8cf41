"""The PBX's customers: a seeded book of people who call in and are called, and how often each does.

Pure: the book is built from a seed; draws take the caller's ``random.Random``. A customer has a
caller ID as the trunk presents it (E.164) and the number as an employee dials it (the outside-line
``0``, then the national number, ``0048…`` or ``00<country>…``): both end in the same 9 digits,
which is how the call history matches a callback to the missed call.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

MOBILE, LANDLINE, FOREIGN = "mobile", "landline", "foreign"
LINES = (MOBILE, LANDLINE, FOREIGN)
LINE_SHARE = {MOBILE: 0.60, LANDLINE: 0.28, FOREIGN: 0.12}  # of the book

# Polish numbers are 9 digits: mobiles by operator prefix, landlines by area code.
MOBILE_PREFIXES = ("50", "51", "53", "57", "60", "66", "69", "72", "73", "78", "79", "88")
# Warsaw is home, so most landlines are there. Dialled as 0<area>… only where the capture's dialplan
# reads 0[1-4]… as national (0[5-8]… is its mobile pattern); other areas are dialled 0048<area>….
LANDLINE_AREAS = ("22", "22", "22", "22", "12", "32", "42", "61", "71", "58")

MALE_FIRST = ("Łukasz", "Paweł", "Jan", "Jerzy", "Wojciech", "Rafał", "Kazimierz", "Grzegorz", "Michał",
              "Tomasz", "Piotr", "Krzysztof", "Andrzej", "Mateusz", "Bartłomiej", "Zbigniew", "Jędrzej",
              "Przemysław", "Sławomir", "Mirosław", "Błażej", "Maciej")
FEMALE_FIRST = ("Zofia", "Maria", "Grażyna", "Bożena", "Dorota", "Halina", "Elżbieta", "Jadwiga", "Agnieszka",
                "Małgorzata", "Katarzyna", "Joanna", "Urszula", "Beata", "Jolanta", "Żaneta", "Iwona", "Łucja",
                "Ewelina", "Róża", "Jagoda", "Bogumiła")
# (masculine, feminine): -ski/-cki surnames agree with the first name, the others do not change
SURNAMES = (
    ("Żółć", "Żółć"), ("Wróbel", "Wróbel"), ("Ścisło", "Ścisło"), ("Nowak", "Nowak"), ("Żak", "Żak"),
    ("Pająk", "Pająk"), ("Bąk", "Bąk"), ("Dziób", "Dziób"), ("Kuźniar", "Kuźniar"), ("Gęsiak", "Gęsiak"),
    ("Ślusarczyk", "Ślusarczyk"), ("Świątek", "Świątek"), ("Woźniak", "Woźniak"), ("Mróz", "Mróz"),
    ("Łuczak", "Łuczak"), ("Kaźmierczak", "Kaźmierczak"), ("Stępień", "Stępień"), ("Zając", "Zając"),
    ("Król", "Król"), ("Kołodziej", "Kołodziej"), ("Włodarczyk", "Włodarczyk"), ("Krawczyk", "Krawczyk"),
    ("Wiśniewski", "Wiśniewska"), ("Łęcki", "Łęcka"), ("Kęsicki", "Kęsicka"), ("Zieliński", "Zielińska"),
    ("Dąbrowski", "Dąbrowska"), ("Kamiński", "Kamińska"), ("Szymański", "Szymańska"),
    ("Kozłowski", "Kozłowska"), ("Jabłoński", "Jabłońska"), ("Wróblewski", "Wróblewska"),
    ("Sokołowski", "Sokołowska"), ("Żukowski", "Żukowska"), ("Śliwiński", "Śliwińska"),
    ("Głowacki", "Głowacka"), ("Czarnecki", "Czarnecka"), ("Grabowski", "Grabowska"),
)
FOREIGN_NAMES = {
    "44": ("John Smith", "Emma Clarke", "Oliver Brown", "Charlotte Davies", "James Wilson", "Sophie Taylor",
           "Harry O'Neill", "Amelia Hughes"),
    "49": ("Jürgen Müller", "Anke Schröder", "Björn Weiß", "Käthe Schäfer", "Lukas Fischer", "Jörg Hoffmann",
           "Sören Krüger", "Lena Groß"),
}


@dataclass(frozen=True, slots=True)
class Customer:
    """Someone the office talks to on the phone."""

    number: str  # E.164, as the trunk presents the caller ID
    name: str
    line: str  # mobile | landline | foreign
    dialled: str  # as an employee dials it

    @property
    def party(self) -> tuple[str, str]:
        return self.number, self.name


def _digits(rng: random.Random, k: int) -> str:
    return "".join(rng.choices("0123456789", k=k))


def _person(rng: random.Random) -> str:
    female = rng.random() < 0.5
    first = rng.choice(FEMALE_FIRST if female else MALE_FIRST)
    surname = rng.choice(SURNAMES)[1 if female else 0]
    return f"{first} {surname}"


def new_customer(rng: random.Random, line: str) -> Customer:
    """A random customer on a ``line`` (mobile, landline or foreign)."""
    if line == MOBILE:
        national = rng.choice(MOBILE_PREFIXES) + _digits(rng, 7)
        return Customer("+48" + national, _person(rng), MOBILE, "0" + national)
    if line == LANDLINE:
        area = rng.choice(LANDLINE_AREAS)
        national = area + _digits(rng, 7)
        short = area[0] in "1234" and rng.random() < 0.7
        return Customer("+48" + national, _person(rng), LANDLINE, ("0" if short else "0048") + national)
    if line == FOREIGN:
        cc = rng.choice(("44", "44", "49"))
        if cc == "44":  # London or a UK mobile: 10 digits
            rest = rng.choice(("20" + _digits(rng, 8), "7" + rng.choice("45789") + _digits(rng, 8)))
        else:  # Berlin or Munich: 9 digits
            rest = rng.choice(("30", "89")) + _digits(rng, 7)
        return Customer(f"+{cc}{rest}", rng.choice(FOREIGN_NAMES[cc]), FOREIGN, f"00{cc}{rest}")
    raise ValueError(f"unknown line {line!r}")


class CustomerBook:
    """The regular customers, most popular first: rank ``k`` (0-based) is drawn with weight
    ``1 / (k + 1) ** skew`` (Zipf-like; 0: all alike), so a few call and are called again and again."""

    def __init__(self, customers: Sequence[Customer], skew: float = 0.5) -> None:
        if skew < 0:
            raise ValueError("customer skew must be >= 0")
        self.customers = tuple(customers)
        self.skew = skew
        weights = [1.0 / (k + 1) ** skew for k in range(len(self.customers))]
        self._cum = list(itertools.accumulate(weights))
        self._by_line: dict[str, tuple[list[Customer], list[float]]] = {}
        for line in LINES:
            members = [(c, w) for c, w in zip(self.customers, weights) if c.line == line]
            self._by_line[line] = ([c for c, _ in members], list(itertools.accumulate(w for _, w in members)))
        self._known = {c.number[-9:] for c in self.customers}

    @classmethod
    def generate(cls, size: int, *, seed: int = 0, skew: float = 0.5) -> CustomerBook:
        """``size`` customers with distinct numbers (distinct in their last 9 digits too)."""
        if size < 0:
            raise ValueError("the customer book size must be >= 0")
        rng = random.Random(f"customers:{seed}")
        lines, shares = list(LINE_SHARE), list(LINE_SHARE.values())
        out: list[Customer] = []
        seen: set[str] = set()
        names: set[str] = set()
        clashes = 0
        while len(out) < size:
            c = new_customer(rng, rng.choices(lines, shares)[0])
            if c.number[-9:] in seen:
                continue
            # one entry per person while the name lists allow (foreign names are few: they may repeat)
            if c.line != FOREIGN and c.name in names and clashes < 50:
                clashes += 1
                continue
            clashes = 0
            seen.add(c.number[-9:])
            names.add(c.name)
            out.append(c)
        return cls(out, skew)

    def __len__(self) -> int:
        return len(self.customers)

    def __iter__(self) -> Iterator[Customer]:
        return iter(self.customers)

    def pick(self, rng: random.Random, line: str | None = None) -> Customer:
        """A customer by popularity (only those on ``line`` if given); a stranger if there is none."""
        members, cum = (self.customers, self._cum) if line is None else self._by_line[line]
        if not members:
            return self.stranger(rng, line)
        x = rng.random() * cum[-1]
        return members[min(bisect.bisect_right(cum, x), len(members) - 1)]

    def stranger(self, rng: random.Random, line: str | None = None) -> Customer:
        """A one-off number that is not in the book."""
        while True:
            c = new_customer(rng, line or rng.choices((MOBILE, LANDLINE, FOREIGN), (0.7, 0.18, 0.12))[0])
            if c.number[-9:] not in self._known:
                return c


__all__ = ["FOREIGN", "LANDLINE", "LINES", "MOBILE", "Customer", "CustomerBook", "new_customer"]

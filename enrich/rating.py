"""The tariff stage: price-list files -> Rater, and the unusual-traffic watch over rated calls.

The rating itself is pure (enrich/tariffs.py, enrich/spend.py); this module reads the price-list
files and counts metrics. Loading the list into ClickHouse and re-rating stored calls are the
store's (store/tariffs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from contracts import metrics
from contracts.config import Settings
from contracts.errors import ConfigError, TariffError
from contracts.profile import PbxProfile
from contracts.records import CallRecord
from contracts.tariffs import TariffAlert
from enrich.spend import SpendRule, SpendWatch
from enrich.tariffs import Rater, Tariff, file_kind, parse_tariff

log = structlog.get_logger("enrich.rating")

SAMPLE = "sample:tariffs_pl"
FILES = ("rates.csv", "customers.csv", "holidays.csv")


def zone_of(settings: Settings) -> ZoneInfo:
    try:
        return ZoneInfo(settings.tariff_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"tariff_timezone: unknown time zone {settings.tariff_timezone!r}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise TariffError([f"{path}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise TariffError([f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8"]) from None


def read_files(path: str) -> tuple[dict[str, str], tuple[str, str, str]]:
    """The texts of a price list (rates, customers, holidays) and their names for messages.

    ``path``: "" = the sample shipped in enrich/data/tariffs_pl; a directory with rates.csv and
    optionally customers.csv and holidays.csv; or a rates CSV (its siblings are read if present).
    """
    if not path:
        base = resources.files("enrich").joinpath("data", "tariffs_pl")
        texts = {n: base.joinpath(n).read_text(encoding="utf-8") for n in FILES}
        return texts, tuple(f"{SAMPLE}/{n}" for n in FILES)  # type: ignore[return-value]
    p = Path(path)
    rates = p / "rates.csv" if p.is_dir() else p
    if not rates.exists():
        raise TariffError([f"{rates}: no such file"])
    names = (rates, rates.with_name("customers.csv"), rates.with_name("holidays.csv"))
    texts = {FILES[0]: _read(rates)}
    for key, f in zip(FILES[1:], names[1:], strict=True):
        texts[key] = _read(f) if f.exists() else ""
    return texts, tuple(str(n) for n in names)  # type: ignore[return-value]


def load_tariff(settings: Settings, path: str | None = None) -> Tariff:
    """The price list of the settings (``tariff_path``), validated."""
    texts, sources = read_files(settings.tariff_path if path is None else path)
    return parse_tariff(texts["rates.csv"], customers=texts["customers.csv"],
                        holidays=texts["holidays.csv"], zone=zone_of(settings), sources=sources)


def check_file(path: Path, settings: Settings) -> str:
    """Validate one file of a price list (kind read from its header) or a whole price list;
    returns a summary line, raises TariffError listing every problem."""
    if path.is_dir() or file_kind(_read(path)) == "rates":
        tariff = load_tariff(settings, str(path))
        plans = sorted({r.plan for r in tariff.rates})
        return (f"ok: {len(tariff.rates)} rates in {len(plans)} plans ({', '.join(plans)}; default "
                f"{tariff.default_plan}), {len(tariff.plans)} customers, {len(tariff.holidays)} "
                f"holidays; version {tariff.version}")
    text = _read(path)
    kind = file_kind(text)
    zone = zone_of(settings)
    if kind == "customers":
        parse_tariff("", customers=text, zone=zone, sources=("", str(path), ""))
    elif kind == "holidays":
        parse_tariff("", holidays=text, zone=zone, sources=("", "", str(path)))
    else:
        raise TariffError([(f"{path}:1: header: not a rates, customers or holidays file "
                            "(rates need prefix and sell_per_min; customers: customer,plan; "
                            "holidays: date,name)")])
    return f"ok: {kind} file"


def spend_rule(settings: Settings) -> SpendRule:
    try:
        max_cost = Decimal(settings.tariff_alert_cost_per_hour or "0")
    except InvalidOperation:
        raise ConfigError(f"tariff_alert_cost_per_hour: not a decimal number: "
                          f"{settings.tariff_alert_cost_per_hour!r}") from None
    if settings.tariff_alert_scope not in ("extension", "customer"):
        raise ConfigError(f"tariff_alert_scope: extension or customer, got {settings.tariff_alert_scope!r}")
    cats = frozenset(c.strip() for c in settings.tariff_alert_categories.split(",") if c.strip())
    return SpendRule(categories=cats, scope=settings.tariff_alert_scope,  # type: ignore[arg-type]
                     max_cost=max_cost, max_calls=settings.tariff_alert_calls_per_hour)


# SpendWatch.watched's arguments, as the calls table's columns
_WATCHED_FIELDS = ["pbx_id", "caller", "start", "cost", "currency", "call_id"]


class RatingStage:
    """What the pipeline needs for tariffs: the pure rating function for the CallBuilder, and the
    unusual-traffic watch over the rated records the sink sees (alerts go to ``tariff_alerts``)."""

    def __init__(self, tariff: Tariff, profile: PbxProfile, rule: SpendRule) -> None:
        self.tariff = tariff
        self.rater = Rater(tariff, profile)
        self.watch = SpendWatch(rule)

    @property
    def rate(self) -> Callable[[CallRecord], CallRecord]:
        return self.rater.rate_call

    def observe(self, record: CallRecord) -> list[TariffAlert]:
        if record.rating:
            metrics.TARIFF_RATED_CALLS.labels(record.pbx_id, record.rating).inc()
        return self._raised(self.watch.observe(record))

    def observe_table(self, calls: Any) -> list[TariffAlert]:
        """:meth:`observe` over a batch of stored call rows as Arrow (kafkaio.records_topic):
        the outcomes counted in one pass; only the calls the spend rule watches become records."""
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.compute as pc  # type: ignore[import-untyped]

        # counted over the two columns alone (filtering the table would copy every column)
        outcomes = pa.table({"pbx_id": calls["pbx_id"], "rating": calls["rating"]})
        for row in outcomes.group_by(["pbx_id", "rating"]).aggregate([([], "count_all")]).to_pylist():
            if row["rating"]:
                metrics.TARIFF_RATED_CALLS.labels(row["pbx_id"], row["rating"]).inc(row["count_all"])
        rule = self.watch.rule
        if not rule.enabled:
            return []
        # the watched calls are a few percent of the batch: only their rows, only the fields the
        # watch reads (a whole row back as Python objects costs ~25 µs: most of a batch's insert)
        watched = calls.select(_WATCHED_FIELDS).take(pc.indices_nonzero(pc.and_(
            pc.equal(calls["direction"], "outbound"),
            pc.is_in(calls["destination_category"], value_set=pa.array(sorted(rule.categories))))))
        watch = self.watch.watched
        return [a for row in zip(*(c.to_pylist() for c in watched.columns), strict=True)
                for a in self._raised(watch(*row))]

    def _raised(self, alerts: list[TariffAlert]) -> list[TariffAlert]:
        for a in alerts:
            metrics.TARIFF_ALERTS.labels(a.pbx_id, a.scope, a.kind).inc()
            log.warning("traffic_alert_raised", pbx=a.pbx_id, scope=a.scope, key=a.key,
                        kind=a.kind, calls=a.calls, cost=str(a.cost), threshold=str(a.threshold))
        return alerts


def rating_stage(settings: Settings, profile: PbxProfile) -> RatingStage | None:
    """The tariff stage of the settings (None when ``tariff_path`` is "off")."""
    if settings.tariff_path.strip().lower() == "off":
        return None
    return RatingStage(load_tariff(settings), profile, spend_rule(settings))

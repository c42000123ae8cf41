"""What enrich emits and store writes: one record per call, one per ringing leg, quarantined input.

Times are epoch seconds (UTC) rounded to the millisecond; time zones are a presentation concern.
Field names follow ``tests/fixtures/asterisk/expected_calls.json`` where it names them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

Direction = Literal["inbound", "outbound", "internal"]
Status = Literal["answered", "missed", "no_answer", "busy", "failed", "congestion"]
HangupBy = Literal["caller", "callee", ""]
BuiltFrom = Literal["ami", "cdr"]

EXTERNAL = "external"
"""``first/last_answered_by`` of an outbound call answered by the far end."""

MONEY_PRECISION, MONEY_SCALE = 18, 4
"""Digits of every money field (ClickHouse ``Decimal(18, 4)``; the records topic's Arrow
``decimal128(18, 4)``)."""


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One call, however many channels, legs and Asterisk CDR rows it had."""

    call_id: str  # "<pbx_id>:<linkedid>", deterministic
    pbx_id: str
    linkedid: str
    direction: Direction
    caller: str
    caller_name: str
    called: str
    answered: bool
    first_answered_by: str | None
    last_answered_by: str | None
    status: Status
    start: float
    answer: float | None
    end: float
    duration_s: float
    wait_s: float | None
    talk_s: float
    hangup_cause: int
    hangup_cause_text: str
    hangup_by: HangupBy
    extensions_rang: tuple[str, ...]
    queue: str
    transferred: bool
    forwarded: bool
    recordings: tuple[str, ...]
    disposition: str  # Asterisk's last CDR disposition of the PBX leg ("" when no Cdr event)
    incomplete: bool  # closed by timeout or end of input before every channel hung up
    version: int  # grows with every event folded in; the deduplicating table keeps the highest
    # reconcile: what the record was built from: "ami" (the call's events, by enrich) or "cdr"
    # (rebuilt from the PBX's own CDR by `pbxpipe reconcile --write-missing`, the events lost)
    built_from: BuiltFrom = "ami"
    # tariffs: the cost of an outbound call (enrich.tariffs.Rating, same fields in the same order).
    # Defaults = not rated, so payloads written before these fields existed still decode.
    # Money is decimal.Decimal (exact; ClickHouse Decimal(18, 4)), never a float.
    cost: Decimal = Decimal(0)  # sell price: what the customer is charged, in `currency`
    cost_buy: Decimal = Decimal(0)  # buy price: what the carrier charges the operator
    margin: Decimal = Decimal(0)  # cost - cost_buy
    currency: str = ""
    billed_s: int = 0  # seconds charged after free seconds and billing increments
    rating: str = ""  # "" not rated | rated | unanswered | no_match | no_band | bad_number
    called_e164: str = ""  # the dialled number as E.164 ("+48601234567")
    tariff_plan: str = ""
    tariff_version: str = ""  # content hash of the price list that rated the call
    tariff_prefix: str = ""  # the longest prefix that matched
    destination: str = ""
    destination_category: str = ""  # national | mobile | international | premium | emergency
    tariff_band: str = ""  # the time band (peak, offpeak, …) at the call's start
    rate: Decimal = Decimal(0)  # sell price per minute applied
    increments: str = ""  # billing increments applied, "first/next" seconds ("60/60", "30/6")


class CallLeg(msgspec.Struct, frozen=True, kw_only=True):
    """One ringing attempt of an extension (or of the trunk, for outbound calls)."""

    leg_id: str  # "<pbx_id>:<uniqueid of the dialled channel>"
    call_id: str
    pbx_id: str
    linkedid: str
    kind: Literal["device", "trunk"]
    extension: str  # the extension that rang, or "external" for a trunk leg
    channel: str
    start: float
    answer: float | None
    end: float
    ring_s: float
    talk_s: float
    outcome: str  # Asterisk's DialStatus: ANSWER, NOANSWER, CANCEL, BUSY, CHANUNAVAIL, CONGESTION
    answered: bool
    version: int


QuarantineReason = Literal[
    "malformed_frame",
    "invalid_utf8",
    "oversized_frame",
    "missing_linkedid",
    "undecodable",
]


class Quarantined(msgspec.Struct, frozen=True, kw_only=True):
    """Input that could not be used, kept with the reason so nothing is lost silently."""

    pbx_id: str
    received_at: float
    reason: QuarantineReason
    detail: str
    raw: str  # the frame as text; undecodable bytes are backslash-escaped


Output = CallRecord | CallLeg | Quarantined
"""What the enrich core emits: each becomes a row of its own table in the store."""


# One Struct per message, msgpack: quarantined frames on the raw topic; on the records topic what
# enrich sent before it sent Arrow batches (kafkaio.records_topic), still read. The message's kind
# header (contracts.kafka) says which.
record_encoder = msgspec.msgpack.Encoder()
call_record_decoder = msgspec.msgpack.Decoder(CallRecord)
call_leg_decoder = msgspec.msgpack.Decoder(CallLeg)
quarantined_decoder = msgspec.msgpack.Decoder(Quarantined)

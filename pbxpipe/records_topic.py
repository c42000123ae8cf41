"""The records topic's wire format: what enrich emits for each output and how store reads it
back. One place for both sides, so they cannot drift."""

from __future__ import annotations

from typing import Any

from contracts import kafka as k
from contracts.records import (
    CallLeg,
    CallRecord,
    call_leg_decoder,
    call_record_decoder,
    quarantined_decoder,
    record_encoder,
)
from enrich.calls import Output
from pbxpipe.kafka import Message


def message(o: Output) -> Message:
    if isinstance(o, CallRecord):
        return (k.call_key(o.pbx_id, o.linkedid), record_encoder.encode(o), k.KIND_CALL, o.end)
    if isinstance(o, CallLeg):
        return (k.call_key(o.pbx_id, o.linkedid), record_encoder.encode(o), k.KIND_LEG, o.end)
    return (k.call_key(o.pbx_id, ""), record_encoder.encode(o), k.KIND_QUARANTINED, o.received_at)




DECODERS: dict[bytes, tuple[str, Any]] = {
    k.KIND_CALL: ("calls", call_record_decoder),
    k.KIND_LEG: ("call_legs", call_leg_decoder),
    k.KIND_QUARANTINED: ("quarantine", quarantined_decoder),
}
"""kind header -> (table, decoder) of a records-topic message."""

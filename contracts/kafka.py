"""What travels on the pipeline's Kafka topics: header names, message kinds, keys. One place.

Topic names are settings (``kafka_*_topic`` in contracts.config). Every message carries a
``kind`` header naming its payload type; values are msgpack (contracts.envelope for the raw
topic, contracts.records for the records topic). Dead letters keep the original key and value
and add the reason and origin headers.
"""

from __future__ import annotations

HEADER_KIND = "pbxpipe-kind"
HEADER_DLQ_REASON = "pbxpipe-dlq-reason"
HEADER_DLQ_DETAIL = "pbxpipe-dlq-detail"
HEADER_DLQ_TOPIC = "pbxpipe-dlq-topic"
HEADER_DLQ_PARTITION = "pbxpipe-dlq-partition"
HEADER_DLQ_OFFSET = "pbxpipe-dlq-offset"
HEADER_DLQ_STAGE = "pbxpipe-dlq-stage"

# message kinds (the HEADER_KIND value)
KIND_AMI = b"ami"  # raw topic: contracts.envelope.AmiFrames (one call's frames, as received)
KIND_ENVELOPE = b"envelope"  # raw topic, before KIND_AMI: one contracts.envelope.Envelope (still read)
KIND_QUARANTINED = b"quarantined"  # raw and records topics: contracts.records.Quarantined
KIND_CALL = b"call"  # records topic: contracts.records.CallRecord
KIND_LEG = b"leg"  # records topic: contracts.records.CallLeg
# records topic, what enrich emits: a batch of rows as an Arrow IPC stream (kafkaio.records_topic)
KIND_CALL_BATCH = b"call-batch"
KIND_LEG_BATCH = b"leg-batch"
KIND_QUARANTINED_BATCH = b"quarantined-batch"

# dead-letter reasons (bounded: also a metric label)
DLQ_UNDECODABLE = "undecodable"  # not what its kind header says, or failing its schema
DLQ_UNKNOWN_KIND = "unknown_kind"  # no or an unknown kind header

# (key, value, kind, timestamp in epoch seconds): one message to produce, or in the spool
Message = tuple[bytes, bytes, bytes, float]

STAGE_INGEST = "ingest"
STAGE_ENRICH = "enrich"
STAGE_STORE = "store"


def call_key(pbx_id: str, linkedid: str) -> bytes:
    """The partitioning key of a call's messages: every event of a call in one partition."""
    return f"{pbx_id}:{linkedid}".encode()


def split_key(key: bytes | None) -> tuple[str, str]:
    """``(pbx_id, linkedid)`` of a :func:`call_key` ("" for a missing part)."""
    if not key:
        return "", ""
    pbx, _, linkedid = key.decode("utf-8", "replace").partition(":")
    return pbx, linkedid

"""Settings, in one place: each field is read from ``PBXPIPE_<FIELD>`` and matches a CLI flag."""

from __future__ import annotations

import os
from typing import Any

import msgspec

from contracts.errors import ConfigError
from contracts.hours import parse_business_hours

ENV_PREFIX = "PBXPIPE_"
SECRET_FIELDS = frozenset({"ami_secret", "clickhouse_dsn", "s3_secret_key"})


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    pbx_id: str = "pbx1"
    pbx_profile: str = ""  # TOML file; empty = the built-in PJSIP profile
    pbx_timezone: str = "UTC"  # the PBX's local time zone (tz database name, e.g. Europe/Warsaw)
    business_hours: str = "Mon-Fri 07:00-17:00"  # the PBX's, in its time zone: when silence alerts (contracts/hours.py)
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "pbxpipe"
    ami_secret: str = ""
    ami_ping_interval_s: float = 10.0
    ami_ping_timeout_s: float = 5.0
    ami_reconnect_max_s: float = 30.0
    ami_max_retries: int = -1  # -1: retry forever; 0: exit non-zero on the first failure
    max_frame_bytes: int = 1 << 20
    clickhouse_dsn: str = "chdb:///./data/clickhouse"
    batch_rows: int = 10_000  # rows per ClickHouse insert: a batch closes at this many (a larger fetch is split)
    batch_age_s: float = 1.0  # ...or when its first row has waited this long
    queue_size: int = 10_000
    call_grace_s: float = 2.0  # after the last Hangup, wait this long for late events (Cdr…)
    call_timeout_s: float = 4 * 3600.0  # close a call whose Hangup never comes, flagged incomplete
    log_format: str = "auto"  # auto | json | console
    metrics_port: int = 0  # 0: no HTTP endpoint

    # recordings and retention
    object_store: str = "dir:///./data/recordings"  # dir:///<dir> (embedded) | http(s)://host:port/<bucket>
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    s3_sse: bool = False  # ask for server-side encryption (SSE-S3) of every object
    recordings_spool: str = ""  # the PBX's recording directory, mounted here; empty: no upload
    recordings_pbx_dir: str = "/var/spool/asterisk/monitor"  # the same directory as the PBX names it
    recordings_userfield_patterns: str = r"^rec:(?P<file>\S+)$"  # whitespace-separated regexes
    recordings_stable_s: float = 5.0  # a file is complete once its size held still this long
    recordings_missing_s: float = 60.0  # give up (counted, logged) on a file absent this long
    recordings_concurrency: int = 4  # uploads at once
    recordings_retries: int = 5  # attempts per upload, capped jittered backoff between them
    recordings_part_size: int = 16 << 20  # multipart part size for large files (>= 5 MiB)
    recordings_delete_source: bool = False  # delete the PBX's file after a verified upload
    recordings_url_ttl_s: int = 900  # lifetime of `pbxpipe recordings url` links
    recordings_sync_interval_s: float = 10.0  # `pbxpipe recordings watch` (and `run`): seconds between passes
    recordings_sync_lookback_days: float = 7.0  # a pass looks at calls this recent: a file that never appears is retried until then
    recordings_sync_max_files: int = 1000  # uploads per pass at most; the next pass follows at once
    recordings_sync_pbx_ids: str = ""  # comma-separated PBX ids whose recordings this spool holds; empty: every PBX
    retention_call_days: int = 365  # default for customers without their own policy
    retention_recording_days: int = 365  # never longer than the call's (clamped)
    # kafka: the stages as separate processes (pbxpipe ingest | enrich | store); see kafkaio/client.py
    kafka_bootstrap: str = ""  # host:port[,host:port]; empty: `pbxpipe run` keeps every stage in-process
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""  # empty: the system's CAs
    kafka_ssl_certfile: str = ""  # client certificate (mutual TLS)
    kafka_ssl_keyfile: str = ""
    kafka_raw_topic: str = "pbxpipe.ami-events"  # ingest -> enrich: one call's AMI frames as received per message, key pbx_id + Linkedid
    kafka_records_topic: str = "pbxpipe.call-records"  # enrich -> store: CallRecord / CallLeg / Quarantined
    kafka_dead_letter_topic: str = "pbxpipe.dead-letter"  # poison messages, reason and origin in headers
    kafka_partitions: int = 6  # for topics this pipeline creates
    kafka_replication_factor: int = 1  # for topics this pipeline creates (3 on a real cluster)
    kafka_create_topics: bool = True  # create missing topics; false: fail naming what to create
    kafka_retention_days: float = 7.0  # raw and records topics (retention.ms of topics it creates): the replay window; they hold phone numbers
    kafka_dead_letter_retention_days: float = 30.0  # the dead-letter topic: long enough to inspect and replay poison messages
    kafka_enrich_group: str = "pbxpipe-enrich"
    kafka_store_group: str = "pbxpipe-store"
    kafka_idempotence: bool = True  # idempotent producer (brokers without it: false; then batches are compressed in threads, off the event loop)
    kafka_compression: str = "zstd"  # zstd | lz4 | gzip | none (aiokafka's lz4 is level 9: ~5x slower)
    kafka_linger_ms: int = 5
    kafka_max_batch_bytes: int = 1 << 20  # per partition and request
    kafka_request_timeout_s: float = 5.0  # an unacknowledged send fails after this: ingest spools
    kafka_poll_records: int = 20_000  # per consumer fetch
    kafka_fetch_max_wait_ms: int = 500  # a fetch waits this long at most; a broker that holds it to the end (Tansu) adds it to every hop
    kafka_spool_dir: str = "./data/spool"  # ingest's local append-only spool while Kafka is down
    kafka_spool_max_bytes: int = 1 << 30  # past this the spool drops new frames (counted)
    kafka_spool_fsync_s: float = 1.0  # spooled frames are fdatasync'd (survive a power loss) at most this long after; 0: at once
    kafka_poison_ratio: float = 0.5  # a consumer stops when more than this share of a batch is poison
    kafka_backoff_max_s: float = 10.0  # cap of the store's retry backoff while ClickHouse is down

    # tariffs: cost of outbound calls (enrich/tariffs.py); columns in enrich/data/tariffs_pl/README.md
    tariff_path: str = ""  # rates CSV, or a directory with rates.csv (+ customers.csv, holidays.csv); empty: the sample PLN list; "off": no rating
    tariff_timezone: str = "Europe/Warsaw"  # local time of time bands, validity dates and holidays
    tariff_alert_categories: str = "premium,international"  # unusual traffic: destinations watched
    tariff_alert_scope: str = "extension"  # extension | customer: whose hourly traffic is summed
    tariff_alert_cost_per_hour: str = "50"  # spend per scope and clock hour above this alerts (decimal; 0: off)
    tariff_alert_calls_per_hour: int = 20  # watched calls per scope and clock hour above this alert (0: off)

    # api: the panel's HTTP service (pbxpipe api; api/)
    api_host: str = "127.0.0.1"  # address the panel and its JSON API listen on (0.0.0.0 in a container)
    api_port: int = 8080  # its port: the panel at /, liveness /healthz, readiness /readyz
    api_signing_secret: str = ""  # signs panel sessions and recording links; empty: a random one per process (links and sessions then die with it)
    api_key_cache_s: float = 5.0  # a revoked or expired key is refused at most this long after
    api_recording_link_s: int = 300  # lifetime of a recording's link (at most 300)
    api_session_s: int = 8 * 3600  # the panel's sign-in lasts this long
    api_query_threads: int = 4  # ClickHouse queries at once (each on its own connection)
    api_jwt_issuer: str = ""  # empty: JWTs are not accepted, API keys only
    api_jwt_jwks_url: str = ""  # the identity provider's signing keys (JWKS)
    api_jwt_audience: str = ""  # the aud a token must carry (empty: not checked)
    api_jwt_algorithms: str = "RS256,ES256,EdDSA"  # comma-separated; never HS* or none
    api_jwt_jwks_cache_s: int = 300  # signing keys are fetched again after this long
    api_jwt_tenant_claim: str = "pbx_id"  # the JWT claim naming the tenant (PBX id)
    api_jwt_role_claim: str = "role"  # the claim naming the role (admin, supervisor, user, billing)
    api_jwt_extensions_claim: str = "extensions"  # a user's extensions (a list, or comma-separated)
    api_jwt_group_claim: str = "group"  # a supervisor's group

    # reconcile: the stored calls against the PBX's own CDR and CEL (reconcile/); tamper evidence
    reconcile_tolerance_s: float = 1.0  # a stored time may differ this much from the CDR's or CEL's (a time written to the second counts as the whole second)
    reconcile_min_completeness: float = 0.999  # share of the PBX's calls stored exactly below which PbxCallsIncomplete fires
    reconcile_cdr_fields: str = ""  # the `fields =` line of the cdr_custom files read; empty: cdr_csv's Master.csv
    reconcile_cel_fields: str = ""  # the `fields =` line of the cel_custom files read; empty: the columns of the sample [mappings] Master.csv
    export_signing_key: str = ""  # Ed25519 private key (PEM file, `pbxpipe keys create`) that signs every export's manifest; empty: exports are not signed
    recordings_object_lock: str = ""  # governance: each recording is locked (S3 Object Lock, governance mode) until its retention ends; erasure bypasses the lock; empty: not locked

SECRET_FIELDS = SECRET_FIELDS | {"kafka_sasl_password"}  # kafka
SECRET_FIELDS = SECRET_FIELDS | {"api_signing_secret"}  # api
KAFKA_COMPRESSIONS = ("zstd", "lz4", "gzip", "snappy", "none", "")  # "": none


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then ``PBXPIPE_*`` environment variables, then explicit overrides (CLI flags)."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in Settings.__struct_fields__:
        if env_name(field) in env:
            raw[field] = env[env_name(field)]
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid setting: {e} (environment variables {ENV_PREFIX}*)") from None
    if settings.kafka_compression not in KAFKA_COMPRESSIONS:
        # checked here, before a stage builds anything: aiokafka refuses it only in the producer's
        # constructor, when the stage's spool and consumer exist already
        raise ConfigError(f"invalid setting: kafka_compression {settings.kafka_compression!r} is "
                          f"not one of {', '.join(KAFKA_COMPRESSIONS[:-1])} "
                          f"({env_name('kafka_compression')})")
    for field in ("kafka_retention_days", "kafka_dead_letter_retention_days"):
        # the topics hold phone numbers: they must not outlive the call records they feed
        days = getattr(settings, field)
        if not 0 < days <= settings.retention_call_days:
            raise ConfigError(f"invalid setting: {field} {days:g} is not within (0, "
                              f"retention_call_days {settings.retention_call_days}] "
                              f"({env_name(field)}, {env_name('retention_call_days')})")
    try:
        parse_business_hours(settings.business_hours, settings.pbx_timezone)
    except ConfigError as e:
        raise ConfigError(f"invalid setting: {e} ({env_name('business_hours')}, "
                          f"{env_name('pbx_timezone')})") from None
    return settings


def redacted(settings: Settings) -> dict[str, Any]:
    """Settings safe to log: secrets and DSN passwords masked."""
    out = msgspec.structs.asdict(settings)
    for f in SECRET_FIELDS:
        if f == "clickhouse_dsn":
            out[f] = redact_dsn(out[f])
        elif out[f]:
            out[f] = "***"
    return out


def redact_dsn(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))

"""The project's exceptions, one small tree.

    PbxPipeError
    ├── ConfigError          bad settings or profile: fix and restart
    │   └── TariffError      a price list (CSV) that does not validate: says file, line, column, why
    ├── InputError           bad input from the PBX: counted, logged once, quarantined
    │   └── FrameError       a frame that cannot be read (no "Key: value", bad UTF-8, too big)
    ├── AmiError             talking to Asterisk
    │   ├── AmiConnectError  unreachable / connection lost
    │   └── AmiAuthError     login refused: retrying will not help
    ├── StoreError           the sink failed
    │   ├── StoreUnavailable the sink is down: retry with backoff
    │   └── ObjectStoreError the object store (recordings, exports) failed after retries
    ├── BrokerError          talking to Kafka
    │   ├── TopicsMissing    topics absent and not to be created: says which to create
    │   └── PoisonBatch      most of a fetched batch is undecodable: the consumer stops
    └── RetentionError       a retention, hold, export or erasure request cannot be done as asked
"""


class PbxPipeError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PbxPipeError):
    pass


class InputError(PbxPipeError):
    pass


class FrameError(InputError):
    def __init__(self, reason: str, detail: str, raw: bytes) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.raw = raw


class AmiError(PbxPipeError):
    pass


class AmiConnectError(AmiError):
    pass


class AmiAuthError(AmiError):
    pass


class StoreError(PbxPipeError):
    pass


class StoreUnavailable(StoreError):
    pass


# kafka
class BrokerError(PbxPipeError):
    pass


class TopicsMissing(BrokerError):
    pass


class PoisonBatch(BrokerError):
    pass


# recordings and retention
class ObjectStoreError(StoreError):
    pass


class RetentionError(PbxPipeError):
    pass


# tariffs
class TariffError(ConfigError):
    """A price list that does not validate; ``issues`` are "file:line: column: reason" lines."""

    def __init__(self, issues: list[str]) -> None:
        shown = issues[:20]
        more = f"\n… and {len(issues) - 20} more" if len(issues) > 20 else ""
        super().__init__("invalid price list:\n" + "\n".join(shown) + more)
        self.issues = issues

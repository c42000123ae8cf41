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
    ├── RetentionError       a retention, hold, export or erasure request cannot be done as asked
    └── ApiError             a request the panel API refuses: answered as problem+json, never a traceback
        ├── Unauthorised     no valid credentials (401): send a valid key or token
        ├── Forbidden        the caller's role may not do this (403)
        ├── NotFound         nothing of that id in the caller's scope (404); another tenant's
        │                    call looks exactly like one that does not exist
        ├── BadParameter     a parameter that does not parse or is out of range (400); names it
        └── Unavailable      a service the request needs is down (503): try again later
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


# the panel API
class ApiError(PbxPipeError):
    status = 500
    title = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorised(ApiError):
    status = 401
    title = "Unauthorised"


class Forbidden(ApiError):
    status = 403
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    title = "Not found"


class BadParameter(ApiError):
    status = 400
    title = "Bad parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter = parameter


class Unavailable(ApiError):
    status = 503
    title = "Service unavailable"

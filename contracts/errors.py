"""The project's exceptions, one small tree.

    PbxPipeError
    ├── ConfigError          bad settings or profile: fix and restart
    ├── InputError           bad input from the PBX: counted, logged once, quarantined
    │   └── FrameError       a frame that cannot be read (no "Key: value", bad UTF-8, too big)
    ├── AmiError             talking to Asterisk
    │   ├── AmiConnectError  unreachable / connection lost
    │   └── AmiAuthError     login refused: retrying will not help
    └── StoreError           the sink failed
        └── StoreUnavailable the sink is down: retry with backoff
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

"""The emulator's settings, read from command-line flags or `EMULATOR_*` variables.

Every field below is one flag and one environment variable: field `drop_rate`
is `--drop-rate` and `EMULATOR_DROP_RATE`. A flag beats the variable, the
variable beats the default. Fault settings all default to off. The command
line's defaults differ from the library's in one setting: `python -m emulator`
keeps its records under `var/emulator` (COMMAND_LINE_DEFAULTS), while
`Settings()` keeps them in memory only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

ENV_PREFIX = "EMULATOR_"
ENVELOPES = ("wrapped", "bare", "mixed")
COMMAND_LINE_DEFAULTS = {"state_dir": "var/emulator"}


def _doc(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass(frozen=True)
class Faults:
    """Faults to inject. Rates are probabilities in 0..1, drawn from the seeded dice."""

    duplicate_rate: float = _doc("chance that a webhook is sent again as an extra copy (up to 3 extra)", default=0.0)
    delay_ms: int = _doc("extra delay before the first attempt of every webhook", default=0)
    jitter_ms: int = _doc("random extra delay, 0..N ms, added to each webhook's first attempt", default=0)
    reorder: int = _doc("shuffle webhooks in groups of N before sending (0 or 1: off)", default=0)
    reorder_hold_ms: int = _doc("longest a webhook waits for its reorder group to fill", default=200)
    webhook_fail_rate: float = _doc("chance that a delivery attempt fails without being sent (injected-failure)",
                                    default=0.0)
    rate_limit_rate: float = _doc("chance that a request to /v1 is answered 429 rateLimitExceeded", default=0.0)
    unavailable_rate: float = _doc("chance that a request to /v1 is answered 503 serviceUnavailable", default=0.0)
    task_error_rate: float = _doc("chance that a caption task fails with timeoutProvider", default=0.0)
    drop_rate: float = _doc("chance that a task's webhook, or its result pushed over WebSocket, is never sent "
                            "(getResponse still has the result)", default=0.0)
    disconnect_rate: float = _doc("chance that the server closes a WebSocket connection right after accepting a "
                                  "caption task, before answering it (drawn per accepted task, in arrival order)",
                                  default=0.0)
    envelope: str = _doc("webhook body shape: wrapped ({\"data\":[...]}), bare (the task object) or mixed",
                         default="wrapped")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be between 0 and 1, got {value}")
            if f.type == "int" and value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")
        if self.envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {', '.join(ENVELOPES)}, got {self.envelope!r}")


@dataclass(frozen=True)
class Settings:
    """Everything the emulator needs; `faults` holds the fault injection settings."""

    host: str = _doc("address to listen on", default="127.0.0.1")
    port: int = _doc("port to listen on (0: any free port)", default=8010)
    api_key: str = _doc("the one API key accepted", default="emulator-key")
    seed: int | None = _doc("seed for every random choice (faults, jitter); unset: a random seed, shown on /healthz",
                            default=None)
    processing_ms: int = _doc("how long a caption task takes", default=50)
    max_attempts: int = _doc("webhook delivery attempts before giving up", default=8)
    backoff_base_ms: int = _doc("delay after the first failed attempt; doubles after each failure", default=250)
    backoff_cap_ms: int = _doc("longest delay between two attempts", default=8000)
    webhook_timeout_s: float = _doc("time allowed for the receiver to answer one attempt", default=5.0)
    delivery_workers: int = _doc("threads sending webhooks", default=8)
    fetch_timeout_s: float = _doc("time allowed to fetch an image given by URL", default=10.0)
    max_image_bytes: int = _doc("largest accepted image, in bytes", default=10 * 1024 * 1024)
    max_image_pixels: int = _doc("largest accepted image, in pixels", default=50_000_000)
    max_request_bytes: int = _doc("largest accepted request body, in bytes", default=32 * 1024 * 1024)
    max_records: int = _doc("webhook attempts kept in memory (oldest dropped first)", default=100_000)
    state_dir: str = _doc("directory of the file keeping tasks and uploads across restarts (empty: memory only; "
                          "python -m emulator: var/emulator)", default="")
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        for name in ("max_attempts", "delivery_workers", "max_image_bytes", "max_image_pixels",
                     "max_request_bytes", "max_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("processing_ms", "backoff_base_ms", "backoff_cap_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("webhook_timeout_s", "fetch_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.api_key:
            raise ValueError("api_key must not be empty")

    def key_matches(self, given: object) -> bool:
        """Whether `given` is the API key (compared in constant time)."""
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.api_key.encode())

    def replace(self, **changes) -> Settings:
        """A copy with some fields changed; fault fields may be given directly (e.g. drop_rate=1)."""
        fault_names = {f.name for f in dataclasses.fields(Faults)}
        fault_changes = {k: changes.pop(k) for k in list(changes) if k in fault_names}
        if fault_changes:
            changes["faults"] = dataclasses.replace(changes.get("faults", self.faults), **fault_changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `EMULATOR_*` variables (unset ones keep their defaults)."""
        return parse_args([], env)


def _fields():
    """(field, owner class) for every setting, Settings' own first, then the faults."""
    own = [(f, Settings) for f in dataclasses.fields(Settings) if f.name != "faults"]
    return own + [(f, Faults) for f in dataclasses.fields(Faults)]


def _converter(f):
    kind = f.type.replace(" | None", "")
    return {"int": int, "float": float, "str": str}[kind]


def build_parser(env: Mapping[str, str] | None = None, command_line: bool = False) -> argparse.ArgumentParser:
    """The argparse parser for `python -m emulator`; defaults come from `env` (default os.environ).

    With `command_line`, COMMAND_LINE_DEFAULTS replace the library's defaults.
    """
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="python -m emulator",
        description="A Runware-compatible emulator for image captions, REST and WebSocket "
                    "(a deterministic stand-in, not a model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {Settings: parser.add_argument_group("server"), Faults: parser.add_argument_group("faults")}
    for f, owner in _fields():
        name = ENV_PREFIX + f.name.upper()
        default = COMMAND_LINE_DEFAULTS.get(f.name, f.default) if command_line else f.default
        if env.get(name, "") != "":
            try:
                default = _converter(f)(env[name])
            except ValueError:
                raise ValueError(f"{name}={env[name]!r} is not a valid {_converter(f).__name__}") from None
        groups[owner].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_converter(f),
            default=None if default is None else _converter(f)(default),
            choices=ENVELOPES if f.name == "envelope" else None,
            help=f"{f.metadata['help']} [env {name}]",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
               command_line: bool = False) -> Settings:
    """Settings from flags and environment; raises ValueError (or exits, for bad flags) when invalid."""
    values = vars(build_parser(env, command_line).parse_args(argv))
    fault_names = {f.name for f in dataclasses.fields(Faults)}
    faults = Faults(**{k: v for k, v in values.items() if k in fault_names})
    return Settings(**{k: v for k, v in values.items() if k not in fault_names}, faults=faults)

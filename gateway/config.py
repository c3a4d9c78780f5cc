"""Configuration (SPEC §8): a TOML file validated at start, with messages that name the key.

Any value written as ``{ env = "NAME" }`` is read from the environment variable NAME, so secrets
need not sit in the file. With no file, :func:`demo_config` gives the bundled demo.
"""

from __future__ import annotations

import importlib.util
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.identifiers import region_problem

DEMO_FILE = Path(__file__).parent / "demo" / "demo.toml"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetryPolicy(_Section):
    """Durable retry of dispatch and delivery: exponential backoff with full jitter."""

    base_seconds: float = Field(1.0, gt=0)
    cap_seconds: float = Field(600.0, gt=0)
    max_attempts: int = Field(30, ge=1, description="dispatch attempts before dead-lettering")


class GatewaySection(_Section):
    listen: str = "127.0.0.1:8080"
    store: str = "sqlite:///var/tongban.db"
    contracts: str = "contracts/"
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    rate_limit_per_second: float = Field(2000.0, gt=0, description="per origin region")
    rate_limit_burst: int = Field(4000, ge=1)
    lease_seconds: float = Field(
        60.0, gt=0, description="how long a claimed job is held; above two partner calls"
    )
    request_timeout_seconds: float = Field(15.0, gt=0, description="every partner/recipient call")
    callback_key_id: str = "tongban-gateway"
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    dispatch_batch: int = Field(64, ge=1, description="dispatch jobs one claim round takes at most")
    delivery_batch: int = Field(100, ge=1, description="events per callback when batching")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    store_pool_size: int = Field(10, ge=2, le=500, description="PostgreSQL connections at most")
    reuse_port: bool = Field(
        False, description="several processes of this host listen on one port (PostgreSQL only)"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, _, port = v.rpartition(":")
        if not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT with a port from 0 to 65535")
        return v

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if v.startswith(("postgresql://", "postgres://")):
            if importlib.util.find_spec("asyncpg") is None:
                raise ValueError(
                    "a PostgreSQL store needs asyncpg: pip install 'tongban-gateway[postgres]'"
                )
            return v
        if not v.startswith("sqlite:///"):
            raise ValueError(
                "must be sqlite:///relative.db, sqlite:////absolute.db or "
                "postgresql://user@host/database"
            )
        return v

    @model_validator(mode="after")
    def _shared_port_needs_a_shared_store(self) -> GatewaySection:
        if self.reuse_port and self.store.startswith("sqlite:"):
            raise ValueError(
                "reuse_port lets several gateway processes serve one port: it needs a "
                "PostgreSQL store (a SQLite store belongs to one process)"
            )
        return self

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> GatewaySection:
        # A job is called at most twice in one claim (the quick in-call retry); its lease must
        # outlast both, or another claim could send it again while the first is in flight.
        needed = 2 * self.request_timeout_seconds + 5
        if self.lease_seconds < needed:
            raise ValueError(
                f"lease_seconds must be at least 2 × request_timeout_seconds + 5 = {needed:g}"
            )
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def _events() -> dict[str, Any]:
    return {"kind": "events"}


FORMAT_DOC = (
    "what the recipient's system reads: a recipient format's table, {kind = …} and its settings "
    "(built-in: events, report_envelope with sender_code; more by entry point)"
)


class HubSection(_Section):
    url: str
    secret: str = Field(min_length=8)
    batch: bool = True
    format: dict[str, Any] = Field(default_factory=_events, description=FORMAT_DOC)


class OperatorSection(_Section):
    name: str
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["viewer", "operator", "admin"]


class PartnerLimits(_Section):
    concurrency: int = Field(8, ge=1, le=1000, description="calls in flight to this partner")


class InboundAuth(_Section):
    """How a partner's own messages are authenticated: §5 signing, or for a legacy system that
    cannot sign, a token header or an address allowlist configured explicitly."""

    mode: Literal["signed", "token", "allowlist"] = "signed"
    header: str = "X-Partner-Token"
    token: str | None = None
    addresses: list[str] = Field(default_factory=list)


class PartnerSection(_Section):
    region: str
    name: str
    callback_url: str | None = None
    callback_secret: str | None = Field(None, min_length=8)
    batch_callbacks: bool = False
    callback_format: dict[str, Any] = Field(default_factory=_events, description=FORMAT_DOC)
    keys: dict[str, str] = Field(default_factory=dict)
    adapter: dict[str, Any] | None = None
    limits: PartnerLimits = Field(default_factory=PartnerLimits)
    inbound: InboundAuth = Field(default_factory=InboundAuth)

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        problem = region_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key_id, secret in v.items():
            if len(secret) < 16:
                raise ValueError(f"secret of key {key_id!r} must be at least 16 characters")
        return v


class SubscriberSection(_Section):
    """A recipient a contract names besides the origin and the hub, e.g. the department that
    supervises what another one approved (审管联动). It gets every event of the cases of the
    items that name it, signed and in order like any recipient."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    url: str
    secret: str = Field(min_length=8)
    batch: bool = False
    format: dict[str, Any] = Field(default_factory=_events, description=FORMAT_DOC)
    regions: list[str] = Field(
        default_factory=list,
        description="only cases with an origin or handling region here (a province code "
        "covers its cities and counties); empty: every case",
    )

    def covers(self, regions: Iterable[str]) -> bool:
        if not self.regions:
            return True
        mine = set(self.regions)
        return any(r in mine or r[:2] + "0000" in mine for r in regions)


class Config(_Section):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    national_hub: HubSection | None = None
    operators: list[OperatorSection] = Field(default_factory=list)
    partners: list[PartnerSection] = Field(default_factory=list)
    subscribers: list[SubscriberSection] = Field(default_factory=list)
    demo: bool = Field(False, description="also run the demo partner simulators in-process")

    def partner(self, region: str) -> PartnerSection | None:
        return next((p for p in self.partners if p.region == region), None)

    def subscriber(self, name: str) -> SubscriberSection | None:
        return next((s for s in self.subscribers if s.name == name), None)

    def key_regions(self) -> dict[str, str]:
        """Key id → region; a key id belongs to exactly one region."""
        return {k: p.region for p in self.partners for k in p.keys}

    def key_secrets(self) -> dict[str, str]:
        return {k: s for p in self.partners for k, s in p.keys.items()}


def _resolve_env(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            name = node["env"]
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{path}: env must name an environment variable")
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ[name]
        return {k: _resolve_env(v, f"{path}.{k}" if path else k) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(exc: ValidationError) -> list[str]:
    """Each error of a validation as ``key.path: message`` (never the value)."""
    return [f"{_format_loc(e['loc'])}: {e['msg']}" for e in exc.errors()]


def parse(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a parsed TOML document; raise :class:`ConfigError` naming every bad key."""
    try:
        config = Config.model_validate(_resolve_env(raw, ""))
    except ValidationError as exc:
        lines = [f"  {line}" for line in problems(exc)]
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(lines)) from None
    _check_consistency(config, source)
    return config


def _check_consistency(config: Config, source: str) -> None:
    seen_regions: set[str] = set()
    seen_keys: set[str] = set()
    for i, p in enumerate(config.partners):
        if p.region in seen_regions:
            raise ConfigError(f"{source}: partners[{i}].region: {p.region} is configured twice")
        seen_regions.add(p.region)
        for key_id in p.keys:
            if key_id in seen_keys:
                raise ConfigError(
                    f"{source}: partners[{i}].keys: key id {key_id!r} belongs to two regions"
                )
            seen_keys.add(key_id)
        if p.callback_url and not p.callback_secret:
            raise ConfigError(
                f"{source}: partners[{i}].callback_secret: required with callback_url"
            )
        if p.inbound.mode == "token" and not p.inbound.token:
            raise ConfigError(f"{source}: partners[{i}].inbound.token: required for mode token")
    names = [s.name for s in config.subscribers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{source}: subscribers[{i}].name: {name!r} is configured twice")


def load(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (save the file as UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, str(path))


def demo_config() -> Config:
    return load(DEMO_FILE)


def contracts_path(config: Config, base: Path | None = None) -> Path:
    """The contract list folder: as written, else beside the project (for the bundled demo)."""
    p = Path(config.gateway.contracts)
    if p.is_absolute() or p.exists():
        return p
    for root in (base, PROJECT_ROOT):
        if root is not None and (root / p).exists():
            return root / p
    raise ConfigError(f"gateway.contracts: folder {p} does not exist")

"""Who is calling: §5 signatures for provinces and partners, bearer tokens for operators."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass

from aiohttp import web

from gateway import errors
from gateway.clock import Clock
from gateway.config import Config, PartnerSection
from gateway.ratelimit import RateLimiter
from gateway.service import Caller
from gateway.signing import (
    NONCE_HEADER,
    NonceCache,
    SharedNonces,
    SignatureError,
    SignedRequest,
    verify,
)

ROLES = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass
class Authenticator:
    config: Config
    clock: Clock
    nonces: NonceCache
    limiter: RateLimiter
    shared_nonces: SharedNonces | None = None  # the store, where several processes share it

    def __post_init__(self) -> None:
        self._key_regions = self.config.key_regions()
        self._key_secrets = self.config.key_secrets()
        self._tokens = {
            op.token_sha256: Caller(operator=op.name, role=op.role) for op in self.config.operators
        }

    async def body(self, request: web.Request) -> bytes:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.gateway.max_body_bytes
            raise errors.TooLarge(f"the body exceeds {limit} bytes") from None

    async def province(self, request: web.Request, body: bytes) -> str:
        """Verify a §5 signature; return the caller's region. Rate-limited per region."""
        now = self.clock.now()
        signed = SignedRequest(request.method, request.raw_path, request.headers, body)
        try:
            key_id = verify(signed, self._key_secrets, self.nonces, now)
        except SignatureError as exc:
            raise errors.Unauthorized(str(exc)) from None
        shared = self.shared_nonces
        if shared and not await shared.remember_nonce(key_id, request.headers[NONCE_HEADER], now):
            raise errors.Unauthorized(f"{NONCE_HEADER} was already used")
        region = self._key_regions[key_id]
        wait = self.limiter.take(region, now)
        if wait:
            raise errors.TooManyRequests(
                f"rate limit for region {region} exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        return region

    def operator(self, request: web.Request, role: str = "viewer") -> Caller:
        caller = self.bearer(request)
        if caller is None:
            raise errors.Unauthorized("an operator bearer token is required")
        if ROLES[caller.role or "viewer"] < ROLES[role]:
            raise errors.Forbidden(f"this needs the {role} role")
        return caller

    def bearer(self, request: web.Request) -> Caller | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        digest = hashlib.sha256(header[7:].strip().encode()).hexdigest()
        for known, caller in self._tokens.items():
            if hmac.compare_digest(known, digest):
                return caller
        raise errors.Unauthorized("unknown bearer token")

    async def reader(self, request: web.Request, body: bytes) -> Caller:
        """A province by signature, or an operator by bearer token."""
        caller = self.bearer(request)
        return caller if caller is not None else Caller(region=await self.province(request, body))

    async def partner(self, request: web.Request, region: str, body: bytes) -> None:
        """Authenticate a partner's inbound message as its settings say."""
        partner = self.config.partner(region)
        if partner is None:
            raise errors.NotFound(f"no partner {region}")
        mode = partner.inbound.mode
        if mode == "signed":
            if await self.province(request, body) != region:
                raise errors.Forbidden("the signing key does not belong to this partner")
        elif mode == "token":
            _check_token(request, partner)
        elif request.remote not in partner.inbound.addresses:
            raise errors.Forbidden("this address may not post for this partner")


def _check_token(request: web.Request, partner: PartnerSection) -> None:
    given = request.headers.get(partner.inbound.header, "")
    expected = partner.inbound.token or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise errors.Unauthorized(f"missing or wrong {partner.inbound.header}")

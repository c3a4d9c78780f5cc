"""Template adapter for a province whose platform answers ``{"ret": 0, "data": {"bjbh": …}}``.

Its native protocol:

- submit: ``POST {base_url}/api/bj/submit`` with ``{"wbbh": case id, "sxbm": item code,
  "sqr": {"xm": name, "zjhm": id number}, "bd": payload}``; ``ret`` 0 is success, ``ret`` 503 is
  "busy, later", any other ``ret`` a refusal;
- supplement / withdraw: ``POST {base_url}/api/bj/{bjbh}/bz`` and ``…/ch``;
- its callbacks: ``{"wbbh": case id, "bjbh": its number, "zt": status code, "jg": result}`` with
  ``zt`` 2 受理, 3 办理中, 4 办结(准予), 5 办结(不予), 9 不予受理.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field

from adapters.sdk import (
    Accepted,
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    Retryable,
    StatusUpdate,
    printable_code,
)

STATUS = {"2": ("accepted", None), "3": ("in_progress", None), "4": ("completed", "approved"),
          "5": ("completed", "denied"), "9": ("rejected", None)}  # fmt: skip


class MyProvSettings(AdapterSettings):
    kind: Literal["myprov"] = "myprov"
    base_url: str = Field(pattern=r"^https?://")
    timeout: float = Field(10.0, gt=0)


class MyProvAdapter:
    kind: ClassVar[str] = "myprov"
    Settings: ClassVar[type[AdapterSettings]] = MyProvSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, MyProvSettings)
        self.settings = settings

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        body = {
            "wbbh": case.case_id,
            "sxbm": case.item_code,
            "sqr": {"xm": case.applicant.get("name"), "zjhm": case.applicant.get("id_number")},
            "bd": dict(case.payload),
        }
        return await self._post("/api/bj/submit", body, ctx)

    async def supplement(
        self, case: CanonicalCase, material: Mapping[str, Any], ctx: AdapterContext
    ) -> Outcome:
        ref = case.partner_ref or case.case_id
        return await self._post(f"/api/bj/{ref}/bz", {"wbbh": case.case_id, **material}, ctx)

    async def withdraw(self, case: CanonicalCase, reason: str, ctx: AdapterContext) -> Outcome:
        ref = case.partner_ref or case.case_id
        return await self._post(f"/api/bj/{ref}/ch", {"wbbh": case.case_id, "yy": reason}, ctx)

    async def _post(self, path: str, body: dict[str, Any], ctx: AdapterContext) -> Outcome:
        timeout = aiohttp.ClientTimeout(total=min(self.settings.timeout, ctx.timeout))
        try:
            async with ctx.session.post(
                self.settings.base_url.rstrip("/") + path, data=orjson.dumps(body),
                headers={"Content-Type": "application/json"}, timeout=timeout,
            ) as resp:  # fmt: skip
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            return Retryable("timeout")
        except aiohttp.ClientError as exc:
            return Retryable(f"connection error: {type(exc).__name__}")
        if status == 429 or status >= 500:
            return Retryable(f"partner answered HTTP {status}")
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Retryable(f"partner answered HTTP {status} with a body that is not JSON")
        ret = answer.get("ret") if isinstance(answer, dict) else None
        if ret == 0:
            data = answer.get("data") or {}
            ref = data.get("bjbh") if isinstance(data, dict) else None
            return Accepted(partner_ref=str(ref) if ref else None)
        if ret == 503:
            return Retryable("partner busy")
        return Permanent(f"partner refused the request (ret {printable_code(ret)})")

    def parse_inbound(self, body: bytes, headers: Mapping[str, str]) -> list[StatusUpdate]:
        try:
            report = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if not isinstance(report, dict):
            raise ValueError("expected an object")
        status = STATUS.get(str(report.get("zt")))
        if status is None:
            raise ValueError("zt is not a known status code")
        result = report.get("jg") or {}
        return [
            StatusUpdate(
                status=status[0],
                case_id=str(report["wbbh"]) if report.get("wbbh") else None,
                partner_ref=str(report["bjbh"]) if report.get("bjbh") else None,
                outcome=status[1],
                data=result if isinstance(result, dict) else {"value": result},
            )
        ]

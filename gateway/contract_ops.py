"""Operator actions on the contract list: show, history, validate, publish, roll back.

Validation changes nothing and answers errors plus a diff against the revision in force. Publishing
refuses a list that alters a published version (only status changes and new versions are allowed)
and, once stored, puts the new revision in force in this process at once and in every other
process within its refresh interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from gateway import errors, revisions
from gateway.clock import Clock, iso
from gateway.contracts import ContractList
from gateway.registry import ContractRegistry
from gateway.store.base import Store, VersionConflict


@dataclass
class ContractOps:
    store: Store
    registry: ContractRegistry
    clock: Clock
    subscribers: frozenset[str] = frozenset()  # the [[subscribers]] this gateway has configured

    async def active(self) -> dict[str, Any]:
        lst = self.registry.current
        return {
            "revision": self.registry.revision,
            "items": [
                {
                    "item_code": code,
                    "name": item.name,
                    "department": item.department,
                    "versions": [
                        {"version": v.version, "status": v.status, "mode": v.mode}
                        for v in item.versions
                    ],
                }
                for code, item in sorted(lst.items.items())
            ],
            "calendar": lst.calendar.model_dump(mode="json"),
        }

    async def item(self, item_code: str) -> dict[str, Any]:
        item = self.registry.current.items.get(item_code)
        if item is None:
            raise errors.NotFound(f"unknown service item {item_code}")
        return {"revision": self.registry.revision, **item.model_dump(mode="json")}

    async def history(self, limit: int) -> dict[str, Any]:
        rows = await self.store.revisions(max(1, min(limit, 500)))
        return {
            "active": self.registry.revision,
            "revisions": [
                {
                    "revision": r.revision,
                    "created_at": iso(r.created_at),
                    "author": r.author,
                    "note": r.note,
                }
                for r in rows
            ],
        }

    async def validate(self, body: bytes) -> dict[str, Any]:
        candidate, problems = await self._check(body)
        return {
            "valid": not problems,
            "errors": problems,
            "diff": revisions.diff(self.registry.current, candidate) if candidate else [],
        }

    async def publish(self, body: bytes, author: str, note: str = "") -> dict[str, Any]:
        candidate, problems = await self._check(body)
        if candidate is None or problems:
            raise errors.Unprocessable("the contract list cannot be published", errors=problems)
        return await self._store(candidate, author, note or "published")

    async def rollback(self, revision: int, author: str) -> dict[str, Any]:
        record = await self.store.get_revision(revision)
        if record is None:
            raise errors.NotFound(f"no revision {revision}")
        return await self._store(revisions.loads(record.content), author, f"rollback to {revision}")

    async def _store(self, lst: ContractList, author: str, note: str) -> dict[str, Any]:
        before = self.registry.current
        try:
            number = await self.store.publish_revision(
                revisions.dumps(lst).decode(),
                revisions.published_contents_json(lst),
                author=author,
                note=note,
                now=self.clock.now(),
            )
        except VersionConflict as exc:
            raise errors.Conflict(str(exc)) from None
        await self.registry.refresh()
        return {"revision": number, "diff": revisions.diff(before, lst)}

    async def _check(self, body: bytes) -> tuple[ContractList | None, list[dict[str, Any]]]:
        """Parse, compile every version, and compare with every version ever published."""
        try:
            candidate = ContractList.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError:
            return None, [{"loc": ["body"], "msg": "invalid JSON", "type": "json_invalid"}]
        except ValidationError as exc:
            return None, errors.field_errors(exc)
        problems = _compile_errors(candidate)
        published = {
            key: orjson.loads(raw) for key, raw in (await self.store.published_versions()).items()
        }
        problems += revisions.immutability_errors(published, candidate)
        problems += _subscriber_errors(candidate, set(published), self.subscribers)
        return candidate, problems


def _subscriber_errors(
    lst: ContractList, published: set[tuple[str, int]], configured: frozenset[str]
) -> list[dict[str, Any]]:
    """A new version may only name subscribers this gateway can reach: otherwise its cases'
    events for them would wait for ever. Versions already published are left as they are."""
    out: list[dict[str, Any]] = []
    for code, item in lst.items.items():
        for v in item.versions:
            if (code, v.version) in published or v.status == "draft":
                continue
            for i, name in enumerate(v.subscribers):
                if name not in configured:
                    out.append({"loc": ["items", code, "versions", v.version, "subscribers", i],
                                "msg": f"no [[subscribers]] named {name!r} is configured",
                                "type": "value_error"})  # fmt: skip
    return out


def _compile_errors(lst: ContractList) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for code, item in lst.items.items():
        if code != item.item_code:
            out.append({"loc": ["items", code, "item_code"], "msg": "must equal its key",
                        "type": "value_error"})  # fmt: skip
        for v in item.versions:
            try:
                lst.validator(code, v)
            except Exception as exc:  # a field spec pydantic cannot build a model from
                out.append({"loc": ["items", code, "versions", v.version, "fields"],
                            "msg": f"does not compile: {type(exc).__name__}",
                            "type": "value_error"})  # fmt: skip
    return out

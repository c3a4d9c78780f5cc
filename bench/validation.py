"""Validation cost: the submit path with the smallest and the largest shipped contract.

``python -m bench.validation`` runs the service layer's submit (validation, routing, records and
the group commit, without HTTP) for every shipped item with its example payload, on a temporary
SQLite store with the workers stopped, and prints cases/s per item and the largest/smallest ratio.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.app import Gateway
from gateway.contracts import ContractList, walk
from tests.support import CONTRACTS, HANDLER, ORIGIN, citizen_id, gateway_config

ROUNDS = 3
CASES = 3000


def size(lst: ContractList, code: str) -> int:
    version = lst.items[code].version(None)
    return len(walk(version.fields, "")) if version else 0


def body(code: str, i: int, payload: dict[str, Any], routing_field: str | None) -> bytes:
    if routing_field:
        payload = {**payload, routing_field: HANDLER}
    return orjson.dumps(
        {
            "request_id": f"B-{code}-{i}",
            "item_code": code,
            "applicant": {"id_number": citizen_id(), "name": "张三", "phone": "13800000000"},
            "payload": payload,
        }
    )


async def rate(gw: Gateway, bodies: list[bytes]) -> float:
    started = time.perf_counter()
    for i in range(0, len(bodies), 64):
        await asyncio.gather(*(gw.service.submit(ORIGIN, b) for b in bodies[i : i + 64]))
    return len(bodies) / (time.perf_counter() - started)


async def main() -> None:
    lst = ContractList.load(CONTRACTS)
    codes = sorted(lst.items, key=lambda c: size(lst, c))
    smallest, largest = codes[0], codes[-1]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = gateway_config(f"sqlite:///{tmp}/v.db", 0, {ORIGIN: 1, HANDLER: 2}, 3)
        gw = Gateway(config)
        await gw.start(0)
        await gw.supervisor.stop()  # the submit path alone
        try:
            for code in (smallest, largest):
                example = json.loads((CONTRACTS / "examples" / f"{code}.json").read_text("utf-8"))
                version = lst.items[code].version(None)
                field = version.routing.from_field if version else None
                best = 0.0
                for r in range(ROUNDS):
                    bodies = [body(code, r * CASES + i, example, field) for i in range(CASES)]
                    best = max(best, await rate(gw, bodies))
                results[code] = best
        finally:
            await gw.stop()
    for code in (smallest, largest):
        specs = size(lst, code)
        print(f"{code:<12} {specs:>3} field specs  {results[code]:>7.0f} cases/s (submit path)")
    ratio = results[largest] / results[smallest]
    verdict = "ok" if ratio >= 0.9 else "MISSED"
    print(f"largest / smallest: {ratio:.2f}  bar >= 0.90: {verdict}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "validation.json").write_text(json.dumps({"rates": results, "ratio": ratio}))


if __name__ == "__main__":
    asyncio.run(main())

"""``tongban demo``: submit sample cases of the shipped contracts and watch them flow.

Each case is signed as its origin province, routed by its contract to another demo province,
handled by that province's simulator, and followed until every status change has been delivered
back down to the origin and up to the national hub. A few cases take the side paths (不予受理,
补正 answered by the demo, 不予许可) so every kind of event is seen.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway.config import Config, contracts_path
from gateway.contracts import ContractList
from gateway.identifiers import id_check_char
from gateway.signing import sign_headers

SCENARIOS = ["", "", "", "-REJECT", "", "-SUPPLEMENT", "", "-DENY"]
NAMES = ["王芳", "李娜", "张伟", "刘洋", "陈静", "杨磊", "赵敏", "黄勇"]
TERMINAL = {"completed", "rejected", "withdrawn", "failed"}


class Demo:
    def __init__(self, config: Config, url: str, contracts: ContractList, examples: Path) -> None:
        self.url = url.rstrip("/")
        self.contracts = contracts
        self.keys = {p.region: next(iter(p.keys.items())) for p in config.partners if p.keys}
        self.names = {p.region: p.name for p in config.partners}
        self.examples = {
            p.stem: orjson.loads(p.read_bytes()) for p in sorted(examples.glob("*.json"))
        }
        self.cases: dict[str, dict[str, Any]] = {}

    async def call(
        self, session: aiohttp.ClientSession, region: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else b""
        key_id, secret = self.keys[region]
        headers = sign_headers(key_id, secret, method, path, data)
        if data:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=10)
        async with session.request(
            method, self.url + path, data=data, headers=headers, timeout=timeout
        ) as r:
            return r.status, orjson.loads(await r.read() or b"null")

    def submissions(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        """(origin, body) pairs: items in turn, origins in turn, each to another province."""
        regions = sorted(self.keys)
        items = [c for c in sorted(self.examples) if c in self.contracts.items]
        out = []
        stamp = time.strftime("%Y%m%d%H%M%S")
        for i, (code, origin) in enumerate(zip(itertools.cycle(items), itertools.cycle(regions))):
            if i >= count:
                break
            handler = regions[(regions.index(origin) + 1 + i // len(regions)) % len(regions)]
            if handler == origin:
                handler = regions[(regions.index(origin) + 1) % len(regions)]
            payload = dict(self.examples[code])
            version = self.contracts.items[code].version(None)
            if version and version.routing.from_field:
                payload[version.routing.from_field] = handler
            if version and version.routing.legs:
                # 多地联办: the first leg elsewhere, the last back in the origin's province.
                others = [r for r in regions if r not in (handler, origin)]
                turns = [handler, *others[: len(version.routing.legs) - 2], origin]
                for leg, region in zip(version.routing.legs, turns, strict=False):
                    if leg.from_field:
                        payload[leg.from_field] = region
            body = {
                "request_id": f"DEMO-{origin}-{stamp}-{i:03d}{SCENARIOS[i % len(SCENARIOS)]}",
                "item_code": code,
                "handling_region": handler,
                "applicant": _applicant(i),
                "payload": payload,
            }
            out.append((origin, body))
        return out

    async def run(self, count: int, within: float = 180.0) -> bool:
        async with aiohttp.ClientSession() as session:
            for origin, body in self.submissions(count):
                status, answer = await self.call(session, origin, "POST", "/v1/cases", body)
                if status not in (200, 202):
                    print(f"refused {body['item_code']} from {origin}: {status} {answer}")
                    continue
                self.cases[answer["case_id"]] = {"origin": origin, **answer}
            deadline = time.monotonic() + within
            while time.monotonic() < deadline:
                await self.refresh(session)
                self.show()
                if self.cases and all(_done(c) for c in self.cases.values()):
                    print(f"\nall {len(self.cases)} cases finished and delivered both ways.")
                    return True
                await asyncio.sleep(0.5)
        print("\nsome cases did not finish in time; see GET /v1/cases/{case_id}")
        return False

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        for case_id, case in list(self.cases.items()):
            if _done(case):
                continue
            status, fresh = await self.call(session, case["origin"], "GET", f"/v1/cases/{case_id}")
            if status == 200:
                self.cases[case_id] = {"origin": case["origin"], **fresh}
                if fresh["status"] == "supplement_required":
                    await self.call(
                        session, case["origin"], "POST", f"/v1/cases/{case_id}/supplements",
                        {"note": "已补充材料（演示）"},
                    )  # fmt: skip

    def show(self) -> None:
        lines = [f"{'case':<14} {'item':<22} {'route':<22} {'status':<21} {'delivered':<12}"]
        for case_id, c in self.cases.items():
            item = self.contracts.items[c["item_code"]].name
            stops = [leg["region"] for leg in c.get("legs") or []] or [c["handling_region"]]
            route = "→".join([c["origin_region"], *stops])
            delivered = " ".join(
                f"{_who(d['recipient'])}:{d['acked_seq']}/{d['head_seq']}"
                for d in c.get("deliveries", [])
            )
            status = c["status"] + (f" ({c['outcome']})" if c.get("outcome") else "")
            lines.append(
                f"{case_id[-12:]:<14} {_pad(item, 22)} {route:<22} {status:<21} {delivered}"
            )
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print("\n".join(lines), flush=True)


def _pad(text: str, width: int) -> str:
    """Pad for display: CJK characters take two columns."""
    shown = sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)
    return text + " " * max(0, width - shown)


def _done(case: dict[str, Any]) -> bool:
    return case.get("status") in TERMINAL and all(
        d["waiting"] == 0 for d in case.get("deliveries", [])
    )


def _applicant(i: int) -> dict[str, str]:
    first17 = f"33010619{80 + i % 20:02d}0{1 + i % 9}1{i % 10}{100 + i:03d}"[:17]
    return {
        "id_type": "111",
        "id_number": first17 + id_check_char(first17),
        "name": NAMES[i % len(NAMES)],
        "phone": f"139{i:08d}",
    }


async def run_demo(config: Config, url: str, count: int, base_dir: Path | None = None) -> None:
    folder = contracts_path(config, base_dir)
    demo = Demo(config, url, ContractList.load(folder), folder / "examples")
    if not await demo.run(count):
        raise SystemExit(1)


def _who(recipient: str) -> str:
    return "origin" if recipient.startswith("region:") else recipient

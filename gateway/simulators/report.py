"""A supervision platform that collects case records in report envelopes (办件信息汇聚).

It plays the receiving side of :mod:`adapters.report_envelope`: checks the §5 signature the
gateway puts on every callback, reads the envelope, keeps each case's records by ``seqNo`` (and
counts any that arrive out of order or twice), and answers as such platforms do, HTTP 200 with the
verdict in the body: ``{"code": "0"}``, or while it is ``busy``, ``{"code": "500", "msg":
"系统繁忙"}``, which must not be taken as an acknowledgement.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import web

from gateway.signing import NonceCache, SignatureError, SignedRequest, verify
from gateway.simulators.base import LoopbackServer

PATH = "/report/cases"


class ReportPlatform(LoopbackServer):
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.busy = False
        self.records: dict[str, list[dict[str, Any]]] = defaultdict(list)  # by projId
        self.envelopes: list[dict[str, Any]] = []  # every envelope accepted, heads and all
        self.refused = 0  # envelopes answered "busy"
        self.out_of_order = 0
        self.duplicates = 0
        self._nonces = NonceCache()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PATH, self._receive)
        return app

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        key_id = request.headers.get("X-Tongban-Key", "")
        signed = SignedRequest(request.method, request.raw_path, request.headers, body)
        try:
            verify(signed, {key_id: self.secret}, self._nonces, time.time())
        except SignatureError:
            return web.json_response({"code": "401", "msg": "签名校验失败"})
        if self.busy:
            self.refused += 1
            return web.json_response({"code": "500", "msg": "系统繁忙，请稍后重试"})
        try:
            envelope = orjson.loads(body)
            records = envelope["records"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"code": "400", "msg": "报文格式错误"})
        for r in records:
            kept = self.records[r["projId"]]
            if any(k["eventId"] == r["eventId"] for k in kept):
                self.duplicates += 1
                continue
            if r["seqNo"] != len(kept) + 1:
                self.out_of_order += 1
            kept.append(r)
        self.envelopes.append(envelope)
        return web.json_response({"code": "0", "msg": "接收成功"})

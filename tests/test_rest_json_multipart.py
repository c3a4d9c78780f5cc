"""``rest_json`` uploading materials (申请材料) as ``multipart/form-data``
(``attachment_transport = "multipart"``): what a partner receives, the rest simulator taking such
uploads and refusing a file whose digest is not listed, and the settings that make no sense."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import BodyPartReader, hdrs, web

from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import Accepted, AdapterContext, Permanent
from adapters.uploads import file_parts
from gateway.app import build_adapters
from gateway.clock import SystemClock
from gateway.config import ConfigError
from gateway.simulators.rest import MATERIAL_MISMATCH, ProvinceSimulator, SimulatorSettings
from tests.support import (
    HANDLER,
    ORIGIN,
    gateway_config,
    medical_filing,
    simulator,
    wait_for,
    world,
)
from tests.test_rest_json import CASE as JSON_CASE
from tests.test_rest_json import NAME

HUKOU = "户口簿首页及本人页".encode() + bytes(range(256))  # binary, every byte value
PHOTO = b"\xff\xd8\xff\xe0 a photograph"


def attachment(name: str, media_type: str, content: bytes) -> dict[str, Any]:
    return {"name": name, "media_type": media_type, "sha256": hashlib.sha256(content).hexdigest(),
            "content_base64": base64.b64encode(content).decode()}  # fmt: skip


def without_content(a: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in a.items() if k != "content_base64"}


ATTACHMENTS = (
    attachment("户口簿.pdf", "application/pdf", HUKOU),
    attachment("photo.jpg", "image/jpeg", PHOTO),
    # Listed without content (the origin never sent it): in the list, with no file part.
    without_content(attachment("居住证明.ofd", "application/ofd", b"not sent")),
)

CASE = replace(JSON_CASE, attachments=ATTACHMENTS)


def multipart(base_url: str, **settings: Any) -> RestJsonAdapter:
    return RestJsonAdapter(
        RestJsonSettings(base_url=base_url, attachment_transport="multipart", **settings)
    )


def context(session: aiohttp.ClientSession) -> AdapterContext:
    return AdapterContext(HANDLER, session, SystemClock(), logging.getLogger("t.multipart"), 5.0)


# ---- what the partner receives ------------------------------------------------------------------


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    disposition: str
    content: bytes


@dataclass
class Received:
    path: str
    content_type: str
    parts: list[Part] = field(default_factory=list)
    body: bytes = b""


@pytest.fixture
async def platform() -> AsyncIterator[tuple[str, list[Received]]]:
    """A partner that records every request (multipart parts as they arrive) and takes it."""
    received: list[Received] = []

    async def take(request: web.Request) -> web.Response:
        got = Received(request.path, request.headers.get(hdrs.CONTENT_TYPE, ""))
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                assert isinstance(part, BodyPartReader)
                got.parts.append(Part(part.name, part.filename, part.headers.get(hdrs.CONTENT_TYPE),
                                      part.headers[hdrs.CONTENT_DISPOSITION],
                                      bytes(await part.read())))  # fmt: skip
        else:
            got.body = await request.read()
        received.append(got)
        return web.json_response({"code": "0", "ticket": "T-9"})

    app = web.Application()
    app.router.add_post("/{tail:.*}", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


def json_part(got: Received, name: str = "case") -> dict[str, Any]:
    (part,) = [p for p in got.parts if p.name == name]
    assert part.content_type == "application/json; charset=utf-8" and part.filename is None
    body: dict[str, Any] = orjson.loads(part.content)
    return body


async def test_submit_uploads_each_file_with_its_name_media_type_and_bytes(platform) -> None:
    url, received = platform
    adapter = multipart(url)
    async with aiohttp.ClientSession() as session:
        assert await adapter.submit(CASE, context(session)) == Accepted(partner_ref="T-9")
    (got,) = received
    assert got.path == "/cases" and got.content_type.startswith("multipart/form-data; boundary=")
    body = json_part(got)
    assert body == adapter.render(CASE)  # the JSON submit body, attachments listed, no content
    assert body["attachments"] == [without_content(a) for a in ATTACHMENTS]
    assert body["applicant"]["name"] == NAME and body["caseId"] == CASE.case_id
    files = [p for p in got.parts if p.name == "files"]
    assert [(p.filename, p.content_type, p.content) for p in files] == [
        ("户口簿.pdf", "application/pdf", HUKOU),
        ("photo.jpg", "image/jpeg", PHOTO),
    ]
    # The Chinese name travels as UTF-8, as a browser sends it, never percent-encoded.
    assert 'filename="户口簿.pdf"' in files[0].disposition and "%E6" not in files[0].disposition
    assert len(got.parts) == 3


async def test_supplements_upload_too_and_withdrawals_stay_json(platform) -> None:
    url, received = platform
    adapter = multipart(url, multipart_body_field="data", multipart_file_field="file[]")
    proof = attachment("补充材料（第2页）.png", "image/png", b"\x89PNG more")
    material = {"note": "已补充", "payload": {"x": 1}, "attachments": [proof]}
    case = replace(CASE, partner_ref="T-9")
    async with aiohttp.ClientSession() as session:
        ctx = context(session)
        assert await adapter.supplement(case, material, ctx) == Accepted(partner_ref="T-9")
        assert await adapter.withdraw(case, "撤回", ctx) == Accepted(partner_ref="T-9")
    supplement, withdrawal = received
    assert supplement.path == "/cases/T-9/supplements"
    assert json_part(supplement, "data") == {"caseId": CASE.case_id, "note": "已补充",
                                             "payload": {"x": 1},
                                             "attachments": [without_content(proof)]}  # fmt: skip
    [(name, filename, content)] = [(p.name, p.filename, p.content) for p in supplement.parts[1:]]
    assert (name, filename, content) == ("file[]", "补充材料（第2页）.png", b"\x89PNG more")
    assert material["attachments"] == [proof]  # the job's material is left as it was
    assert withdrawal.content_type == "application/json" and withdrawal.parts == []
    assert orjson.loads(withdrawal.body) == {"caseId": CASE.case_id, "reason": "撤回"}


async def test_content_that_is_not_base64_is_permanent_before_any_call(platform) -> None:
    url, received = platform
    broken = {**ATTACHMENTS[0], "content_base64": "户口簿!"}
    async with aiohttp.ClientSession() as session:
        outcome = await multipart(url).supplement(CASE, {"attachments": [broken]}, context(session))
    assert outcome == Permanent(
        "cannot render the supplement: attachments[0].content_base64: not base64"
    )
    assert received == []


def test_a_file_name_with_line_breaks_cannot_break_the_part_headers() -> None:
    a = attachment("a\r\nX-Injected: 1.pdf", "application/pdf", b"%PDF")
    assert file_parts([a]) == [("a__X-Injected: 1.pdf", "application/pdf", b"%PDF")]


# ---- the rest simulator -------------------------------------------------------------------------


@pytest.fixture
async def province() -> AsyncIterator[tuple[ProvinceSimulator, str]]:
    sim = ProvinceSimulator(SimulatorSettings(region=HANDLER, latency=0.01))
    port = await sim.start("127.0.0.1", 0)
    try:
        yield sim, f"http://127.0.0.1:{port}"
    finally:
        await sim.stop()


async def test_the_simulator_refuses_a_file_its_list_does_not_give(province) -> None:
    sim, url = province
    forged = {**ATTACHMENTS[0], "sha256": hashlib.sha256(b"another file").hexdigest()}
    case = replace(CASE, attachments=(forged, ATTACHMENTS[1]))
    adapter = multipart(url)
    async with aiohttp.ClientSession() as session:
        outcome = await adapter.submit(case, context(session))
    # Classified exactly as the same refusal of a JSON submit.
    refusal = orjson.dumps({"code": MATERIAL_MISMATCH, "msg": "申请材料校验失败"})
    assert outcome == adapter.classify(200, refusal, None, case)
    assert outcome == Permanent(f"partner refused the request (HTTP 200, code {MATERIAL_MISMATCH})")
    assert sim.partner_view(CASE.case_id) is None
    assert sim.counters["attachment_problems"] == 1


async def test_the_simulator_takes_an_upload_as_it_takes_json(province) -> None:
    sim, url = province
    async with aiohttp.ClientSession() as session:
        outcome = await multipart(url).submit(CASE, context(session))
    assert isinstance(outcome, Accepted) and outcome.updates[0].status == "dispatched"
    view = sim.partner_view(CASE.case_id)
    assert view is not None and view["ticket"] == outcome.partner_ref
    assert [(f["name"], f["media_type"], f["size"]) for f in sim.received_files(CASE.case_id)] == [
        ("户口簿.pdf", "application/pdf", len(HUKOU)),
        ("photo.jpg", "image/jpeg", len(PHOTO)),
    ]
    assert sim.counters["attachments_verified"] == 2


# ---- through the gateway ------------------------------------------------------------------------


async def test_a_case_uploaded_as_multipart_completes_with_its_supplement(tmp_path: Path) -> None:
    """The handling province takes materials only as uploads; the case goes all the way, and the
    files it holds are the ones the origin sent."""
    handler = simulator(HANDLER, 0)
    port = await handler.start("127.0.0.1", 0)
    table = {"kind": "rest_json", "base_url": f"http://127.0.0.1:{port}",
             "attachment_transport": "multipart"}  # fmt: skip
    hukou = attachment("户口簿.pdf", "application/pdf", HUKOU)
    proof = attachment("居住证明.jpg", "image/jpeg", PHOTO)
    try:
        async with world(tmp_path, partner_settings={HANDLER: {"adapter": table}}) as w:
            handler.settings.gateway_url = w.sims[HANDLER].settings.gateway_url
            filing = {**medical_filing("ZJ-MP-1-SUPPLEMENT"), "attachments": [hukou]}
            status, case, _ = await w.origin.call("POST", "/v1/cases", filing)
            assert status == 202, case
            case_id = case["case_id"]

            async def status_is(wanted: str) -> bool:
                return bool((await w.origin.case(case_id))["status"] == wanted)

            await wait_for(lambda: status_is("supplement_required"), what="补正 asked")
            status, _, _ = await w.origin.call(
                "POST", f"/v1/cases/{case_id}/supplements",
                {"note": "已补充居住证明", "attachments": [proof]},
            )  # fmt: skip
            assert status == 200
            await wait_for(lambda: status_is("completed"), what="completed after the supplement")
            done = await w.origin.case(case_id)
            assert done["outcome"] == "approved" and done["partner_ref"]
    finally:
        await handler.stop()
    assert [(f["name"], f["media_type"], f["sha256"], f["size"])
            for f in handler.received_files(case_id)] == [
        ("户口簿.pdf", "application/pdf", hukou["sha256"], len(HUKOU)),
        ("居住证明.jpg", "image/jpeg", proof["sha256"], len(PHOTO)),
    ]  # fmt: skip
    assert handler.counters["attachments_verified"] == 2
    assert "attachment_problems" not in handler.counters


# ---- settings -----------------------------------------------------------------------------------

LINK = "https://gw.example/v1/partners/510000/attachments/"


@pytest.mark.parametrize(
    ("given", "transport"),
    [({}, "inline"), ({"attachment_url": LINK}, "url"),
     ({"attachment_transport": "url", "attachment_url": LINK}, "url"),
     ({"attachment_transport": "inline"}, "inline"),
     ({"attachment_transport": "multipart", "multipart_file_field": "file[]"}, "multipart")],
    ids=str,
)  # fmt: skip
def test_attachment_forms(given: dict[str, Any], transport: str) -> None:
    assert RestJsonSettings(base_url="http://p", **given).transport == transport


@pytest.mark.parametrize(
    ("bad", "key", "problem"),
    [
        ({"attachment_transport": "url"}, "attachment_transport", "'url' needs attachment_url"),
        ({"attachment_transport": "multipart", "attachment_url": LINK}, "attachment_url",
         "not used with attachment_transport = 'multipart'"),
        ({"attachment_transport": "inline", "attachment_url": LINK}, "attachment_url",
         "not used with attachment_transport = 'inline'"),
        ({"multipart_body_field": "data"}, "multipart_body_field",
         "only used with attachment_transport = 'multipart'"),
        ({"attachment_url": LINK, "multipart_file_field": "file"}, "multipart_file_field",
         "only used with attachment_transport = 'multipart'"),
        ({"attachment_transport": "multipart", "multipart_body_field": "files"},
         "multipart_file_field", "must differ from multipart_body_field"),
        ({"attachment_transport": "multipart", "multipart_file_field": 'a"b'},
         "multipart_file_field", "should match pattern"),
        ({"attachment_transport": "ftp"}, "attachment_transport", "should be 'inline'"),
    ],
    ids=str,
)  # fmt: skip
def test_attachment_settings_that_make_no_sense_are_refused_naming_the_key(
    bad: dict[str, Any], key: str, problem: str
) -> None:
    table = {"kind": "rest_json", "base_url": "http://127.0.0.1:9", **bad}
    config = gateway_config("sqlite:///unused.db", 0, {ORIGIN: 9, HANDLER: 9}, 9,
                            partner_settings={HANDLER: {"adapter": table}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        build_adapters(config)
    message = str(info.value)
    assert message.startswith("partners[1].adapter: ")
    assert key in message and problem in message

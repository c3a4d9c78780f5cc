"""``async_ticket`` sending attachments as ``rest_json`` does (``adapters/uploads.py``): a multipart
upload of materials (申请材料) as a signed partner receives it, a supplement uploaded too, links
instead of content, the ticket simulator taking uploads and refusing a file its list does not
give, a case through the gateway, and the settings that make no sense."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import BodyPartReader, hdrs, web
from pydantic import ValidationError

from adapters.async_ticket import AsyncTicketAdapter, AsyncTicketSettings
from adapters.rest_json import RestJsonSettings
from adapters.sdk import Accepted, Permanent
from gateway.simulators.ticket import (
    MATERIAL_MISMATCH,
    TicketProvinceSimulator,
    TicketSimulatorSettings,
)
from tests.support import HANDLER, medical_filing, wait_for, world
from tests.test_adapter_async_ticket import APP_KEY, APP_SECRET, CASE, NAME, context, double
from tests.test_adapter_async_ticket import (
    test_bad_mapping_settings_are_refused_at_start_naming_the_key as refused_naming_the_key,
)
from tests.test_rest_json_multipart import (
    HUKOU,
    LINK,
    PHOTO,
    Part,
    Received,
    attachment,
    json_part,
    without_content,
)

ATTACHMENTS = (
    attachment("户口簿.pdf", "application/pdf", HUKOU),
    attachment("photo.jpg", "image/jpeg", PHOTO),
    # Listed without content (the origin never sent it): in the list, with no file part.
    without_content(attachment("居住证明.ofd", "application/ofd", b"not sent")),
)
UPLOADED = replace(CASE, attachments=ATTACHMENTS)
PROOF = attachment("补充材料（第2页）.png", "image/png", b"\x89PNG more")


def ticket_adapter(base_url: str, **settings: Any) -> AsyncTicketAdapter:
    return AsyncTicketAdapter(AsyncTicketSettings(base_url=base_url, app_key=APP_KEY,
                                                  app_secret=APP_SECRET, **settings))  # fmt: skip


def signed(headers: Mapping[str, str]) -> bool:
    """The partner's own check of the app-key signature, as on a JSON call."""
    ts = headers.get("X-Timestamp", "")
    sign = hashlib.sha256(f"{APP_KEY}{APP_SECRET}{ts}".encode()).hexdigest()
    fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
    return headers.get("X-App-Key") == APP_KEY and headers.get("X-Sign") == sign and fresh


@asynccontextmanager
async def recording_partner() -> AsyncIterator[tuple[str, list[Received]]]:
    """A ticket partner that takes every request whose signature holds, recording it (each part
    of an upload as it arrived), and refuses one whose signature does not."""
    received: list[Received] = []

    async def take(request: web.Request) -> web.Response:
        if not signed(request.headers):
            return web.json_response({"code": "E401", "msg": "签名校验失败"}, status=401)
        got = Received(request.path, request.headers.get(hdrs.CONTENT_TYPE, ""))
        received.append(got)
        if request.content_type != "multipart/form-data":
            got.body = await request.read()
            return web.json_response({"code": "0", "ticket": "SL51-9"})
        async for part in await request.multipart():
            assert isinstance(part, BodyPartReader)
            content = bytes(await part.read())
            got.parts.append(Part(name=part.name, filename=part.filename, content=content,
                                  content_type=part.headers.get(hdrs.CONTENT_TYPE),
                                  disposition=part.headers[hdrs.CONTENT_DISPOSITION]))  # fmt: skip
        return web.json_response({"code": "0", "ticket": "SL51-9"})

    async with double(take) as url:
        yield url, received


# ---- what a partner receives --------------------------------------------------------------------


async def test_a_signed_submit_uploads_each_file_with_its_name_media_type_and_bytes() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        adapter = ticket_adapter(url, attachment_transport="multipart")
        assert await adapter.submit(UPLOADED, ctx) == Accepted(partner_ref="SL51-9")
    (got,) = received  # its signature held, though it covers no body
    assert got.path == "/tickets" and got.content_type.startswith("multipart/form-data; boundary=")
    # First the JSON body that an inline submit sends, its attachments without their content ...
    inline = ticket_adapter(url).render(UPLOADED)
    assert inline["applicant"]["name"] == NAME and inline["attachments"] == list(ATTACHMENTS)
    listed = [without_content(a) for a in ATTACHMENTS]
    assert json_part(got) == {**inline, "attachments": listed} == adapter.render(UPLOADED)
    # ... then one file part per attachment with content, the Chinese name as UTF-8 (as a browser
    # sends it, never percent-encoded); the one listed without content has none.
    uploaded = [(p.name, p.filename, p.content_type, p.content) for p in got.parts[1:]]
    assert uploaded == [("files", "户口簿.pdf", "application/pdf", HUKOU),
                        ("files", "photo.jpg", "image/jpeg", PHOTO)]  # fmt: skip
    hukou = got.parts[1].disposition
    assert hukou == 'form-data; name="files"; filename="户口簿.pdf"' and "%E6" not in hukou


async def test_a_supplement_is_uploaded_too_and_a_withdrawal_stays_json() -> None:
    fields = {"multipart_body_field": "data", "multipart_file_field": "file[]"}
    material = {"note": "已补充", "payload": {"x": 1}, "attachments": [PROOF]}
    held = replace(UPLOADED, partner_ref="SL51-9")
    async with recording_partner() as (url, received), context() as ctx:
        adapter = ticket_adapter(url, attachment_transport="multipart", **fields)
        outcomes = [await adapter.supplement(held, material, ctx),
                    await adapter.withdraw(held, "撤回", ctx)]  # fmt: skip
    assert outcomes == [Accepted(), Accepted()]
    assert material["attachments"] == [PROOF]  # the job's material is left as it was
    supplement, withdrawal = received
    assert supplement.path == "/tickets/SL51-9/supplements"
    expected = {"caseId": CASE.case_id, "note": "已补充", "payload": {"x": 1},
                "attachments": [without_content(PROOF)]}  # fmt: skip
    assert json_part(supplement, "data") == expected
    uploaded = [(p.name, p.filename, p.content_type, p.content) for p in supplement.parts[1:]]
    assert uploaded == [("file[]", "补充材料（第2页）.png", "image/png", b"\x89PNG more")]
    assert (withdrawal.path, withdrawal.content_type) == ("/tickets/SL51-9/withdraw",
                                                          "application/json")  # fmt: skip
    assert withdrawal.parts == []
    assert orjson.loads(withdrawal.body) == {"caseId": CASE.case_id, "reason": "撤回"}


async def test_by_reference_the_body_lists_links_instead_of_content() -> None:
    async with recording_partner() as (url, received), context() as ctx:
        adapter = ticket_adapter(url, attachment_url=LINK)
        assert await adapter.submit(UPLOADED, ctx) == Accepted(partner_ref="SL51-9")
        held = replace(UPLOADED, partner_ref="SL51-9")
        assert await adapter.supplement(held, {"note": "补充", "attachments": [PROOF]},
                                        ctx) == Accepted()  # fmt: skip
    submit, supplement = (orjson.loads(r.body) for r in received)
    assert all(r.content_type == "application/json" for r in received)
    assert submit["attachments"] == [
        {**without_content(a), "url": LINK + a["sha256"]} for a in ATTACHMENTS
    ]
    assert supplement["attachments"] == [{**without_content(PROOF), "url": LINK + PROOF["sha256"]}]


async def test_content_that_is_not_base64_is_permanent_and_nothing_is_sent() -> None:
    broken = {**ATTACHMENTS[1], "content_base64": "户口簿!"}
    async with recording_partner() as (url, received), context() as ctx:
        adapter = ticket_adapter(url, attachment_transport="multipart")
        outcome = await adapter.submit(replace(CASE, attachments=(ATTACHMENTS[0], broken)), ctx)
    assert outcome == Permanent("cannot render the case: attachments[1].content_base64: not base64")
    assert received == []


# ---- the ticket simulator -----------------------------------------------------------------------


@asynccontextmanager
async def ticket_province(**kw: Any) -> AsyncIterator[TicketProvinceSimulator]:
    settings = TicketSimulatorSettings(region=HANDLER, app_key=APP_KEY, app_secret=APP_SECRET,
                                       **{"latency": 0.02, **kw})  # fmt: skip
    sim = TicketProvinceSimulator(settings, rng=random.Random(3))
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


async def test_the_simulator_takes_a_signed_upload_as_it_takes_json() -> None:
    async with ticket_province() as sim, context() as ctx:
        outcome = await ticket_adapter(sim.url, attachment_transport="multipart").submit(
            UPLOADED, ctx
        )
        assert isinstance(outcome, Accepted) and outcome.partner_ref
        view = sim.partner_view(CASE.case_id)
        assert view is not None and view["ticket"] == outcome.partner_ref
    assert [(f["name"], f["media_type"], f["size"]) for f in sim.received_files(CASE.case_id)] == [
        ("户口簿.pdf", "application/pdf", len(HUKOU)),
        ("photo.jpg", "image/jpeg", len(PHOTO)),
    ]
    assert sim.counters["attachments_verified"] == 2 and sim.counters["auth_failures"] == 0


async def test_the_simulator_refuses_a_file_its_list_does_not_give() -> None:
    forged = {**ATTACHMENTS[0], "sha256": hashlib.sha256(b"another file").hexdigest()}
    async with ticket_province() as sim, context() as ctx:
        adapter = ticket_adapter(sim.url, attachment_transport="multipart")
        outcome = await adapter.submit(replace(CASE, attachments=(forged, ATTACHMENTS[1])), ctx)
    # Classified exactly as the same refusal of a JSON submit.
    refusal = orjson.dumps({"code": MATERIAL_MISMATCH, "msg": "申请材料校验失败"})
    assert outcome == adapter.classify(200, refusal, None)
    assert outcome == Permanent(f"refused (code {MATERIAL_MISMATCH})")
    assert sim.partner_view(CASE.case_id) is None
    assert sim.counters["attachment_problems"] == 1 and sim.counters["submits"] == 0


# ---- through the gateway ------------------------------------------------------------------------


async def test_a_case_uploaded_as_multipart_completes_with_its_supplement(tmp_path: Path) -> None:
    """The handling province takes materials only as signed uploads to its tickets; the case
    goes all the way by polling, and the files it holds are the ones the origin sent."""
    hukou = attachment("户口簿.pdf", "application/pdf", HUKOU)
    proof = attachment("居住证明.jpg", "image/jpeg", PHOTO)
    async with ticket_province(latency=0.05) as sim:
        table = {"kind": "async_ticket", "base_url": sim.url, "mode": "poll", "poll_interval": 0.05,
                 "app_key": APP_KEY, "app_secret": APP_SECRET,
                 "attachment_transport": "multipart"}  # fmt: skip
        async with world(tmp_path, partner_settings={HANDLER: {"adapter": table}}) as w:

            async def reached(case_id: str, wanted: str) -> bool:
                return bool((await w.origin.case(case_id))["status"] == wanted)

            filing = {**medical_filing("ZJ-TKU-1-SUPPLEMENT"), "attachments": [hukou]}
            created = await w.origin.call("POST", "/v1/cases", filing)
            assert created[0] == 202, created
            case_id = created[1]["case_id"]
            await wait_for(lambda: reached(case_id, "supplement_required"), what="补正 polled")
            material = {"note": "已补充居住证明", "attachments": [proof]}
            answer = await w.origin.call("POST", f"/v1/cases/{case_id}/supplements", material)
            assert answer[0] == 200, answer
            await wait_for(lambda: reached(case_id, "completed"), what="completed after 补正")
            done = await w.origin.case(case_id)
        view = sim.partner_view(case_id)
        assert view is not None and view["finished"] and done["partner_ref"] == view["ticket"]
        assert done["outcome"] == "approved"
        held = [(f["name"], f["media_type"], f["sha256"], f["size"])
                for f in sim.received_files(case_id)]  # fmt: skip
        assert held == [("户口簿.pdf", "application/pdf", hukou["sha256"], len(HUKOU)),
                        ("居住证明.jpg", "image/jpeg", proof["sha256"], len(PHOTO))]  # fmt: skip
        assert sim.counters["attachments_verified"] == 2 and sim.counters["supplements"] == 1
        assert "attachment_problems" not in sim.counters


# ---- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        ({"attachment_transport": "url"}, "attachment_transport"),
        ({"attachment_transport": "multipart", "attachment_url": LINK}, "attachment_url"),
        ({"attachment_transport": "inline", "attachment_url": LINK}, "attachment_url"),
        ({"multipart_body_field": "data"}, "multipart_body_field"),
        ({"attachment_url": LINK, "multipart_file_field": "file"}, "multipart_file_field"),
        ({"attachment_transport": "multipart", "multipart_body_field": "files"},
         "multipart_file_field"),
        ({"attachment_transport": "multipart", "multipart_file_field": "file name"},
         "multipart_file_field"),
        ({"attachment_url": "ftp://gw.example/"}, "attachment_url"),
        ({"attachment_transport": "ftp"}, "attachment_transport"),
    ],
    ids=str,
)  # fmt: skip
def test_attachment_settings_that_make_no_sense_are_refused_naming_the_key_as_for_rest_json(
    bad: dict[str, Any], key: str
) -> None:
    """The same keys mean the same in both adapters: the same table is refused for the same
    reason, and at start the reason names the key."""
    with pytest.raises(ValidationError) as ticket:
        ticket_adapter("http://127.0.0.1:9", **bad)
    with pytest.raises(ValidationError) as rest:
        RestJsonSettings(base_url="http://127.0.0.1:9", **bad)
    reason = [(e["loc"], e["msg"]) for e in ticket.value.errors()]
    assert reason == [(e["loc"], e["msg"]) for e in rest.value.errors()]
    first = reason[0][1].removeprefix("Value error, ")
    refused_naming_the_key(bad, key, first)

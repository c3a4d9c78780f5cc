"""Attachments: stored by SHA-256, and fetched by reference by the partner that handles the case."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from adapters.rest_json import RestJsonAdapter
from adapters.sdk import CanonicalCase
from tests.support import HANDLER, medical_filing, world

CONTENT = "《居住证明》浙江省杭州市".encode()
SHA = hashlib.sha256(CONTENT).hexdigest()


def with_attachment(request_id: str) -> dict[str, object]:
    attachment = {"name": "居住证明.pdf", "media_type": "application/pdf", "sha256": SHA,
                  "content_base64": base64.b64encode(CONTENT).decode()}  # fmt: skip
    return {**medical_filing(request_id), "attachments": [attachment]}


async def test_the_handler_fetches_an_attachment_by_reference_and_no_one_else(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", with_attachment("ZJ-ATT-1"))
        assert status == 202, case
        path = f"/v1/partners/{HANDLER}/attachments/{SHA}"
        status, body, _ = await w.handler.call("GET", path)
        assert status == 200 and body == CONTENT
        status, _, _ = await w.origin.call("GET", path)  # not the handler's key
        assert status == 403
        status, _, _ = await w.handler.call("GET", f"/v1/partners/{HANDLER}/attachments/{'0' * 64}")
        assert status == 404


def test_rest_json_sends_a_reference_instead_of_the_content_when_configured() -> None:
    prefix = "https://gateway.example/v1/partners/510000/attachments/"
    settings = RestJsonAdapter.Settings.model_validate(
        {"kind": "rest_json", "base_url": "http://partner", "attachment_url": prefix}
    )
    case = CanonicalCase(
        case_id="C1", request_id="R1", item_code="KSTB-YB-001", contract_version=1,
        origin_region="330000", handling_region="510000", applicant={}, payload={},
        attachments=({"name": "a.pdf", "media_type": "application/pdf", "sha256": SHA,
                      "content_base64": "AAAA"},),
    )  # fmt: skip
    (sent,) = RestJsonAdapter(settings).render(case)["attachments"]
    assert sent["url"] == prefix + SHA and "content_base64" not in sent


async def test_a_supplements_attachments_are_checked_and_kept_like_a_submissions(
    tmp_path: Path, store_url: str
) -> None:
    async with world(tmp_path, store=store_url) as w:
        w.sims[HANDLER].set_down(True)  # the case waits at the gateway; the report is ours
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-ATT-2"))
        assert status == 202, case
        case_id = case["case_id"]
        ask = {"reports": [{"caseId": case_id, "statusCode": "6", "eventId": "ask-1"}]}
        status, _, _ = await w.handler.call("POST", f"/v1/partners/{HANDLER}/inbound", ask)
        assert status == 200
        good = {"name": "居住证明.pdf", "media_type": "application/pdf", "sha256": SHA,
                "content_base64": base64.b64encode(CONTENT).decode()}  # fmt: skip
        path = f"/v1/cases/{case_id}/supplements"
        for bad, field in (({"content_base64": "not base64!"}, "content_base64"),
                           ({"sha256": "0" * 64}, "sha256")):  # fmt: skip
            body = {"note": "补充居住证明", "attachments": [{**good, **bad}]}
            status, problem, _ = await w.origin.call("POST", path, body)
            assert status == 422, problem
            assert [e["loc"] for e in problem["errors"]] == [["attachments", 0, field]]
            assert (await w.origin.case(case_id))["status"] == "supplement_required"
        status, answered, _ = await w.origin.call("POST", path, {"attachments": [good]})
        assert status == 200 and answered["status"] != "supplement_required", answered
        # The supplement's material is kept, for the handler to fetch by reference.
        blob = f"/v1/partners/{HANDLER}/attachments/{SHA}"
        status, content, _ = await w.handler.call("GET", blob)
        assert status == 200 and content == CONTENT
        status, _, _ = await w.origin.call("GET", blob)  # not the handler's key
        assert status == 403

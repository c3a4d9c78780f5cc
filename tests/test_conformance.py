"""The conformance kit against ``rest_json``: a double of its partner, the built-in adapter passing
every rule, a polling variant passing the polling rules, and broken adapters failing by name."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import Field

from adapters.conformance import (
    RULES,
    SAMPLE_ID_NUMBER,
    Behaviour,
    ConformanceSuite,
    HarnessError,
    HttpPartnerDouble,
    RuleBroken,
    mutations,
)
from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import (
    AdapterContext,
    AdapterSettings,
    CanonicalCase,
    Outcome,
    Permanent,
    StatusUpdate,
)

pytest_plugins = ["pytester"]

# The partner's names, as the double's settings rename them (rest_json's ``field_map``).
FIELD_MAP = {"caseId": "bizNo", "applicant": "sqr"}
STATUS_CODES = {
    "dispatched": "1",
    "accepted": "3",
    "rejected": "4",
    "supplement_required": "6",
    "in_progress": "8",
    "completed": "11",
}
OUTCOMES = {"approved": "准予", "denied": "不予"}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


class RestJsonDouble(HttpPartnerDouble):
    """A ``rest_json`` partner on loopback (port 0) that misbehaves on demand.

    Takes ``POST /cases`` (a repeat of a case gets its ticket again), supplements and withdrawals,
    and answers ``GET /cases/{ref}/status`` with what :meth:`settle` stored (for polling). Its
    refusals and errors quote the applicant, as real partners' messages do.
    """

    def __init__(self) -> None:
        super().__init__()
        self._tickets: dict[str, str] = {}
        self._settled: dict[str, dict[str, Any]] = {}
        self._quote = ""

    # -- PartnerDouble ------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/cases", self._submit)
        app.router.add_post("/cases/{ref}/supplements", self._follow_up)
        app.router.add_post("/cases/{ref}/withdraw", self._follow_up)
        app.router.add_get("/cases/{ref}/status", self._status)

    def adapter_settings(self) -> dict[str, Any]:
        return {"base_url": self._url, "timeout": 0.5, "field_map": dict(FIELD_MAP)}

    def native_report(
        self,
        case_id: str,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
        partner_ref: str,
    ) -> bytes:
        return orjson.dumps(
            {"reports": [self._report(case_id, partner_ref, status, outcome, result)]}
        )

    def settle(
        self,
        case_id: str,
        partner_ref: str | None,
        status: str,
        outcome: str | None,
        result: Mapping[str, Any],
    ) -> None:
        ref = partner_ref or case_id
        self._settled[ref] = self._report(case_id, ref, status, outcome, result)

    # -- the partner's side ---------------------------------------------------------------------

    @staticmethod
    def _report(
        case_id: str, ref: str, status: str, outcome: str | None, result: Mapping[str, Any]
    ) -> dict[str, Any]:
        report: dict[str, Any] = {
            "caseId": case_id,
            "ticket": ref,
            "statusCode": STATUS_CODES[status],
            "eventId": f"{ref}-{STATUS_CODES[status]}",
        }
        if outcome is not None:
            report["outcome"] = OUTCOMES[outcome]
        if result:
            report["result"] = dict(result)
        if status in ("rejected", "supplement_required"):
            report["message"] = "申请材料不齐全"
        return report

    async def _misbehave(self) -> web.StreamResponse | None:
        quote = self._quote
        match self.mode:
            case "ok" | "down":
                return None
            case "timeout":
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 5.0)
                return _json({"code": "503"}, status=503)
            case "http_500":
                return _json({"code": "E500", "msg": f"数据库异常 {quote}"}, status=500)
            case "http_429":
                return _json({"code": "429", "msg": quote}, 429, {"Retry-After": "1"})
            case "refuse":
                return _json({"code": "E1001", "msg": f"证件号码与姓名不匹配: {quote}"})
            case "busy_in_body":
                return _json({"code": "BUSY", "msg": f"系统繁忙 {quote}"})
            case "garbage":
                return web.Response(
                    text=f"<html><body>系统维护中 {quote}</body></html>", content_type="text/html"
                )
        raise AssertionError(self.mode)  # pragma: no cover

    async def _read(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        assert isinstance(body, dict)
        self._received.append(body)
        applicant = body.get(FIELD_MAP["applicant"])
        if isinstance(applicant, dict):
            values = (applicant.get(k) for k in ("id_number", "name", "phone"))
            self._quote = " ".join(str(v) for v in values if v)
        return body

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if (answer := await self._misbehave()) is not None:
            return answer
        case_id = body.get(FIELD_MAP["caseId"])
        if not isinstance(case_id, str) or not case_id:
            return _json({"code": "E1000", "msg": "缺少 bizNo"})
        ticket = self._tickets.setdefault(case_id, f"SC{len(self._tickets) + 1:010d}")
        return _json({"code": "0", "ticket": ticket, "statusCode": "1"})

    async def _follow_up(self, request: web.Request) -> web.StreamResponse:
        await self._read(request)
        if (answer := await self._misbehave()) is not None:
            return answer
        ref = request.match_info["ref"]
        if ref not in self._tickets.values() and ref not in self._tickets:
            return _json({"code": "E404", "msg": "未找到该办件"}, status=404)
        return _json({"code": "0"})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        if (answer := await self._misbehave()) is not None:
            return answer
        return _json({"code": "0", "report": self._settled.get(request.match_info["ref"])})


# ---- the built-in adapter passes --------------------------------------------------------------


class TestRestJsonConformance(ConformanceSuite):
    adapter_class = RestJsonAdapter
    double_factory = RestJsonDouble
    native_fields: ClassVar[Mapping[str, str]] = {
        "case_id": "bizNo",
        "item_code": "itemCode",
        "id_number": "sqr.id_number",
        "name": "sqr.name",
    }


# ---- a polling variant passes the polling rules ---------------------------------------------


class PollingRestJsonSettings(RestJsonSettings):
    kind: Literal["rest_json_polling"] = "rest_json_polling"  # type: ignore[assignment]
    status_path: str = "/cases/{ref}/status"
    poll_interval: float = Field(30.0, gt=0)


class PollingRestJsonAdapter(RestJsonAdapter):
    """``rest_json`` plus asking ``GET /cases/{ref}/status`` for each open case."""

    kind: ClassVar[str] = "rest_json_polling"
    Settings: ClassVar[type[AdapterSettings]] = PollingRestJsonSettings

    def __init__(self, settings: AdapterSettings) -> None:
        assert isinstance(settings, PollingRestJsonSettings)
        super().__init__(settings)
        self.status_path = settings.status_path
        self.poll_interval = settings.poll_interval

    async def poll(
        self, open_cases: Sequence[CanonicalCase], ctx: AdapterContext
    ) -> list[StatusUpdate]:
        updates = []
        timeout = aiohttp.ClientTimeout(total=min(self.settings.timeout, ctx.timeout))
        for case in open_cases:
            path = self.status_path.format(ref=case.partner_ref or case.case_id)
            url = self.settings.base_url.rstrip("/") + path
            try:
                async with ctx.session.get(url, timeout=timeout) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        continue
                answer = orjson.loads(raw)
                report = answer.get("report") if isinstance(answer, dict) else None
                if isinstance(report, dict):
                    updates.append(self._update(report, case.case_id))
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                ctx.logger.warning("poll of case %s failed: %s", case.case_id, type(exc).__name__)
        return updates


class TestPollingRestJsonConformance(ConformanceSuite):
    adapter_class = PollingRestJsonAdapter
    double_factory = RestJsonDouble
    # no native_fields: the kit looks for each value anywhere in the partner's request


# ---- broken adapters, and suites for them (not collected here: no ``Test`` prefix) ----------


class LogsIdNumberAdapter(RestJsonAdapter):
    """Breaks rule 21: logs the applicant's ID number."""

    async def submit(self, case: CanonicalCase, ctx: AdapterContext) -> Outcome:
        ctx.logger.info("submitting %s for %s", case.case_id, case.applicant["id_number"])
        return await super().submit(case, ctx)


class ServerErrorIsPermanentAdapter(RestJsonAdapter):
    """Breaks rule 9 (and 14): takes HTTP 5xx for a refusal."""

    def classify(
        self, status: int, raw: bytes, retry_after: str | None, case: CanonicalCase
    ) -> Outcome:
        if status >= 500:
            return Permanent(f"partner answered HTTP {status}")
        return super().classify(status, raw, retry_after, case)


class LooseResultAdapter(RestJsonAdapter):
    """Breaks rule 20: a result that is not an object makes parse_inbound raise TypeError."""

    def _update(self, report: Mapping[str, Any], case_id: str | None) -> StatusUpdate:
        update = super()._update(report, case_id)
        return dataclasses.replace(update, data={**(report.get("result") or {})})


class CaseWideEventIdAdapter(RestJsonAdapter):
    """Breaks rule 25: takes the case's ticket for the report's own id, so every report of a
    case carries the same one."""

    def _update(self, report: Mapping[str, Any], case_id: str | None) -> StatusUpdate:
        update = super()._update(report, case_id)
        return dataclasses.replace(update, partner_event_id=str(report.get("ticket")))


class LogsIdNumberSuite(TestRestJsonConformance):
    adapter_class = LogsIdNumberAdapter


class ServerErrorIsPermanentSuite(TestRestJsonConformance):
    adapter_class = ServerErrorIsPermanentAdapter


class LooseResultSuite(TestRestJsonConformance):
    adapter_class = LooseResultAdapter


class CaseWideEventIdSuite(TestRestJsonConformance):
    adapter_class = CaseWideEventIdAdapter


class NoRateLimitDouble(RestJsonDouble):
    async def behave(self, mode: Behaviour) -> None:
        if mode == "http_429":
            raise NotImplementedError(mode)
        await super().behave(mode)


class NoRateLimitSuite(TestRestJsonConformance):
    double_factory = NoRateLimitDouble


def _suite_run(pytester: pytest.Pytester, suite: str) -> pytest.RunResult:
    """Run the whole suite against one adapter in a fresh pytest session."""
    pytester.makepyfile(
        test_outside=f"""
        from tests.test_conformance import {suite}


        class TestOutside({suite}):
            pass
        """
    )
    # Without pytest-asyncio: the kit runs its own event loops.
    return pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-p", "no:asyncio")


def test_the_suite_has_a_check_per_rule() -> None:
    tests = sorted(n for n in dir(ConformanceSuite) if n.startswith("test_rule_"))
    assert len(tests) == len(RULES) >= 15
    for number, name in enumerate(tests, start=1):
        assert name.startswith(f"test_rule_{number:02d}_")
        assert getattr(ConformanceSuite, name).__doc__.startswith(f"Rule {number}:")


def test_an_adapter_that_logs_the_id_number_fails_rule_21(pytester: pytest.Pytester) -> None:
    result = _suite_run(pytester, "LogsIdNumberSuite")
    result.assert_outcomes(passed=len(RULES) - 3, failed=1, skipped=2)
    result.stdout.fnmatch_lines(["*rule 21 (no personal data in logs): this output carries*"])
    result.stdout.fnmatch_lines(["FAILED *test_rule_21_no_personal_data_in_logs*"])
    # The kit's own messages redact the number (pytest's "Captured log" section shows the leak).
    assert not [line for line in result.outlines if "rule 21" in line and SAMPLE_ID_NUMBER in line]


def test_an_adapter_that_takes_500_for_permanent_fails_rule_9(pytester: pytest.Pytester) -> None:
    result = _suite_run(pytester, "ServerErrorIsPermanentSuite")
    result.assert_outcomes(passed=len(RULES) - 4, failed=2, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "*rule 9 (HTTP 5xx is retryable): submit during partner behaviour 'http_500' "
            "returned Permanent(reason='partner answered HTTP 500'), expected Retryable*"
        ]
    )
    result.stdout.fnmatch_lines(["*rule 14 (supplement and withdraw classified): supplement*"])
    failed = {line.split("::")[-1].split()[0] for line in result.outlines if "FAILED" in line}
    assert failed == {
        "test_rule_09_http_5xx_is_retryable",
        "test_rule_14_supplement_and_withdraw_classified",
    }


def test_a_rule_can_be_run_directly(tmp_path: Path) -> None:
    with pytest.raises(RuleBroken, match=r"^rule 9 \(HTTP 5xx is retryable\): submit during"):
        ServerErrorIsPermanentSuite().run_rule(9, tmp_path)
    with pytest.raises(AssertionError, match=r"^rule 21 \(no personal data in logs\)") as info:
        LogsIdNumberSuite().run_rule(21)
    assert SAMPLE_ID_NUMBER not in str(info.value)
    TestRestJsonConformance().run_rule(9, tmp_path)  # the built-in adapter passes


def test_mutated_reports_catch_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(RuleBroken, match=r"^rule 20 .*parse_inbound raised TypeError"):
        LooseResultSuite().run_rule(20, tmp_path)
    LooseResultSuite().run_rule(17, tmp_path)  # a valid report still reads back


def test_one_event_id_for_every_report_of_a_case_breaks_rule_25(tmp_path: Path) -> None:
    with pytest.raises(RuleBroken, match=r"^rule 25 .*both carry partner event id"):
        CaseWideEventIdSuite().run_rule(25, tmp_path)
    TestRestJsonConformance().run_rule(25, tmp_path)  # the built-in adapter passes


def test_a_behaviour_the_double_cannot_produce_skips_its_rule(tmp_path: Path) -> None:
    with pytest.raises(pytest.skip.Exception, match="cannot simulate 'http_429'"):
        NoRateLimitSuite().run_rule(10, tmp_path)
    NoRateLimitSuite().run_rule(15, tmp_path)  # sweeps use the behaviours it has


def test_a_suite_without_an_adapter_is_a_harness_error(tmp_path: Path) -> None:
    class Incomplete(ConformanceSuite):
        double_factory = RestJsonDouble

    with pytest.raises(HarnessError, match="adapter_class is not set"):
        Incomplete().run_rule(4, tmp_path)


def test_json_mutations_are_deterministic_and_varied() -> None:
    body = RestJsonDouble().native_report("C1", "completed", "approved", {"a": "b"}, "T1")
    first, second = list(mutations(body)), list(mutations(body))
    assert first == second
    labels = [label for label, _ in first]
    assert "/reports/0/result = 1.5" in labels
    assert "/reports/0/statusCode removed" in labels
    assert any(label.startswith("cut to") for label in labels)

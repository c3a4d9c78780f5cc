"""Routes and handlers. Each handler authenticates, calls one service method, renders JSON.

The route table below is also the source of the OpenAPI document (:mod:`gateway.http.openapi`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway import errors, logs, models
from gateway.audit_ops import AuditOps
from gateway.contract_ops import ContractOps
from gateway.http import docs
from gateway.http.auth import Authenticator
from gateway.metrics import Metrics
from gateway.partner_ops import PartnerOps
from gateway.service import CaseService
from gateway.store.base import Store, StoreWriteFailed

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str
    summary: str
    auth: str  # "province", "reader", "partner", "viewer", "operator", "none"
    body: type[BaseModel] | None = None
    responses: tuple[tuple[int, type[BaseModel] | None], ...] = ()
    query: tuple[tuple[str, str], ...] = ()


@dataclass
class HttpDeps:
    service: CaseService
    auth: Authenticator
    metrics: Metrics
    store: Store
    is_ready: Callable[[], bool]
    openapi: Callable[[], dict[str, Any]]
    contracts: ContractOps
    partners: PartnerOps
    audit: AuditOps
    adapter_kinds: Mapping[str, type[Any]]
    format_kinds: Mapping[str, type[Any]]


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def problem(err: errors.ApiError) -> web.Response:
    return web.Response(
        body=orjson.dumps(err.problem()),
        status=err.status,
        content_type=PROBLEM,
        headers=err.headers,
    )


def _require_json(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise errors.UnsupportedMedia("send the body as application/json")


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise errors.invalid(["query", name], "must be a non-negative integer")
    return int(raw)


def handlers(d: HttpDeps) -> dict[str, Handler]:
    s, a = d.service, d.auth

    async def submit_case(request: web.Request) -> web.Response:
        body = await a.body(request)
        origin = await a.province(request, body)
        _require_json(request)
        status, case = await s.submit(origin, body)
        return json(case, status)

    async def get_case(request: web.Request) -> web.Response:
        caller = await a.reader(request, await a.body(request))
        return json(await s.get(caller, request.match_info["case_id"]))

    async def list_cases(request: web.Request) -> web.Response:
        caller = await a.reader(request, await a.body(request))
        q = request.query
        page = await s.list_cases(
            caller, q.get("status"), q.get("item_code"), _int(request, "limit", 50), q.get("cursor")
        )
        return json(page)

    async def supplement(request: web.Request) -> web.Response:
        body = await a.body(request)
        origin = await a.province(request, body)
        _require_json(request)
        return json(await s.supplement(origin, request.match_info["case_id"], body))

    async def withdraw(request: web.Request) -> web.Response:
        body = await a.body(request)
        origin = await a.province(request, body)
        return json(await s.withdraw(origin, request.match_info["case_id"], body))

    async def feed(request: web.Request) -> web.Response:
        region = await a.province(request, await a.body(request))
        limit = _int(request, "limit", 100)
        return json(await s.feed(region, request.query.get("after"), limit))

    async def inbound(request: web.Request) -> web.Response:
        body = await a.body(request)
        region = request.match_info["region"]
        await a.partner(request, region, body)
        return json(await s.inbound(region, body, request.headers))

    async def attachment(request: web.Request) -> web.Response:
        region = request.match_info["region"]
        await a.partner(request, region, await a.body(request))
        content = await s.attachment(region, request.match_info["sha256"])
        return web.Response(body=content, content_type="application/octet-stream")

    async def partners_health(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.partners.health())

    async def adapter_kinds(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(d.partners.kinds(d.adapter_kinds, d.format_kinds))

    async def partner_pause(request: web.Request) -> web.Response:
        caller = a.operator(request, "operator")
        region = request.match_info["region"]
        return json(await d.partners.pause(region, True, caller.operator or ""))

    async def partner_resume(request: web.Request) -> web.Response:
        caller = a.operator(request, "operator")
        region = request.match_info["region"]
        return json(await d.partners.pause(region, False, caller.operator or ""))

    async def dead_letters(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await s.dead_letters(_int(request, "limit", 100)))

    async def replay(request: web.Request) -> web.Response:
        caller = a.operator(request, "operator")
        raw = orjson.loads(await a.body(request) or b"{}")
        ids = raw.get("case_ids") if isinstance(raw, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise errors.invalid(["body", "case_ids"], "a list of case ids is required")
        return json(await s.replay(ids, caller.operator or ""))

    async def audit_case(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.audit.case(request.match_info["case_id"]))

    async def audit_verify(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.audit.verify())

    async def contracts_active(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.contracts.active())

    async def contracts_revisions(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.contracts.history(_int(request, "limit", 50)))

    async def contracts_item(request: web.Request) -> web.Response:
        a.operator(request, "viewer")
        return json(await d.contracts.item(request.match_info["item_code"]))

    async def contracts_validate(request: web.Request) -> web.Response:
        a.operator(request, "operator")
        return json(await d.contracts.validate(await a.body(request)))

    async def contracts_publish(request: web.Request) -> web.Response:
        caller = a.operator(request, "operator")
        note = request.query.get("note", "")
        published = await d.contracts.publish(await a.body(request), caller.operator or "", note)
        return json(published, 201)

    async def contracts_rollback(request: web.Request) -> web.Response:
        caller = a.operator(request, "admin")
        raw = await a.body(request)
        try:
            revision = orjson.loads(raw or b"{}").get("revision")
        except (orjson.JSONDecodeError, AttributeError):
            revision = None
        if not isinstance(revision, int) or isinstance(revision, bool):
            raise errors.invalid(["body", "revision"], "an integer revision number is required")
        return json(await d.contracts.rollback(revision, caller.operator or ""), 201)

    async def healthz(request: web.Request) -> web.Response:
        return json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = d.is_ready()
        return json({"ready": ready}, 200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        stats = dict(await d.store.stats(time.time())) if d.store.ready else {}
        years = d.service.contracts.calendar.years()
        stats["calendar_last_year"] = float(years[-1]) if years else 0.0
        return web.Response(
            body=d.metrics.render(stats), content_type="text/plain", charset="utf-8"
        )

    async def openapi(request: web.Request) -> web.Response:
        return json(d.openapi())

    page: list[str] = []  # the rendered docs, once

    async def api_docs(request: web.Request) -> web.Response:
        if not page:
            page.append(docs.render(d.openapi()))
        return web.Response(text=page[0], content_type="text/html", charset="utf-8")

    return {
        name: fn for name, fn in locals().items() if callable(fn) and name not in ("s", "a", "d")
    }


ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/cases", "submit_case", "Submit a case", "province", models.CaseSubmission,
          ((202, models.Case), (200, models.Case))),
    Route("GET", "/v1/cases", "list_cases", "The caller's cases, newest first", "reader",
          responses=((200, models.CaseList),),
          query=(("status", "string"), ("item_code", "string"), ("limit", "integer"),
                 ("cursor", "string"))),
    Route("GET", "/v1/cases/{case_id}", "get_case", "One case with its history and deliveries",
          "reader", responses=((200, models.Case),)),
    Route("POST", "/v1/cases/{case_id}/supplements", "supplement",
          "Answer a supplement_required (补正)", "province", models.Supplement,
          ((200, models.Case),)),
    Route("POST", "/v1/cases/{case_id}/withdraw", "withdraw", "Withdraw a case (撤件)", "province",
          models.Withdrawal, ((200, models.Case),)),
    Route("GET", "/v1/events", "feed", "The caller's event feed, resumable by cursor", "province",
          responses=((200, models.EventFeed),), query=(("after", "string"), ("limit", "integer"))),
    Route("POST", "/v1/partners/{region}/inbound", "inbound",
          "A handling partner's own message, parsed by its adapter", "partner",
          responses=((200, models.InboundResult),)),
    Route("GET", "/v1/partners/{region}/attachments/{sha256}", "attachment",
          "An attachment of a case the partner handles, or of a supplement sent to it (for "
          "adapters that send references)",
          "partner"),
    Route("GET", "/v1/ops/partners", "partners_health",
          "Partner health: circuit, queue depth, oldest waiting, counts, last error", "viewer"),
    Route("GET", "/v1/ops/adapters", "adapter_kinds",
          "Installed adapter kinds and recipient formats, and their settings (JSON Schema)",
          "viewer"),
    Route("POST", "/v1/ops/partners/{region}/pause", "partner_pause",
          "Stop calling a partner (its jobs wait)", "operator"),
    Route("POST", "/v1/ops/partners/{region}/resume", "partner_resume",
          "Call a paused partner again", "operator"),
    Route("GET", "/v1/ops/dead-letters", "dead_letters", "Dead-lettered jobs", "viewer",
          query=(("limit", "integer"),)),
    Route("POST", "/v1/ops/dead-letters/replay", "replay",
          "Send the dead-lettered jobs of cases on again", "operator"),
    Route("GET", "/v1/ops/contracts", "contracts_active",
          "The contract list in force: items and their versions", "viewer"),
    Route("GET", "/v1/ops/contracts/revisions", "contracts_revisions",
          "Published revisions, newest first", "viewer", query=(("limit", "integer"),)),
    Route("GET", "/v1/ops/contracts/items/{item_code}", "contracts_item",
          "One service item with all its versions", "viewer"),
    Route("POST", "/v1/ops/contracts/validate", "contracts_validate",
          "Check a candidate list: errors and a diff against the list in force; changes nothing",
          "operator"),
    Route("POST", "/v1/ops/contracts/publish", "contracts_publish",
          "Publish a candidate list as a new revision (published versions are immutable)",
          "operator", query=(("note", "string"),)),
    Route("POST", "/v1/ops/contracts/rollback", "contracts_rollback",
          "Publish an earlier revision's list again as the newest revision", "admin"),
    Route("GET", "/v1/ops/audit/cases/{case_id}", "audit_case",
          "A case's audit entries, oldest first", "viewer", responses=((200, models.CaseAudit),)),
    Route("GET", "/v1/ops/audit/verify", "audit_verify",
          "Verify the whole audit chain against the stored events and revisions", "viewer",
          responses=((200, models.AuditVerification),)),
    Route("GET", "/healthz", "healthz", "Liveness", "none"),
    Route("GET", "/readyz", "readyz", "Readiness: store open and migrated, workers running",
          "none"),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", "none"),
    Route("GET", "/openapi.json", "openapi", "This API as OpenAPI 3.1", "none"),
    Route("GET", "/docs", "api_docs", "This API as a page to read", "none"),
)  # fmt: skip


MONITORING = frozenset({"healthz", "readyz", "metrics"})  # what a workers-only process serves


def build_app(d: HttpDeps, max_body: int, only: frozenset[str] | None = None) -> web.Application:
    """The HTTP application: every route, or only those named in ``only``."""
    app = web.Application(client_max_size=max_body, middlewares=[_middleware(d.metrics)])
    table = handlers(d)
    for r in ROUTES:
        if only is None or r.name in only:
            app.router.add_route(r.method, r.path, table[r.name], name=r.name)
    return app


def _from_http(exc: web.HTTPException) -> errors.ApiError:
    """aiohttp's own answers (unknown path, wrong method) as problems too."""
    allow = exc.headers.get("Allow")
    err = errors.ApiError(exc.reason, headers={"Allow": allow} if allow else None)
    err.status, err.title = exc.status, exc.reason
    return err


UNAVAILABLE = errors.Unavailable(
    "the store is unavailable and nothing was acknowledged; retry later (a repeated submission "
    "with the same request_id is never accepted twice)",
    headers={"Retry-After": "1"},
)


def _middleware(metrics: Metrics) -> Any:
    @web.middleware
    async def errors_as_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.name or "unmatched"
        try:
            response = await handler(request)
        except errors.ApiError as err:
            response = problem(err)
        except web.HTTPRequestEntityTooLarge:
            response = problem(errors.TooLarge("the body is too large"))
        except web.HTTPException as exc:
            response = problem(_from_http(exc))
        except StoreWriteFailed:
            log.error("store write failed in %s", route)
            response = problem(UNAVAILABLE)
        except Exception as exc:
            # Only the exception type and where it happened: the message could carry input.
            log.error("unhandled %s in %s", logs.failure(exc), route)
            response = problem(errors.ApiError("an internal error occurred; nothing was changed"))
        metrics.on_http(route, response.status, time.perf_counter() - started)
        return response

    return errors_as_problems

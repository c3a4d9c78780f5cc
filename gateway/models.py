"""The API's data shapes (SPEC §4), as pydantic models; the OpenAPI document is built from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag

from gateway.identifier_exceptions import CreditCodeOrListed, check_document, check_id_type
from gateway.identifiers import RegionCode

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# 证件类型 (the id_type code table: 111 居民身份证, 414 普通护照, 516 港澳居民来往内地通行证 …) and
# the document's number, checked by that type (see gateway.identifiers.document_problem).
IdType = Annotated[
    str,
    Field(pattern=r"^[0-9A-Z]{1,3}$", examples=["111"]),
    AfterValidator(check_id_type),
]
DocumentNumber = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(check_document)]


class NaturalPerson(Strict):
    kind: Literal["natural_person"] = "natural_person"
    id_type: IdType = "111"
    id_number: DocumentNumber
    name: Annotated[str, Field(min_length=1, max_length=64)]
    phone: Annotated[str, Field(pattern=r"^(\+?86)?1[3-9]\d{9}$|^0\d{2,3}-?\d{7,8}$")] | None = None


class Representative(Strict):
    id_type: IdType = "111"
    id_number: DocumentNumber
    name: Annotated[str, Field(min_length=1, max_length=64)]
    phone: Annotated[str, Field(pattern=r"^(\+?86)?1[3-9]\d{9}$")] | None = None


class LegalPerson(Strict):
    kind: Literal["legal_person"]
    credit_code: CreditCodeOrListed
    name: Annotated[str, Field(min_length=1, max_length=200)]
    representative: Representative


def _applicant_kind(value: Any) -> str:
    """A natural person needs no ``kind``; a legal person says ``kind: legal_person``."""
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return str(kind or "natural_person")


Applicant = Annotated[
    Annotated[NaturalPerson, Tag("natural_person")] | Annotated[LegalPerson, Tag("legal_person")],
    Discriminator(_applicant_kind),
]


class Attachment(Strict):
    kind: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="the contract's material kind (申请材料), when the contract names kinds"
    )
    name: Annotated[str, Field(min_length=1, max_length=255)]
    media_type: Annotated[str, Field(pattern=r"^[\w.+-]+/[\w.+-]+$")]
    sha256: Sha256Hex
    content_base64: str | None = None


class CaseSubmission(Strict):
    """Body of ``POST /v1/cases``."""

    request_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w.:-]+$")]
    item_code: Annotated[str, Field(min_length=1, max_length=64)]
    contract_version: Annotated[int, Field(ge=1)] | None = None
    handling_region: RegionCode | None = None
    applicant: Applicant
    payload: dict[str, Any] = Field(default_factory=dict)
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)


class Supplement(Strict):
    """Body of ``POST /v1/cases/{case_id}/supplements``: the material the handler asked for."""

    note: Annotated[str, Field(max_length=2000)] = ""
    payload: dict[str, Any] = Field(default_factory=dict)
    attachments: list[Attachment] = Field(default_factory=list, max_length=50)


class Withdrawal(Strict):
    """Body of ``POST /v1/cases/{case_id}/withdraw`` (may be empty)."""

    reason: Annotated[str, Field(max_length=500)] = ""


class Event(BaseModel):
    """One status change of a case, exactly as recipients receive it."""

    event_id: str
    case_id: str
    seq: int
    status: str
    outcome: str | None = None
    at: str
    item_code: str
    contract_version: int
    origin_region: str
    handling_region: str
    data: dict[str, Any] = Field(default_factory=dict)


class AuditEntry(BaseModel):
    """One link of the audit chain (see the operator guide, "The audit chain")."""

    audit_id: int
    at: str
    kind: str = Field(description="event, ignored, replay, revision, pause or resume")
    case_id: str | None
    ref: str = Field(description="the event id, the ignored status, or the revision number")
    actor: str = Field(description="origin:REGION, partner:REGION, gateway, or an operator")
    digest: str = Field(description="SHA-256 of what the entry records")
    prev_hash: str
    hash: str


class CaseAudit(BaseModel):
    case_id: str
    entries: list[AuditEntry]


class AuditProblem(BaseModel):
    audit_id: int
    reason: str


class AuditVerification(BaseModel):
    verified: bool
    entries_checked: int
    last_hash: str | None = Field(description="the newest entry's hash, when all is verified")
    first_problem: AuditProblem | None


class DeliveryState(BaseModel):
    recipient: str
    acked_seq: int
    head_seq: int
    waiting: int = Field(description="events not yet acknowledged")
    attempts: int = Field(description="failed attempts on the oldest waiting event")
    next_attempt_at: str | None
    last_error: str | None


class Leg(BaseModel):
    """One leg of a multi-site case (多地联办), worked by one region in its turn."""

    index: int = Field(description="1 for the first leg")
    region: str
    title: str
    status: str = Field(description="the leg's own status; `waiting` until its turn comes")
    outcome: str | None
    result: dict[str, Any] | None
    partner_ref: str | None


class Case(BaseModel):
    """A case as the API returns it."""

    case_id: str
    request_id: str
    item_code: str
    contract_version: int
    mode: str
    origin_region: str
    handling_region: str
    status: str
    outcome: str | None
    result: dict[str, Any] | None
    partner_ref: str | None = None
    created_at: str
    updated_at: str
    deadline: str | None = Field(
        description="承诺时限: working days from receipt, clock stopped during 补正"
    )
    time_limit_stopped: bool = Field(description="the clock is stopped: waiting for a supplement")
    overdue: bool = Field(description="past the deadline and not yet decided")
    legs: list[Leg] | None = Field(
        default=None, description="multi_site only: every leg in order; null for other modes"
    )
    history: list[Event]
    deliveries: list[DeliveryState]
    ignored: list[dict[str, Any]] = Field(
        default_factory=list,
        description="partner reports the state machine refused (late, duplicate, out of order)",
    )


class CaseSummary(BaseModel):
    case_id: str
    request_id: str
    item_code: str
    contract_version: int
    origin_region: str
    handling_region: str
    status: str
    outcome: str | None
    created_at: str
    updated_at: str
    deadline: str | None = Field(description="when the time limit (承诺时限) runs out")
    overdue: bool = Field(description="past the deadline and not decided")


class CaseList(BaseModel):
    cases: list[CaseSummary]
    next: str | None = Field(description="cursor for the next page, null at the end")


class EventFeed(BaseModel):
    events: list[Event]
    next: str = Field(description="pass as ?after= to resume exactly after the last event")


class InboundResult(BaseModel):
    applied: int
    ignored: int
    details: list[dict[str, Any]]


class ValidationItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[ValidationItem] | None = None

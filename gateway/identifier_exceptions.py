"""The operators' exception list: legacy identifiers that fail their own check character.

Real registers hold a few citizen ID numbers (GB 11643) and unified social credit codes
(GB 32100) issued with a check character that does not match. Operators list them in
``identifier_exceptions.json`` in the contract list folder; the list is part of the contract list
and is published with it in every revision.

A listed value is accepted, although its check character fails, by ``id_card`` and
``credit_code`` payload fields and by the applicant's ``id_number`` and ``credit_code`` (the
representative's ``id_number`` too). Every other rule of its standard still applies: length,
alphabet, and for an ID number its address code and birth date. A value that has its standard's
shape and a matching check character needs no exception and cannot be listed.

The values are personal data: no error message, log line or diff repeats one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.identifiers import (
    CITIZEN_ID_DOCUMENTS,
    credit_check_char,
    credit_code_problem,
    document_problem,
    id_check_char,
    id_number_problem,
)

Kind = Literal["id_card", "credit_code"]
KINDS: tuple[Kind, ...] = ("id_card", "credit_code")
PROBLEM: Mapping[Kind, Callable[[str], str | None]] = {
    "id_card": id_number_problem,
    "credit_code": credit_code_problem,
}
_CHECK_CHAR: Mapping[Kind, Callable[[str], str]] = {
    "id_card": id_check_char,
    "credit_code": credit_check_char,
}
# What the eighteenth character may be: GB 11643 0-9 and X; GB 32100 the code's own alphabet.
_CHECK_CHARACTERS: Mapping[Kind, str] = {
    "id_card": "0123456789X",
    "credit_code": "0123456789ABCDEFGHJKLMNPQRTUWXY",
}
# The keys of a pydantic validation context (see ``context``): the exception list, and the
# identity document types (证件类型) the contract list's ``id_type`` code table admits.
CONTEXT_KEY = "identifier_exceptions"
ID_TYPES_KEY = "id_types"


def why_not_listable(kind: Kind, value: str) -> str | None:
    """None if ``value`` (upper case) has its standard's shape and fails only its check character;
    otherwise why it cannot be an exception. The answer never repeats the value."""
    problem = PROBLEM[kind](value)
    if problem is None:
        return "the check character matches: the value needs no exception"
    if len(value) != 18 or value[17] not in _CHECK_CHARACTERS[kind]:
        return problem
    try:
        repaired = value[:17] + _CHECK_CHAR[kind](value[:17])
    except (KeyError, ValueError):  # a character outside the standard's alphabet
        return problem
    return PROBLEM[kind](repaired)


class ExceptionEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    value: str = Field(description="the identifier, as the register holds it")
    note: str = Field(
        min_length=1, description="why it is listed: the register, its record, who confirmed it"
    )

    @field_validator("value")
    @classmethod
    def _upper(cls, v: str) -> str:
        return v.strip().upper()


def _distinct_and_listable(kind: Kind) -> AfterValidator:
    def check(entries: list[ExceptionEntry]) -> list[ExceptionEntry]:
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            problem = why_not_listable(kind, entry.value)
            if problem is not None:
                raise ValueError(f"entry {i}: {problem}")
            if entry.value in seen:
                raise ValueError(f"entry {i}: listed twice")
            seen.add(entry.value)
        return entries

    return AfterValidator(check)


IdCardEntries = Annotated[list[ExceptionEntry], _distinct_and_listable("id_card")]
CreditCodeEntries = Annotated[list[ExceptionEntry], _distinct_and_listable("credit_code")]


class IdentifierExceptions(BaseModel):
    """The content of ``identifier_exceptions.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    note: str = Field("", description="what the file is for (free text)")
    id_card: IdCardEntries = Field(default_factory=list, description="GB 11643 ID numbers")
    credit_code: CreditCodeEntries = Field(
        default_factory=list, description="GB 32100 unified social credit codes"
    )
    _values: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _index(self) -> IdentifierExceptions:
        self._values = {kind: frozenset(e.value for e in self.entries(kind)) for kind in KINDS}
        return self

    def entries(self, kind: Kind) -> list[ExceptionEntry]:
        entries: list[ExceptionEntry] = getattr(self, kind)
        return entries

    def admits(self, kind: Kind, value: str) -> bool:
        """True if ``value`` (upper case) is listed and fails nothing but its check character."""
        return value in self._values.get(kind, ()) and why_not_listable(kind, value) is None

    def values(self, kind: Kind) -> frozenset[str]:
        return self._values.get(kind, frozenset())


NO_EXCEPTIONS = IdentifierExceptions()


def context(
    exceptions: IdentifierExceptions, id_types: Collection[str] | None = None
) -> dict[str, Any]:
    """A pydantic validation context that lets the applicant's identifiers use the list, and
    (when given) holds the applicant to the document types of the list's code table."""
    return {CONTEXT_KEY: exceptions, ID_TYPES_KEY: id_types}


def _listed(ctx: Any) -> IdentifierExceptions | None:
    listed = ctx.get(CONTEXT_KEY) if isinstance(ctx, dict) else None
    return listed if isinstance(listed, IdentifierExceptions) else None


def check_id_type(value: str, info: ValidationInfo) -> str:
    """An applicant's document type: one of the code table's, where the context has one."""
    admitted = info.context.get(ID_TYPES_KEY) if isinstance(info.context, dict) else None
    if admitted is not None and value not in admitted:
        raise ValueError("not a document type of the id_type code table")
    return value


def check_document(value: str, info: ValidationInfo) -> str:
    """An applicant's document number, by the document type validated before it: a citizen ID
    number (GB 11643, or on the exception list) where the document carries one, the document's
    own shape otherwise. A number whose type was refused is not checked again."""
    upper = value.upper()
    id_type = info.data.get("id_type")
    if not isinstance(id_type, str):
        return upper
    problem = document_problem(id_type, upper)
    if problem is not None:
        listed = _listed(info.context)
        citizen = id_type in CITIZEN_ID_DOCUMENTS
        if not (citizen and listed is not None and listed.admits("id_card", upper)):
            raise ValueError(problem)
    return upper


def checker(kind: Kind, exceptions: IdentifierExceptions) -> Callable[[str], str]:
    """The check of one identifier field: upper-cased, valid or listed, else ``ValueError``."""
    problem_of = PROBLEM[kind]
    admits = exceptions.admits

    def check(value: str) -> str:
        upper = value.upper()
        problem = problem_of(upper)
        if problem is not None and not admits(kind, upper):
            raise ValueError(problem)
        return upper

    return check


def _with_context(kind: Kind) -> AfterValidator:
    problem_of = PROBLEM[kind]

    def check(value: str, info: ValidationInfo) -> str:
        upper = value.upper()
        problem = problem_of(upper)
        if problem is not None:
            listed = _listed(info.context)
            if not (listed is not None and listed.admits(kind, upper)):
                raise ValueError(problem)
        return upper

    return AfterValidator(check)


# A legal person's credit code: as ``gateway.identifiers.CreditCode``, plus the values listed in
# the exception list that the validation context carries (see ``context``). A natural person's
# document number is checked by ``check_document``.
CreditCodeOrListed = Annotated[str, _with_context("credit_code")]

"""How a case's attachments travel in a JSON-over-HTTP request: inline, by reference, or as a
multipart upload.

``rest_json`` and ``async_ticket`` send the same JSON body, and an operator chooses for either how
its attachments (each ``{"name", "media_type", "sha256", "content_base64"?}``) go with it, with the
same settings meaning the same (``attachment_transport``):

- ``inline`` (the default): in the JSON body as they are, the content base64;
- ``url``: by reference, each with ``url`` = ``attachment_url`` + its sha256 instead of the
  content (the gateway's ``GET /v1/partners/{region}/attachments/{sha256}``); ``attachment_url``
  alone means this form;
- ``multipart``: an upload of materials (申请材料). Submit and supplement are
  ``multipart/form-data``: one part (``multipart_body_field``) holding the JSON body with its
  attachments listed without their content, and one file part (``multipart_file_field``) per
  attachment that has content, named as the attachment, of its media type, with its bytes. File
  names go as UTF-8, unescaped, as browsers send them (aiohttp's default would percent-encode
  户口簿.pdf, and a platform would keep the escapes as the name); control characters, which a
  part's headers cannot carry, become ``_``. Content that is not base64 is a RenderError naming
  the attachment's index, never its content.

Withdrawals carry no attachments: they are JSON in every form. :class:`AttachmentSettings` is the
settings both adapters' settings extend; :class:`Uploads` compiles them once. Everything here is
pure except :meth:`Uploads.request_body`, which builds (never sends) the request's body.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

import aiohttp
import orjson
from pydantic import Field, model_validator

from adapters.body_mapping import RenderError
from adapters.sdk import AdapterSettings

Transport = Literal["inline", "url", "multipart"]
FilePart = tuple[str, str, bytes]  # (file name, media type, bytes)

# A multipart form field name: what platforms use (``case``, ``files``, ``file[]``), quoted as is.
_FIELD_NAME = r"^[A-Za-z0-9_.\[\]-]{1,64}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # not allowed in a part's headers: replaced by "_"
_JSON = "application/json"
_JSON_UTF8 = "application/json; charset=utf-8"


class AttachmentSettings(AdapterSettings):
    """The attachment settings; an adapter's settings extend this to offer them."""

    attachment_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="send attachments by reference: this URL prefix + sha256 (the gateway's "
        "GET /v1/partners/{region}/attachments/{sha256}); unset: inline base64",
    )
    attachment_transport: Transport | None = Field(
        None,
        description="how attachments travel: inline (base64 in the JSON body), url (by "
        "reference, with attachment_url) or multipart (submit and supplement as "
        "multipart/form-data, one file part per attachment); unset: url when attachment_url is "
        "set, else inline",
    )
    multipart_body_field: str = Field(
        "case", pattern=_FIELD_NAME, description="multipart: the part holding the JSON body"
    )
    multipart_file_field: str = Field(
        "files", pattern=_FIELD_NAME, description="multipart: the name of every file part"
    )

    @property
    def transport(self) -> Transport:
        """The attachment form in effect (``attachment_url`` alone means ``url``)."""
        if self.attachment_transport is not None:
            return self.attachment_transport
        return "url" if self.attachment_url else "inline"

    @model_validator(mode="after")
    def _attachment_settings(self) -> Self:
        given = self.attachment_transport
        if given == "url" and not self.attachment_url:
            raise ValueError("attachment_transport: 'url' needs attachment_url")
        if given in ("inline", "multipart") and self.attachment_url:
            raise ValueError(f"attachment_url: not used with attachment_transport = {given!r}")
        for key in ("multipart_body_field", "multipart_file_field"):
            if key in self.model_fields_set and self.transport != "multipart":
                raise ValueError(f"{key}: only used with attachment_transport = 'multipart'")
        if self.multipart_body_field == self.multipart_file_field:
            raise ValueError("multipart_file_field: must differ from multipart_body_field")
        return self


def file_parts(attachments: Sequence[Mapping[str, Any]]) -> list[FilePart]:
    """The file parts of a multipart upload, ``(file name, media type, bytes)`` in the order of
    ``attachments``; one without content has none. Pure.

    RenderError (naming the attachment's index, never its content) when the content is not
    base64.
    """
    parts = []
    for i, a in enumerate(attachments):
        content = a.get("content_base64")
        if content is None:
            continue
        try:
            if not isinstance(content, str):
                raise ValueError(content)
            raw = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise RenderError(f"attachments[{i}].content_base64: not base64") from None
        name = str(a.get("name") or a.get("sha256") or "attachment")
        media_type = str(a.get("media_type") or "application/octet-stream")
        parts.append((_CONTROL.sub("_", name), _CONTROL.sub("_", media_type), raw))
    return parts


class Uploads:
    """One adapter's attachment settings, compiled once."""

    def __init__(self, settings: AttachmentSettings) -> None:
        self.transport = settings.transport
        self._prefix = settings.attachment_url or ""
        self._body_field = settings.multipart_body_field
        self._file_field = settings.multipart_file_field

    def listed(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """An attachment as the JSON body lists it (a copy): inline, with its base64 content; by
        reference, with ``url`` instead; for a multipart upload, without its content (the bytes
        go in a file part)."""
        item = copy.deepcopy(dict(a))
        if self.transport == "url":
            item.pop("content_base64", None)
            item["url"] = self._prefix + str(a.get("sha256", ""))
        elif self.transport == "multipart":
            item.pop("content_base64", None)
        return item

    def files(self, attachments: Sequence[Mapping[str, Any]]) -> list[FilePart] | None:
        """The file parts when attachments go as multipart, else None (a JSON body); RenderError
        as :func:`file_parts`."""
        return file_parts(attachments) if self.transport == "multipart" else None

    def supplement(
        self, material: Mapping[str, Any]
    ) -> tuple[Mapping[str, Any], list[FilePart] | None]:
        """A supplement's material with its attachments listed for the transport (the given
        material is left as it was), and its file parts as :meth:`files`."""
        given = material.get("attachments")
        attachments = given if isinstance(given, list) else []
        files = self.files(attachments)
        if self.transport != "inline" and "attachments" in material:
            material = {**material, "attachments": [self.listed(a) for a in attachments]}
        return material, files

    def request_body(
        self, body: dict[str, Any], files: Sequence[FilePart] | None
    ) -> tuple[bytes | aiohttp.MultipartWriter, dict[str, str]]:
        """The request's data and its Content-Type header: ``body`` as JSON, or, given
        ``files``, ``multipart/form-data`` with the JSON body, then one part per file, names
        unescaped (``quote_fields=False``, see the module's docstring); the writer gives the
        multipart Content-Type with its boundary, so no header is returned for it."""
        if files is None:
            return orjson.dumps(body), {"Content-Type": _JSON}
        form = aiohttp.MultipartWriter("form-data")
        json_part = aiohttp.BytesPayload(orjson.dumps(body), content_type=_JSON_UTF8)
        form.append_payload(json_part).set_content_disposition(
            "form-data", quote_fields=False, name=self._body_field
        )
        for name, media_type, raw in files:
            part = form.append_payload(aiohttp.BytesPayload(raw, content_type=media_type))
            part.set_content_disposition(
                "form-data", quote_fields=False, name=self._file_field, filename=name
            )
        return form, {}

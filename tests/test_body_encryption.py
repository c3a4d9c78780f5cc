"""SM4 (国密) field encryption in the shared JSON body mapping: ``encrypted_fields`` and
``encryption`` of ``rest_json`` and ``async_ticket``.

The cipher is proved by the GB/T 32907-2016 test vector; the rest against partner doubles on
loopback, which decrypt what they receive with the shared key (here with ``cryptography``
directly, not through the gateway's code) and send encrypted result fields back.
"""

from __future__ import annotations

import base64
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7
from pydantic import ValidationError

from adapters.async_ticket import AsyncTicketAdapter, AsyncTicketSettings
from adapters.body_mapping import NO_CRYPTOGRAPHY, EncryptionSettings, FieldCipher
from adapters.rest_json import RestJsonAdapter, RestJsonSettings
from adapters.sdk import Accepted, Permanent, StatusUpdate, discover
from gateway.app import build_adapters
from gateway.config import ConfigError, problems
from tests.support import HANDLER, ORIGIN, gateway_config
from tests.test_adapter_async_ticket import (
    APP_KEY,
    APP_SECRET,
    ID_NUMBER,
    NAME,
    PHONE,
    context,
    double,
)
from tests.test_adapter_async_ticket import CASE as TICKET_CASE

# GB/T 32907-2016, appendix A, example 1: one block, key = plaintext.
VECTOR_KEY = "0123456789abcdeffedcba9876543210"
VECTOR_PLAIN = "0123456789abcdeffedcba9876543210"
VECTOR_CIPHER = "681edf34d206965e86b3e94f536e4246"

KEY = "8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e"
IV = "00112233445566778899aabbccddeeff"
APPLICANT_FIELDS = ["applicant.id_number", "applicant.name", "applicant.phone"]
CLEAR = {"id_number": ID_NUMBER, "name": NAME, "phone": PHONE}  # what the listed fields hold
ECB = {"mode": "ecb", "key": KEY, "output": "hex"}
CBC = {"mode": "cbc", "key": KEY, "iv": IV, "output": "base64"}

CASE = replace(
    TICKET_CASE,
    case_id="C01SM4TEST0000000000000001",
    applicant={**TICKET_CASE.applicant, "sex": "2"},
    attachments=({"name": "a.pdf", "media_type": "application/pdf", "sha256": "ab" * 32},),
)
APP = {"app_key": APP_KEY, "app_secret": APP_SECRET}


def sm4(mode: str = "ecb", iv: str | None = None) -> Cipher[Any]:
    """The partner's side of the cipher, built here straight from ``cryptography``."""
    chosen = modes.CBC(bytes.fromhex(iv)) if mode == "cbc" and iv else modes.ECB()
    return Cipher(algorithms.SM4(bytes.fromhex(KEY)), chosen)


def their_decrypt(token: str, output: str = "hex", mode: str = "ecb") -> str:
    raw = bytes.fromhex(token) if output == "hex" else base64.b64decode(token, validate=True)
    decryptor = sm4(mode, IV).decryptor()
    unpadder = PKCS7(128).unpadder()
    padded = decryptor.update(raw) + decryptor.finalize()
    return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")


def listed_in_clear(
    applicant: dict[str, Any], output: str = "hex", mode: str = "ecb"
) -> dict[str, str]:
    """The listed applicant fields as the partner reads them."""
    return {k: their_decrypt(applicant[k], output, mode) for k in CLEAR}


def their_encrypt(text: str, output: str = "hex", mode: str = "ecb") -> str:
    padder = PKCS7(128).padder()
    encryptor = sm4(mode, IV).encryptor()
    raw = encryptor.update(padder.update(text.encode()) + padder.finalize()) + encryptor.finalize()
    return raw.hex() if output == "hex" else base64.b64encode(raw).decode()


@asynccontextmanager
async def recording(reply: dict[str, Any]) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A partner double that keeps the raw body of every call and answers ``reply``."""
    received: list[bytes] = []

    async def take(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response(reply)

    async with double(take) as url:
        yield url, received


def rest(url: str = "http://127.0.0.1:9", **settings: Any) -> RestJsonAdapter:
    return RestJsonAdapter(RestJsonSettings.model_validate({"base_url": url, **settings}))


def ticket(url: str = "http://127.0.0.1:9", **settings: Any) -> AsyncTicketAdapter:
    table = {"base_url": url, **APP, **settings}
    return AsyncTicketAdapter(AsyncTicketSettings.model_validate(table))


# ---- the cipher ---------------------------------------------------------------------------------


def test_the_standard_vector_is_the_first_block_and_padding_a_whole_second_one() -> None:
    cipher = FieldCipher(EncryptionSettings(key=VECTOR_KEY))
    sealed = cipher.seal(bytes.fromhex(VECTOR_PLAIN))
    assert sealed[:16].hex() == VECTOR_CIPHER
    assert len(sealed) == 32  # a whole block of PKCS#7 padding after a whole block of data
    assert cipher.unseal(sealed).hex() == VECTOR_PLAIN


def test_text_goes_as_utf8_and_comes_back_in_hex_or_base64() -> None:
    as_hex = FieldCipher(EncryptionSettings(key=KEY)).encrypt(NAME)
    as_base64 = FieldCipher(EncryptionSettings(key=KEY, output="base64")).encrypt(NAME)
    assert as_hex == as_hex.lower() and len(as_hex) == 32  # 12 bytes of UTF-8 → one block
    assert base64.b64decode(as_base64) == bytes.fromhex(as_hex)
    assert their_decrypt(as_hex) == NAME == their_decrypt(as_base64, "base64")


# ---- outbound, over loopback --------------------------------------------------------------------


async def test_rest_json_sends_the_listed_applicant_fields_encrypted_and_the_rest_clear() -> None:
    async with recording({"code": "0", "ticket": "T-1"}) as (url, received), context() as ctx:
        a = rest(url, encrypted_fields=APPLICANT_FIELDS, encryption=ECB)
        assert await a.submit(CASE, ctx) == Accepted(partner_ref="T-1")
    [raw] = received
    assert not any(clear.encode() in raw for clear in CLEAR.values())
    sent = orjson.loads(raw)
    applicant = sent["applicant"]
    assert listed_in_clear(applicant) == CLEAR
    assert sent == {**rest().render(CASE), "applicant": {**CASE.applicant, **applicant}}
    assert applicant["id_type"] == "111" and applicant["sex"] == "2"  # not listed: clear


async def test_a_supplements_listed_form_fields_are_encrypted_too() -> None:
    material = {"note": "补充", "payload": {"contact_phone": "13900000000", "x": 1}}
    async with recording({"code": "0"}) as (url, received), context() as ctx:
        a = rest(url, encrypted_fields=["payload.contact_phone"], encryption=ECB)
        await a.supplement(CASE, material, ctx)
    [raw] = received
    assert b"13900000000" not in raw
    payload = orjson.loads(raw)["payload"]
    assert their_decrypt(payload["contact_phone"]) == "13900000000" and payload["x"] == 1


async def test_encryption_comes_after_code_tables_and_before_field_map_and_constants() -> None:
    settings = {
        "encrypted_fields": ["applicant.sex", "payload.start_date", "applicant.id_number"],
        "encryption": ECB,
        "code_tables": {"applicant.sex": {"1": "M", "2": "F"}},
        "date_formats": {"form.start_date": "yyyyMMdd"},
        "field_map": {"applicant.id_number": "sqr.zjhm"},
        "constants": {"sqr.zjhm_type": "SM4"},
    }
    async with recording({"code": "0", "ticket": "T-2"}) as (url, received), context() as ctx:
        assert isinstance(await rest(url, **settings).submit(CASE, ctx), Accepted)
    sent = orjson.loads(received[0])
    assert their_decrypt(sent["applicant"]["sex"]) == "F"  # their code, then encrypted
    assert their_decrypt(sent["form"]["start_date"]) == "20261201"  # their date, then encrypted
    assert their_decrypt(sent["sqr"]["zjhm"]) == ID_NUMBER  # encrypted, then moved
    assert sent["sqr"]["zjhm_type"] == "SM4" and "id_number" not in sent["applicant"]


async def test_cbc_with_the_shared_iv_in_base64() -> None:
    async with recording({"code": "0", "ticket": "T-3"}) as (url, received), context() as ctx:
        a = rest(url, encrypted_fields=APPLICANT_FIELDS, encryption=CBC)
        assert isinstance(await a.submit(CASE, ctx), Accepted)
    applicant = orjson.loads(received[0])["applicant"]
    assert listed_in_clear(applicant, "base64", "cbc") == CLEAR
    assert applicant["name"] != base64.b64encode(bytes.fromhex(their_encrypt(NAME))).decode()


async def test_async_ticket_sends_the_listed_applicant_fields_encrypted() -> None:
    async with recording({"code": "0", "ticket": "SL51-SM4"}) as (url, received), context() as ctx:
        a = ticket(url, encrypted_fields=APPLICANT_FIELDS, encryption=CBC)
        assert await a.submit(CASE, ctx) == Accepted(partner_ref="SL51-SM4")
    sent = orjson.loads(received[0])
    assert listed_in_clear(sent["applicant"], "base64", "cbc") == CLEAR
    assert sent == {**ticket().render(CASE), "applicant": {**CASE.applicant, **sent["applicant"]}}
    assert not any(clear.encode() in received[0] for clear in CLEAR.values())


async def test_scalars_go_as_their_json_text_and_null_or_absent_fields_stay_so() -> None:
    case = replace(CASE, applicant={"name": None, "id_type": 111, "verified": True},
                   payload={"income": 1234.5})  # fmt: skip
    fields = ["applicant.name", "applicant.phone", "applicant.id_type", "applicant.verified",
              "payload.income"]  # fmt: skip
    async with recording({"code": "0", "ticket": "T-4"}) as (url, received), context() as ctx:
        a = rest(url, encrypted_fields=fields, encryption=ECB)
        assert isinstance(await a.submit(case, ctx), Accepted)
    sent = orjson.loads(received[0])
    assert sent["applicant"]["name"] is None and "phone" not in sent["applicant"]
    assert their_decrypt(sent["applicant"]["id_type"]) == "111"
    assert their_decrypt(sent["applicant"]["verified"]) == "true"
    assert their_decrypt(sent["form"]["income"]) == "1234.5"


async def test_an_object_to_encrypt_is_permanent_naming_the_field_and_nothing_is_sent() -> None:
    case = replace(CASE, applicant={**CASE.applicant, "address": {"street": "人民南路一段 1 号"}})
    async with recording({"code": "0"}) as (url, received), context() as ctx:
        a = rest(url, encrypted_fields=["applicant.address"], encryption=ECB)
        outcome = await a.submit(case, ctx)
    assert outcome == Permanent("cannot render the case: applicant.address: holds a dict, "
                                "not a value to encrypt")  # fmt: skip
    assert received == []


# ---- inbound ------------------------------------------------------------------------------------

INBOUND: dict[str, Any] = {
    "encrypted_fields": ["result.holder_name", "result.holder.id_number", "result.sex",
                         "result.decided_at"],
    "code_tables": {"result.sex": {"1": "M", "2": "F"}},
    "date_formats": {"result.decided_at": "yyyyMMddHHmmss"},
}  # fmt: skip


def their_result(output: str, mode: str) -> dict[str, Any]:
    return {
        "holder_name": their_encrypt(NAME, output, mode),
        "holder": {"id_number": their_encrypt(ID_NUMBER, output, mode), "id_type": "1"},
        "sex": their_encrypt("F", output, mode),
        "decided_at": their_encrypt("20261201093000", output, mode),
        "certificate_no": "YB-1",
    }


OUR_RESULT = {"holder_name": NAME, "holder": {"id_number": ID_NUMBER, "id_type": "1"}, "sex": "2",
              "decided_at": "2026-12-01T09:30:00+08:00", "certificate_no": "YB-1"}  # fmt: skip


async def test_rest_json_decrypts_result_fields_before_codes_and_dates() -> None:
    answer = {"code": "0", "ticket": "T-5", "statusCode": "11", "outcome": "准予",
              "result": their_result("hex", "ecb")}  # fmt: skip
    async with recording(answer) as (url, _), context() as ctx:
        outcome = await rest(url, encryption=ECB, **INBOUND).submit(CASE, ctx)
    assert isinstance(outcome, Accepted)
    assert outcome.updates == (StatusUpdate("completed", case_id=CASE.case_id, partner_ref="T-5",
                                            outcome="approved", data=OUR_RESULT),)  # fmt: skip
    report = {"caseId": CASE.case_id, "statusCode": "11", "outcome": "1",
              "result": their_result("hex", "ecb")}  # fmt: skip
    callback = orjson.dumps({"reports": [report]})
    [update] = rest(encryption=ECB, **INBOUND).parse_inbound(callback, {})
    assert update.data == OUR_RESULT


async def test_async_ticket_decrypts_result_fields_of_a_polled_status() -> None:
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"code": "0", "ticket": "SL51-9", "caseId": CASE.case_id,
                                  "statusCode": "11", "outcome": "准予",
                                  "result": their_result("base64", "cbc")})  # fmt: skip

    async with double(status) as url, context() as ctx:
        a = ticket(url, mode="poll", encryption=CBC, **INBOUND)
        updates = await a.poll([replace(CASE, partner_ref="SL51-9")], ctx)
    assert updates == [StatusUpdate("completed", case_id=CASE.case_id, partner_ref="SL51-9",
                                    outcome="approved", data=OUR_RESULT)]  # fmt: skip


@pytest.mark.parametrize(
    "token",
    [
        "not a ciphertext",
        "0123456789abcdef",  # hex, but not a whole block
        VECTOR_CIPHER,  # a whole block, but not with this key: the padding does not check out
        "6E6F742D686578",  # hex of a short text
    ],
)
def test_a_value_that_does_not_decrypt_is_kept_and_never_echoed(
    token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    notice = {"ticket": "SL51-1", "statusCode": "11", "outcome": "1",
              "result": {"holder_name": token, "sex": their_encrypt("M")}}  # fmt: skip
    [update] = ticket(encryption=ECB, **INBOUND).parse_inbound(orjson.dumps(notice), {})
    assert update.data == {"holder_name": token, "sex": "1"}  # the others still decrypted
    assert all(token not in r.getMessage() and KEY not in r.getMessage() for r in caplog.records)


# ---- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "key", "problem"),
    [
        ({"encryption": {**ECB, "key": KEY[:30]}}, "encryption.key", "must be 32 hex digits"),
        ({"encryption": {**ECB, "key": KEY[:30] + "zz"}}, "encryption.key", "32 hex digits"),
        ({"encryption": {**ECB, "key": KEY + "00"}}, "encryption.key", "32 hex digits"),
        ({"encryption": {**CBC, "iv": IV[:8]}}, "encryption.iv", "must be 32 hex digits"),
        ({"encryption": {"mode": "cbc", "key": KEY}}, "encryption", "iv: required with mode"),
        ({"encryption": {**ECB, "iv": IV}}, "encryption", "iv: not used with mode = 'ecb'"),
        ({"encryption": {**ECB, "mode": "gcm"}}, "encryption.mode", "'ecb' or 'cbc'"),
        ({"encryption": {**ECB, "output": "b64"}}, "encryption.output", "'hex' or 'base64'"),
        ({"encryption": {"mode": "ecb"}}, "encryption.key", "Field required"),
        ({"encryption": ECB, "encrypted_fields": []}, "encryption",
         "no field is listed in encrypted_fields"),
        ({"encrypted_fields": ["applicant.name"]}, "encrypted_fields",
         "needs an encryption table"),
        ({"encryption": ECB, "encrypted_fields": ["handling.region"]}, "encrypted_fields",
         "'handling.region' does not start with a field of the request"),
        ({"encryption": ECB, "encrypted_fields": ["result"]}, "encrypted_fields",
         "'result' does not start with a field of the request"),
        ({"encryption": ECB, "encrypted_fields": ["payload.x", "form.x"]}, "encrypted_fields",
         "one field is named twice"),
    ],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("kind", ["rest_json", "async_ticket"])
def test_bad_encryption_settings_are_refused_at_start_naming_the_key(
    bad: dict[str, Any], key: str, problem: str, kind: str
) -> None:
    table = {"kind": kind, "base_url": "http://127.0.0.1:9", **APP, **bad}
    if kind == "rest_json":
        table = {k: v for k, v in table.items() if k not in APP}
    message = str(refusal(table).value)
    assert message.startswith("partners[1].adapter: ")
    assert key in message and problem in message
    assert KEY not in message and KEY[:30] not in message and IV not in message


def refusal(table: dict[str, Any]) -> pytest.ExceptionInfo[ConfigError]:
    config = gateway_config("sqlite:///unused.db", 0, {ORIGIN: 9, HANDLER: 9}, 9,
                            partner_settings={HANDLER: {"adapter": table}})  # fmt: skip
    with pytest.raises(ConfigError) as info:
        build_adapters(config, discover())
    return info


@pytest.mark.parametrize(
    "encryption",
    [
        {**CBC, "iv": None},  # the key is good, the table is not
        {**CBC, "mode": "ctr"},
        {**ECB, "unknown": KEY},
        {**ECB, "key": KEY + KEY},
        {**ECB, "key": KEY.upper()[:-1]},
    ],
    ids=str,
)
def test_the_key_never_appears_in_a_settings_error(encryption: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        RestJsonSettings.model_validate({"base_url": "http://x", "encryption": encryption,
                                         "encrypted_fields": APPLICANT_FIELDS})  # fmt: skip
    texts = [str(info.value), repr(info.value), *problems(info.value)]
    assert not any(KEY in t or KEY.upper()[:-1] in t or KEY[:16] in t for t in texts)


def test_the_key_may_come_from_the_environment_and_stays_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TONGBAN_TEST_SM4_KEY", KEY)
    table = {"kind": "rest_json", "base_url": "http://127.0.0.1:9",
             "encrypted_fields": ["applicant.name"],
             "encryption": {"key": {"env": "TONGBAN_TEST_SM4_KEY"}}}  # fmt: skip
    config = gateway_config("sqlite:///unused.db", 0, {ORIGIN: 9, HANDLER: 9}, 9,
                            partner_settings={HANDLER: {"adapter": table}})  # fmt: skip
    built = build_adapters(config, discover())[HANDLER]
    assert isinstance(built, RestJsonAdapter)
    assert their_decrypt(built.render(CASE)["applicant"]["name"]) == NAME
    assert KEY not in repr(built.settings) and KEY not in str(built.settings)


def test_without_cryptography_encryption_is_refused_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in ("cryptography", "cryptography.exceptions",
                   "cryptography.hazmat.primitives.ciphers"):  # fmt: skip
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    table = {"kind": "rest_json", "base_url": "http://127.0.0.1:9",
             "encrypted_fields": ["applicant.name"], "encryption": ECB}  # fmt: skip
    message = str(refusal(table).value)
    assert "encryption" in message and NO_CRYPTOGRAPHY in message
    assert "tongban-gateway[gm]" in message and KEY not in message
    assert isinstance(rest().render(CASE), dict)  # without encryption settings, nothing changes

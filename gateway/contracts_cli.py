"""``tongban contracts …``: the contract list from an operator's terminal.

Against a folder alone (``--dir``) it checks the list locally; against a running gateway
(``--gateway`` with an operator token from ``--token`` or ``TONGBAN_TOKEN``) it validates, diffs,
publishes, lists history, rolls back and shows items through the operator API.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from gateway import revisions
from gateway.contracts import ContractList


def add_parser(sub: Any) -> None:
    p = sub.add_parser("contracts", help="validate, diff, publish, history, rollback, show")
    p.add_argument("action", choices=["validate", "diff", "publish", "history", "rollback", "show"])
    p.add_argument("target", nargs="?", help="rollback: the revision; show: an item code")
    p.add_argument("--dir", help="a contract list folder (validate, diff, publish, show)")
    p.add_argument("--gateway", help="the gateway's URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--token", help="operator bearer token (default: $TONGBAN_TOKEN)")
    p.add_argument("--note", default="", help="publish: a note kept with the revision")


async def run(args: argparse.Namespace) -> int:
    """Run one action; return the process exit code (0 ok, 1 refused or invalid)."""
    lst = _load(Path(args.dir)) if args.dir else None
    if args.gateway is None:
        return _local(args.action, lst, args.target)
    token = args.token or os.environ.get("TONGBAN_TOKEN", "")
    async with aiohttp.ClientSession(
        base_url=args.gateway.rstrip("/") + "/",
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        return await _remote(session, args, lst)


def _load(folder: Path) -> ContractList:
    try:
        return ContractList.load(folder)
    except ValidationError as exc:
        for e in exc.errors(include_url=False, include_input=False):
            print(f"invalid: {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
        raise SystemExit(1) from None
    except (OSError, ValueError) as exc:
        print(f"cannot read {folder}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _local(action: str, lst: ContractList | None, target: str | None) -> int:
    if lst is None:
        print("give --dir FOLDER, or --gateway URL to talk to a running gateway", file=sys.stderr)
        return 2
    if action == "show":
        _show(lst.model_dump(mode="json"), target)
        return 0
    if action != "validate":
        print(f"{action} needs --gateway", file=sys.stderr)
        return 2
    problems = [
        f"{code} v{v.version}: does not compile"
        for code, item in lst.items.items()
        for v in item.versions
        if not _compiles(lst, code, v)
    ]
    for line in problems:
        print(line)
    print(f"{len(lst.items)} items, {sum(len(i.versions) for i in lst.items.values())} versions: "
          + ("invalid" if problems else "valid"))  # fmt: skip
    return 1 if problems else 0


def _compiles(lst: ContractList, code: str, v: Any) -> bool:
    try:
        lst.validator(code, v)
    except Exception:
        return False
    return True


async def _remote(
    session: aiohttp.ClientSession, args: argparse.Namespace, lst: ContractList | None
) -> int:
    body = revisions.dumps(lst) if lst is not None else None
    needs_list = args.action in ("validate", "diff", "publish")
    if needs_list and body is None:
        print(f"{args.action} needs --dir FOLDER", file=sys.stderr)
        return 2
    if args.action in ("validate", "diff"):
        status, answer = await _call(session, "POST", "v1/ops/contracts/validate", body)
        return _report_validation(status, answer, diff_only=args.action == "diff")
    if args.action == "publish":
        path = "v1/ops/contracts/publish" + (f"?note={args.note}" if args.note else "")
        status, answer = await _call(session, "POST", path, body)
        if status == 201:
            print(f"published revision {answer['revision']}")
            _print_lines(answer["diff"])
            return 0
        return _problem(status, answer)
    if args.action == "rollback":
        if not (args.target or "").isdigit():
            print("rollback needs the revision number", file=sys.stderr)
            return 2
        revision = orjson.dumps({"revision": int(args.target)})
        status, answer = await _call(session, "POST", "v1/ops/contracts/rollback", revision)
        if status == 201:
            print(f"revision {args.target} is in force again as revision {answer['revision']}")
            _print_lines(answer["diff"])
            return 0
        return _problem(status, answer)
    if args.action == "history":
        status, answer = await _call(session, "GET", "v1/ops/contracts/revisions")
        if status != 200:
            return _problem(status, answer)
        for r in answer["revisions"]:
            mark = "*" if r["revision"] == answer["active"] else " "
            print(f"{mark} {r['revision']:>4}  {r['created_at']}  {r['author']:<12} {r['note']}")
        return 0
    path = f"v1/ops/contracts/items/{args.target}" if args.target else "v1/ops/contracts"
    status, answer = await _call(session, "GET", path)
    if status != 200:
        return _problem(status, answer)
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


async def _call(
    session: aiohttp.ClientSession, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    async with session.request(method, path, data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if raw else {}


def _report_validation(status: int, answer: Any, diff_only: bool) -> int:
    if status != 200:
        return _problem(status, answer)
    if not diff_only:
        for e in answer["errors"]:
            print(f"error: {'.'.join(map(str, e['loc']))}: {e['msg']}")
    _print_lines(answer["diff"] or ["(no change)"])
    if not diff_only:
        print("valid" if answer["valid"] else "invalid")
    return 0 if answer["valid"] or diff_only else 1


def _problem(status: int, answer: Any) -> int:
    detail = answer.get("detail", "") if isinstance(answer, dict) else ""
    print(f"refused: HTTP {status} {detail}", file=sys.stderr)
    for e in answer.get("errors") or [] if isinstance(answer, dict) else []:
        print(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}", file=sys.stderr)
    return 1


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _show(dumped: dict[str, Any], item: str | None) -> None:
    if item:
        print(orjson.dumps(dumped["items"].get(item), option=orjson.OPT_INDENT_2).decode())
        return
    for code, it in sorted(dumped["items"].items()):
        versions = ", ".join(f"v{v['version']} {v['status']}" for v in it["versions"])
        print(f"{code:<14} {it['name']:<20} {versions}")

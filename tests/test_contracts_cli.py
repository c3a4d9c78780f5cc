"""``tongban contracts`` against a folder and against a running gateway."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from gateway import contracts_cli
from gateway.cli import parser
from tests.support import CONTRACTS, OPERATOR_TOKEN, world


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["contracts", *argv])


def editable_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder, ignore=shutil.ignore_patterns("examples"))
    return folder


async def test_local_validate_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert await contracts_cli.run(args("validate", "--dir", str(CONTRACTS))) == 0
    assert "valid" in capsys.readouterr().out
    assert await contracts_cli.run(args("show", "--dir", str(CONTRACTS))) == 0
    assert "异地就医登记备案" in capsys.readouterr().out


async def test_publish_history_and_rollback_through_the_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = editable_copy(tmp_path)
    item = folder / "KSTB-YB-001.json"
    data = json.loads(item.read_text(encoding="utf-8"))
    for v in data["versions"]:
        v["status"] = "active" if v["version"] == 2 else "deprecated"
    item.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    async with world(tmp_path) as w:
        remote = ("--gateway", w.origin.base, "--token", OPERATOR_TOKEN)
        assert await contracts_cli.run(args("diff", "--dir", str(folder), *remote)) == 0
        assert "v2 status draft → active" in capsys.readouterr().out
        code = await contracts_cli.run(args("publish", "--dir", str(folder), *remote))
        assert code == 0 and "published revision 2" in capsys.readouterr().out
        assert await contracts_cli.run(args("history", *remote)) == 0
        out = capsys.readouterr().out
        assert "*    2" in out and "1" in out
        assert await contracts_cli.run(args("rollback", "1", *remote)) == 0
        assert "as revision 3" in capsys.readouterr().out

        data["versions"][0]["time_limit_days"] = 9  # alter a published version
        item.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        assert await contracts_cli.run(args("publish", "--dir", str(folder), *remote)) == 1
        err = capsys.readouterr().err
        assert "items.KSTB-YB-001.versions.1.time_limit_days" in err


async def test_a_wrong_token_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with world(tmp_path) as w:
        code = await contracts_cli.run(args("history", "--gateway", w.origin.base, "--token", "x"))
        assert code == 1 and "HTTP 401" in capsys.readouterr().err

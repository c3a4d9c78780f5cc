"""``tongban backup``: a whole, checked copy of the SQLite store, taken while cases keep coming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from gateway.backup import backup
from tests.support import (
    ORIGIN,
    ROOT,
    complete_in_order,
    free_port,
    submit_filings,
    verified_audit,
    wait_for,
    world,
)
from tests.test_crash import gateway_toml


async def test_a_backup_taken_under_load_restores_every_case_accepted_before_it(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "backups" / "tongban-copy.db"
    copy.parent.mkdir()
    async with world(tmp_path) as w:
        before = await submit_filings(w.origin, "ZJ-BAK", 20)
        # More cases arrive while the copy is taken: the gateway is not stopped for it.
        during = asyncio.create_task(submit_filings(w.origin, "ZJ-BAK-DURING", 20))
        done = await asyncio.to_thread(backup, tmp_path / "gw.db", copy)
        await during
        await wait_for(lambda: complete_in_order(w.sims[ORIGIN], before), within=60,
                       what="the cases before the backup carried")  # fmt: skip
    assert done.cases >= len(before) and done.size == copy.stat().st_size
    assert sorted(p.name for p in copy.parent.iterdir()) == ["tongban-copy.db"]  # one file

    restored = tmp_path / "restored"
    restored.mkdir()
    async with world(restored, store=f"sqlite:///{copy}") as w:
        for case_id in before:
            case = await w.origin.case(case_id)
            assert case["case_id"] == case_id
        await verified_audit(w.origin)  # the copy's audit chain holds


def _tongban(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gateway.cli", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


async def test_the_command_writes_a_new_file_and_never_overwrites_one(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await submit_filings(w.origin, "ZJ-BAK-CLI", 3)
    config = gateway_toml(tmp_path, free_port(), {ORIGIN: free_port()}, free_port())
    dest = tmp_path / "copy.db"
    done = _tongban("backup", str(dest), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "3 cases" in done.stdout and "integrity ok" in done.stdout
    again = _tongban("backup", str(dest), "--config", str(config))
    assert again.returncode == 2 and "exists already" in again.stderr
    no_config = _tongban("backup", str(tmp_path / "x.db"), "--config", f"{config}-none")
    assert no_config.returncode == 2 and "no such file" in no_config.stderr


def test_a_postgresql_store_is_pointed_to_pg_dump(tmp_path: Path) -> None:
    config = gateway_toml(tmp_path, free_port(), {ORIGIN: free_port()}, free_port(),
                          store="postgresql://postgres@127.0.0.1:5432/test")  # fmt: skip
    done = _tongban("backup", str(tmp_path / "copy.db"), "--config", str(config))
    assert done.returncode == 2 and "pg_dump" in done.stderr

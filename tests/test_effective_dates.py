"""A version's ``effective_from``: before that day it is not the default and accepts no cases."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from tests.support import CONTRACTS, medical_filing, world


def with_second_version(tmp_path: Path, effective_from: str) -> Path:
    """The shipped list, with a new active version of 异地就医登记备案 effective from the given
    day (the shipped list already has a draft v2, so it is v3)."""
    folder = tmp_path / "contracts"
    shutil.copytree(CONTRACTS, folder)
    path = folder / "KSTB-YB-001.json"
    item = json.loads(path.read_text("utf-8"))
    v2 = copy.deepcopy(item["versions"][0])
    v2.update(version=3, status="active", effective_from=effective_from, time_limit_days=30)
    item["versions"].append(v2)
    path.write_text(json.dumps(item, ensure_ascii=False), "utf-8")
    return folder


@pytest.mark.parametrize(("effective_from", "default"), [("2099-01-01", 1), ("2020-01-01", 3)])
async def test_the_default_version_is_the_newest_in_effect(
    tmp_path: Path, effective_from: str, default: int
) -> None:
    folder = with_second_version(tmp_path, effective_from)
    async with world(tmp_path, contracts=str(folder)) as w:
        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-EFF-1"))
        assert status == 202, case
        assert case["contract_version"] == default


async def test_a_version_not_yet_in_effect_accepts_no_cases(tmp_path: Path) -> None:
    folder = with_second_version(tmp_path, "2099-01-01")
    async with world(tmp_path, contracts=str(folder)) as w:
        body = medical_filing("ZJ-EFF-2", contract_version=3)
        status, problem, _ = await w.origin.call("POST", "/v1/cases", body)
        assert status == 404, problem
        assert "2099-01-01" in problem["detail"]
        _, listed, _ = await w.origin.call("GET", "/v1/cases")
        assert listed["cases"] == []

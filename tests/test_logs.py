"""``tongban --log-format json``: every line a log collector reads is one JSON object."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import orjson

from tests.support import ROOT


def test_json_log_lines_from_a_real_gateway_process(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\nstore = "sqlite:///{tmp_path}/gw.db"\n',
        encoding="utf-8",
    )
    argv = [sys.executable, "-m", "gateway.cli", "--log-format", "json", "serve",
            "--config", str(config)]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watchdog = threading.Timer(60, proc.kill)  # a gateway that never says it listens fails
    watchdog.start()
    lines = []
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(orjson.loads(raw))  # every line is JSON, or this raises
            if "gateway listening on" in lines[-1]["message"]:
                break
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=30)
    assert any(line["message"] == "applied store migration 1" for line in lines)
    listening = lines[-1]
    assert listening["logger"] == "gateway.app" and listening["level"] == "INFO"
    assert listening["time"].endswith("+00:00")

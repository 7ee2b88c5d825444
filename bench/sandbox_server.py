"""Serve the bundled sandbox from a process of its own, so its CPU is not the benchmark's.

`python -m bench.sandbox_server SPEC_JSON`: SPEC has `config` (SandboxConfig fields,
`timings` a dict of Timings fields), `client_id`, `key_id`, `public_key` (a PEM path) and
`url_file`, where the base URL is written once it serves; then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
from decimal import Decimal
from pathlib import Path

from ibkr_sandbox import Sandbox, SandboxConfig
from ibkr_sandbox.config import Timings


def main() -> None:
    spec = json.loads(sys.argv[1])
    fields = dict(spec["config"])
    timing_fields = dict(fields.pop("timings", {}))
    if timing_fields.get("internal_cash_async_delay_s") is not None:
        timing_fields["internal_cash_async_delay_s"] = tuple(
            timing_fields["internal_cash_async_delay_s"]
        )
    timings = dataclasses.replace(Timings(), **timing_fields)
    if fields.get("internal_cash_async_above") is not None:
        fields["internal_cash_async_above"] = Decimal(str(fields["internal_cash_async_above"]))
    config = SandboxConfig(host="127.0.0.1", port=0, timings=timings, **fields)
    sandbox = Sandbox(config)
    sandbox.register_client(
        spec["client_id"], spec["key_id"], Path(spec["public_key"]).read_bytes()
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sandbox.start()
    try:
        url_file = Path(spec["url_file"])
        url_file.with_suffix(".tmp").write_text(sandbox.base_url)
        url_file.with_suffix(".tmp").replace(url_file)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()


if __name__ == "__main__":
    main()

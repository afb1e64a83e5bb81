"""Background work (jobs' items) decodes in threads of lower OS priority than real-time requests'."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from peregrine.server.app import PeregrineServer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_background_decoding_runs_niced(tmp_path: Path, start_server: Callable[..., PeregrineServer]) -> None:
    server = start_server(tmp_path)
    plane = server.dataplane

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def both() -> tuple[int, int]:
        return await plane.off_loop(nice), await plane.off_loop_background(nice)

    base = os.getpriority(os.PRIO_PROCESS, 0)
    realtime, background = server.loop.run(both())
    assert realtime == base
    assert background == min(base + 10, 19)

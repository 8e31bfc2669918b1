"""Watch the policy file and hand changes to the app.

Polls (mtime, size, inode) every 250 ms instead of using inotify: editors and ConfigMap updates
replace files by rename or symlink swap, which a stat of the path sees in every case.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(
        self, path: str, on_change: Callable[[str], Awaitable[None]], interval_s: float = 0.25
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.interval_s = interval_s
        self._seen = self._stamp()

    def _stamp(self) -> tuple[float, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_size, st.st_ino)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                try:
                    await self.on_change(self.path)
                except Exception:  # the watcher outlives any one bad edit
                    log.exception(
                        "config reload of %s failed; watching for the next edit", self.path
                    )

"""Progress for long runs: a tqdm bar (photos/s) for terminals and steady log lines for jobs.

`Progress.update(rows)` is called by the driver as manifest rows arrive. With `bar=True` a
tqdm bar shows done/total and photos/s; with `log_every` seconds > 0 a daemon thread prints
`progress: done/total (pct) photos/s errors skipped eta` at that fixed rate, whatever the batch
timing, which is what `ray job logs` shows. The total comes from a background listing count
and reads `?` until it is known.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from tqdm import tqdm


class Progress:
    def __init__(self, total: Callable[[], int | None], bar: bool = True, log_every: float = 0.0,
                 log: Callable[[str], None] = print):
        self._total = total
        self.done = self.errors = self.skipped = 0
        self.t0 = time.perf_counter()
        self._log = log
        self._bar = tqdm(total=total(), desc="cloaking", unit="photo", disable=not bar, file=sys.stderr,
                         dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = None
        if log_every > 0:
            self._thread = threading.Thread(target=self._loop, args=(log_every,), daemon=True,
                                            name="facepriv-progress")
            self._thread.start()

    def update(self, rows: list[dict]) -> None:
        self.done += len(rows)
        self.errors += sum(r["status"] == "error" for r in rows)
        self.skipped += sum(r["status"] == "skipped" for r in rows)
        total = self._total()
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(len(rows))
        self._bar.set_postfix(errors=self.errors, skipped=self.skipped, refresh=False)

    def line(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        total = self._total()
        rate = self.done / dt
        pct = f" ({100 * self.done / total:.1f}%)" if total else ""
        eta = ""
        if total and rate > 0 and self.done < total:
            eta = f", eta {int((total - self.done) / rate)}s"
        return (f"progress: {self.done}/{total if total is not None else '?'}{pct}, {rate:.2f} photos/s, "
                f"errors {self.errors}, skipped {self.skipped}, elapsed {int(dt)}s{eta}")

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self._log(self.line())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self._log(self.line())
        self._bar.close()

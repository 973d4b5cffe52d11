"""A lazy archive listing as a Ray Data source.

`ListingSource` turns `Archive.list_images()` (a generator) into a stream of small Arrow
blocks of source keys, produced by one read task that runs on the cluster: the driver never
holds the listing, and Ray Data's streaming backpressure stops the generator while the
workers are busy, so only a few blocks of keys are ever in flight. `count_async` counts the
same listing in a background thread for the progress total (O(1) memory).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa

from facepriv.io.archive import Archive, storage_options

try:  # Ray is the shell; keep this module importable without starting it
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata
except ImportError:  # pragma: no cover
    Datasource = object  # type: ignore[misc,assignment]

KEY_SCHEMA = pa.schema([("key", pa.string())])


def key_blocks(keys: Iterator[str], block_rows: int) -> Iterator[pa.Table]:
    """Group a key stream into Arrow tables of at most `block_rows` keys (pure, lazy)."""
    chunk: list[str] = []
    for k in keys:
        chunk.append(k)
        if len(chunk) >= block_rows:
            yield pa.table({"key": chunk}, schema=KEY_SCHEMA)
            chunk = []
    if chunk:
        yield pa.table({"key": chunk}, schema=KEY_SCHEMA)


class ListingSource(Datasource):
    """One read task that walks SRC lazily and yields blocks of `block_rows` keys."""

    def __init__(self, src: str, s3_endpoint: str | None = None, retries: int = 5, block_rows: int = 8):
        self.src, self.s3_endpoint, self.retries, self.block_rows = src, s3_endpoint, retries, block_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None):
        src, endpoint, retries, rows = self.src, self.s3_endpoint, self.retries, self.block_rows

        def read() -> Iterator[pa.Table]:
            archive = Archive(src, storage_options(src, endpoint, retries), retries)
            yield from key_blocks(archive.list_images(), rows)

        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(read, meta, schema=KEY_SCHEMA)]


class Counter:
    """Counts an archive's listing in a daemon thread; `total` is None until it finishes."""

    def __init__(self, archive: Archive):
        self.total: int | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(archive,), daemon=True, name="facepriv-count")
        self._thread.start()

    def _run(self, archive: Archive) -> None:
        try:
            n = 0
            for _ in archive.list_images():
                n += 1
            self.total = n
        except Exception as e:  # noqa: BLE001 - the count is only for progress display
            self.error = f"{type(e).__name__}: {e}"

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        return self.total


def count_async(archive: Archive) -> Counter:
    return Counter(archive)

"""The GPU scanner a database shares among its collections: one memory budget per GPU."""

from __future__ import annotations

import threading


class SharedScanner:
    """A ``GpuScanner`` made on first use and then handed to every caller, so that all
    of a database's collections draw on one device budget (``budget_bytes``: default 80%
    of the GPU's memory)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = budget_bytes
        self._scanner = None
        self._lock = threading.Lock()

    def get(self):
        """The scanner (CuPy is imported on the first call)."""
        with self._lock:
            if self._scanner is None:
                from vecstore.search.gpu.scanner import GpuScanner

                self._scanner = GpuScanner(self.budget_bytes)
            return self._scanner

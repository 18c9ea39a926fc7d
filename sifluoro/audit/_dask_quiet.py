"""A Dask worker plugin that says pydicom's warnings once on every worker (imported only when
the CLI runs on Dask: ``distributed`` is optional)."""
from __future__ import annotations

import logging

from distributed.diagnostics.plugin import WorkerPlugin

from sifluoro.quiet import quiet_pydicom_warnings


class QuietPydicom(WorkerPlugin):
    """:func:`quiet_pydicom_warnings` on each worker, those that join later too, and pydicom's
    logger printed there (else its warnings would not show at all)."""

    name = "sifluoro-quiet-pydicom"
    idempotent = True

    def setup(self, worker) -> None:
        quiet_pydicom_warnings()
        pydicom_log = logging.getLogger("pydicom")
        printed = logging.getLogger().handlers + [
            h for h in pydicom_log.handlers if not isinstance(h, logging.NullHandler)]
        if not printed:  # a worker's logging is Dask's own: say it as the CLI does
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            pydicom_log.addHandler(handler)

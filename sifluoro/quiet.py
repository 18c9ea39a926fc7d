"""pydicom's warnings, said once.

pydicom sends each of its warnings both to its logger (``WARNING pydicom: ...``, which the CLI
prints) and as a ``UserWarning`` that Python prints again with pydicom's source line. The CLI
keeps the logged one; a library caller's warning filters are left alone.
"""
from __future__ import annotations

import warnings


def quiet_pydicom_warnings() -> None:
    """Ignore pydicom's ``UserWarning`` in this process (its logger still reports it)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")

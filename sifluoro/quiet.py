"""pydicom's warnings, said once.

pydicom sends each of its warnings both to its logger (``WARNING pydicom: ...``, which the CLI
prints) and as a ``UserWarning`` that Python prints again with pydicom's source line. The CLI
keeps the logged one; a library caller's warning filters are left alone. The logged one does
not quote the value it finds invalid: a damaged length makes a value swallow the elements after
it, the patient's name and ID among them.
"""
from __future__ import annotations

import logging
import re
import warnings


class _ValueNotShown(logging.Filter):
    """pydicom's "Invalid value for VR UI: '<value>'." without the value."""

    _QUOTED = re.compile(r"(Invalid value for VR \w+): .*", re.S)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = self._QUOTED.sub(r"\1 (the value is not shown: it may hold patient data)", message)
        if shown != message:
            record.msg, record.args = shown, ()
        return True


_VALUE_NOT_SHOWN = _ValueNotShown()


class _CutShortSaid(logging.Filter):
    """pydicom's "End of file reached before delimiter (FFFE,E0DD) found in file F" says what it
    met, not what it means for the study (user review s20 P7): said as a file cut short in its
    pixel data, whose frames' dose still counts (from its header)."""

    _END = re.compile(r"End of file reached before delimiter \(FFFE,E0DD\) found in file (.*)", re.S)

    def filter(self, record: logging.LogRecord) -> bool:
        found = self._END.match(record.getMessage())
        if found:
            record.msg, record.args = (f"{found.group(1)}: cut short inside its pixel data (an "
                                       "interrupted transfer?): the frames it lost are not shown; "
                                       "their dose counts, from its header"), ()
        return True


_CUT_SHORT_SAID = _CutShortSaid()


def quiet_pydicom_warnings() -> None:
    """Ignore pydicom's ``UserWarning`` in this process (its logger still reports it, without
    the values it quotes)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").addFilter(_VALUE_NOT_SHOWN)  # once: the same filter
    logging.getLogger("pydicom").addFilter(_CUT_SHORT_SAID)

"""Fixtures of the receiver tests (helpers live in ``helpers.py``)."""
from tests.receiver.helpers import start_receiver  # noqa: F401  (a fixture)

"""Shared fixtures of tests/dose: the vendors' RDSRs cached by fetch_vendor_rdsr.sh."""
from __future__ import annotations

from pathlib import Path

import pytest

VENDOR_DIR = Path(__file__).resolve().parents[2] / ".cache" / "vendor-rdsr"
VENDOR_FILES = ("philips_allura_clarity_u104.dcm", "philips_allura_clarity_u601.dcm",
                "siemens_axiom_artis.dcm", "siemens_axiom_example_procedure.dcm")


@pytest.fixture(scope="session")
def vendor_dir() -> Path:
    if not all((VENDOR_DIR / name).is_file() for name in VENDOR_FILES):
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh "
                    "first (it needs the network once)")
    return VENDOR_DIR

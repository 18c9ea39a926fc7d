#!/usr/bin/env bash
# Put the vendors' example RDSRs that pyskindose ships (Philips Allura Clarity, Siemens AXIOM-Artis)
# in .cache/vendor-rdsr/ for tests/dose. Third-party files: cached, never committed.
# Usage: tests/dose/fetch_vendor_rdsr.sh [PYTHON]   (run before the tests; tests skip without it)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
DEST=.cache/vendor-rdsr
if [ -f "$DEST/.complete" ]; then exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip download -q pyskindose==25.1.1 --no-deps -d "$TMP"
"$PY" - "$TMP" "$DEST" <<'PY'
import sys, zipfile, pathlib
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dest.mkdir(parents=True, exist_ok=True)
wheel = next(tmp.glob("pyskindose-*.whl"))
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("pyskindose/example_data/RDSR/") and n.endswith(".dcm")]
    for name in names:
        (dest / pathlib.Path(name).name).write_bytes(z.read(name))
(dest / ".complete").write_text("\n".join(sorted(pathlib.Path(n).name for n in names)) + "\n")
print(f"{len(names)} vendor RDSRs in {dest}")
PY

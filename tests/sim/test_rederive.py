"""Re-deriving a stored set's joint truth renders nothing and agrees with the simulator."""
import json

import pytest

from sifluoro.sim import simulate_case
from sifluoro.sim.batch import rederive_joint_truth
from sifluoro.sim.export import export_study


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("set") / "case001"
    export_study(simulate_case(2026, 1, quick=True), folder)
    return folder


def test_rederived_truth_is_the_simulators(stored, tmp_path):
    changed, n = rederive_joint_truth(stored, tmp_path / "case001", quick=True)
    assert (changed, n) == (0, len(json.loads((stored / "truth.json").read_text())["frames"]))
    assert (tmp_path / "case001" / "truth.json").read_bytes() == (stored / "truth.json").read_bytes()
    linked = sorted(p.name for p in (tmp_path / "case001" / "dicom").iterdir())
    assert linked == sorted(p.name for p in (stored / "dicom").iterdir())


def test_stale_doubled_truth_is_replaced(stored, tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "dicom").symlink_to(stored / "dicom")
    truth = json.loads((stored / "truth.json").read_text())
    right = [f["joint_doubled"] for f in truth["frames"]]
    for f in truth["frames"]:
        f["joint_doubled"] = not f["joint_doubled"]
    truth["version"] = 1
    (stale / "truth.json").write_text(json.dumps(truth))
    changed, n = rederive_joint_truth(stale, tmp_path / "new", quick=True)
    assert changed == n
    new = json.loads((tmp_path / "new" / "truth.json").read_text())
    assert [f["joint_doubled"] for f in new["frames"]] == right
    assert new["version"] == 2


def test_wrong_flags_are_refused(stored, tmp_path):
    with pytest.raises(ValueError, match="not those of seed 2026 case 1"):
        rederive_joint_truth(stored, tmp_path / "x", quick=False)

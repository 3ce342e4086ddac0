"""train.py's command line: a config that cannot run stops at once, naming the field, having done nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts train.py

ROOT = Path(__file__).resolve().parents[1]


def test_a_mesh_that_does_not_fit_the_devices_stops_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", "--config", "tiny", "--mesh.data", "4", "--workdir",
                             str(workdir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "config field `mesh`" in result.stderr and "mesh.data=4" in result.stderr and "1 are present" in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists()  # no tokenizers, no world, no compile

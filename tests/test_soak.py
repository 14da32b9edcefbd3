"""The soak and overload run in its short (CI) mode: `benches/soak.py --short` against the
binary the other tests use, which must exit 0 (every acked event shipped exactly once, peak
RSS under the limit, decompression within its budget). It owns nothing but that one
subprocess and must never run the long mode or a build, nor hide the script's figures (they
are printed; `pytest -s` shows them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rinlib import rin_ship_bin

pytestmark = pytest.mark.timeout(300)

SOAK = Path(__file__).resolve().parent.parent / "benches" / "soak.py"


def test_soak_short():
    p = subprocess.run([sys.executable, str(SOAK), "--short", "--bin", str(rin_ship_bin())],
                       capture_output=True, text=True, timeout=240)
    print(p.stdout)
    print(p.stderr, file=sys.stderr)
    assert p.returncode == 0, f"soak.py --short exited {p.returncode}:\n{p.stdout}\n{p.stderr}"

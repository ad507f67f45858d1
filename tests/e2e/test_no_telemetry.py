"""OpenVINO and NNCF, loaded through the encoder, send no usage statistics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A fresh interpreter without pytest loaded: NNCF switches its telemetry off by itself under pytest.
_CHECK = """
import resources.encoder.runtime
import openvino
import openvino.tools.ovc.telemetry_utils as ovc
import nncf.telemetry.decorator as nncf_decorator
import nncf.telemetry.wrapper as nncf_wrapper
print(ovc.tm.__name__, isinstance(nncf_decorator.telemetry, nncf_wrapper.NNCFTelemetryStub))
"""


def test_openvino_and_nncf_fall_back_to_their_telemetry_stubs():
    out = subprocess.run(
        [sys.executable, "-c", _CHECK],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "True"]

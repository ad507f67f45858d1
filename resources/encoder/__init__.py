"""The CLIP encoder: devices and precision, decoding, batching, the image runtimes and their agreement gate.

OpenVINO's converter (when ``openvino`` is imported) and NNCF (when it quantizes) send usage
statistics to Google Analytics unless a consent file says no: both call openvino_telemetry with
its opt-in dialog off, which counts a missing consent file as consent (openvino_telemetry's
``Telemetry.init``; ``openvino/tools/ovc/telemetry_utils.py``; ``nncf/telemetry/wrapper.py``).
This project sends nothing anywhere, so openvino_telemetry is made unimportable before either
loads (a ``None`` entry in ``sys.modules``), and both fall back to the stubs they ship for a
machine without it.
"""

import sys

sys.modules.setdefault("openvino_telemetry", None)

"""The CPU's flags decide the int8 build: NNCF's saturation workaround only where int8 sums can saturate."""

from __future__ import annotations

import pytest

from resources.encoder.devices import CpuInfo
from resources.encoder.runtime import overflow_fix


@pytest.mark.parametrize(
    ("flags", "fix"),
    [
        (("avx2",), "enable"),
        (("avx2", "avx512f"), "enable"),
        (("avx2", "avx_vnni"), "first_layer_only"),
        (("avx2", "avx512f", "avx512_vnni", "avx512_bf16"), "first_layer_only"),
        (("avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"), "first_layer_only"),
        ((), "enable"),
    ],
)
def test_seven_bit_weights_only_where_the_int8_dot_product_saturates(flags, fix):
    """AVX2 and plain AVX-512 add int8 products in 16 bits (OpenVINO's saturation page); VNNI and AMX do not."""
    cpu = CpuInfo("a CPU", flags)
    assert cpu.int8_dot_product == (fix == "first_layer_only")
    assert overflow_fix(cpu) == fix

"""What a bench ran on, printed with every result: figures from different CPUs differ a lot."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def cpu() -> str:
    """The CPU model, its count, and its int8 / bf16 matrix instructions: int8 convolutions are fast
    only with VNNI or AMX, and bf16 training only with AMX or AVX-512 BF16."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    vnni = "yes" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "no"
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512_bf16" in flags else "no"
    return f"{model}, {os.cpu_count()} CPUs (VNNI/AMX int8: {vnni}; bf16 in hardware: {bf16})"

"""How many blocks of each kernel fit on one SM, from ptxas's resource report: the occupancy gate's arithmetic.

plan.py sizes grids for ``*_BLOCKS_PER_SM`` resident blocks. Whether that many really fit depends on the
registers and shared memory ptxas gave each kernel, which only the compiler knows; ``build.ptxas_info`` asks
it (NVRTC or nvcc, ``-Xptxas -v``, no GPU needed) and this module turns the report into resident blocks per
SM with the per-architecture limits of the CUDA occupancy calculator. On a GPU, ``CudaKernels`` asks the
driver (``cuOccupancyMaxActiveBlocksPerMultiprocessor``) instead; a GPU test compares the two.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SmLimits:
    """Per-SM limits of one compute capability (CUDA C++ Programming Guide, compute capabilities table)."""

    max_threads: int
    max_blocks: int
    smem_bytes: int  # shared memory per SM usable by blocks
    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of this many
    reserved_smem_per_block: int = 1024  # the runtime's per-block reservation on sm_80 and later


LIMITS: dict[int, SmLimits] = {
    80: SmLimits(max_threads=2048, max_blocks=32, smem_bytes=164 * 1024),
    90: SmLimits(max_threads=2048, max_blocks=32, smem_bytes=228 * 1024),
}


@dataclass(frozen=True)
class KernelResources:
    """One kernel's entry in a ptxas report."""

    name: str
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    smem_bytes: int


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(report: str) -> dict[str, KernelResources]:
    """Kernel name → resources, from the text ptxas prints with ``-v`` (entry functions only)."""
    out: dict[str, KernelResources] = {}
    entry: tuple[str, int] | None = None
    spill = (0, 0, 0)
    for line in report.splitlines():
        if m := _ENTRY.search(line):
            entry, spill = (m.group(1), int(m.group(2))), (0, 0, 0)
        elif entry is not None and (m := _SPILL.search(line)):
            spill = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        elif entry is not None and (m := _USED.search(line)):
            smem = _SMEM.search(line)
            out[entry[0]] = KernelResources(
                entry[0], entry[1], int(m.group(1)), spill[1], spill[2], spill[0], int(smem.group(1)) if smem else 0
            )
            entry = None
    return out


def resident_blocks(res: KernelResources, block: int, limits: SmLimits | None = None) -> int:
    """Blocks of ``block`` threads that fit on one SM at once: the tightest of threads, blocks, registers, smem."""
    lim = limits or LIMITS[res.arch]
    warps = math.ceil(block / 32)
    regs_per_warp = math.ceil(res.registers * 32 / lim.register_unit) * lim.register_unit
    by_regs = (lim.registers // regs_per_warp) // warps if regs_per_warp else lim.max_blocks
    by_smem = lim.smem_bytes // (res.smem_bytes + lim.reserved_smem_per_block)
    return min(lim.max_threads // block, lim.max_blocks, by_regs, by_smem)

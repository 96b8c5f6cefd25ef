"""Peak memory of this process (or of a finished child): the one place that reads the kernel's counters.

CPU: the peak resident set size, VmHWM of /proc/self/status where Linux has it (and can reset it, so a
measurement forgets what came before it), else getrusage's lifetime maximum. GPU: torch's peak of
allocated memory (torch is imported only when asked about CUDA). Every figure is in MB (2**20 bytes).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM := VmRSS) of this process; False where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb(field: str = "VmRSS") -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; None where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def maxrss_mb(usage: resource.struct_rusage) -> float:
    """`ru_maxrss` of a rusage in MB (Linux counts KiB; macOS bytes, rare here): a finished child's
    peak from `os.wait4`, or this process's lifetime peak."""
    return usage.ru_maxrss / 1024


def peak_rss_mb() -> float:
    """The process's peak RSS in MB: VmHWM where readable, else getrusage's lifetime maximum."""
    hwm = rss_mb("VmHWM")
    if hwm is not None:
        return hwm
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF))


def reset_peak_gpu(device: Any = None) -> None:
    """Forget the CUDA allocator's peak on `device` (the current one by default)."""
    import torch

    torch.cuda.reset_peak_memory_stats(device)


def peak_gpu_mb(device: Any = None) -> float:
    """The CUDA allocator's peak of allocated memory on `device` since its last reset, in MB."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def process_tree_rss_mb(root: int) -> float:
    """The sum of RSS over process `root` and its descendants, from /proc (shared pages count once per
    process, so an over-estimate); works on kernels without /proc/<pid>/task/*/children."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        parent_of[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        new = {p for p, pp in parent_of.items() if pp in tree and p not in tree}
        tree |= new
        grew = bool(new)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError):
            continue
    return total / 1024

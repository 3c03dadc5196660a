"""host_memory.return_freed_memory_to_os: after a freed large block has raised glibc's mmap
threshold, freed 8 MiB tensors stay resident behind one still in use; with the thresholds
fixed they go back to the OS. Each case in a fresh process (allocator state is per process)."""

import subprocess
import sys

import pytest

PROGRAM = r"""
import sys, torch
from lit_scsdpo.host_memory import return_freed_memory_to_os

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

fixed = return_freed_memory_to_os() if sys.argv[1] == "fixed" else False
big = torch.ones(4 << 20)  # 16 MiB, mmapped; freeing it raises glibc's threshold to 16 MiB
del big
before = rss_mib()
blocks = [torch.ones(2 << 20) for _ in range(40)]  # 40 x 8 MiB
keep = blocks[-1]  # the last one stays in use (on the heap: at its top)
del blocks
print(fixed, rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_return_to_the_os_with_fixed_thresholds():
    def run(mode):
        out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        fixed, grown = out.stdout.split()
        return fixed == "True", float(grown)

    fixed, kept = run("default")
    assert not fixed and kept > 200  # 39 freed blocks (312 MiB) still resident
    fixed, kept = run("fixed")
    assert fixed and kept < 40  # only the block in use (8 MiB) and noise

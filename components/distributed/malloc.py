"""glibc malloc settings for processes that train in a thread of their own (Ray Train workers).

In a Ray Train worker the train function runs in a thread of its own, on a malloc arena of its
own, and glibc's adaptive mmap threshold stays at 128 KiB there: every tensor above it (a VAE's
batch activations) is a fresh mmap whose pages fault in on every step, and freed heap is trimmed
back to the kernel. Measured in the VAE train stage: 210-270 k minor faults and 0.4-0.5 s of
system time per 30-step epoch, c/b 0.67; with these, no faults after the first epoch and the
stage as fast as the plain loop (docs/benchmarks.md, "Where the Ray Train worker's extra CPU
went"). The cost: up to 256 MiB of freed memory a process keeps instead of returning it.
glibc reads these when a process starts, so they go into a process's environment, never set later.
Imports nothing, so the benchmarks can use it on a machine without Ray or pyarrow.
"""

MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
                   "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}

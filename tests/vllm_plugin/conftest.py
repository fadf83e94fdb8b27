"""vLLM runs in-process on the CPU here: one engine per test module, a 1 GiB KV cache, no thread pinning.

These tests need vLLM, which lives in its own environment (`bash scripts/ci/vllm_env.sh`); in the main
environment the modules that need it skip with that reason.
"""

import os

# Set before vLLM is imported: the engine core runs in this process (seconds to start, not a minute),
# the KV cache stays small, and vLLM leaves the OpenMP threads unpinned on a machine others share.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

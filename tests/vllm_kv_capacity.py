"""Start a vLLM engine on a folder and exit (a helper process of tests/test_vllm.py and bench/bench_vllm.py): vLLM
prints its KV-capacity line ("CPU KV cache size: N tokens") while it starts.

    python tests/vllm_kv_capacity.py <folder> [trust_remote_code]
"""

import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

if __name__ == "__main__":  # the engine core is a spawned process
    from vllm import LLM

    LLM(model=sys.argv[1], trust_remote_code=len(sys.argv) > 2, dtype="float32", max_model_len=256,
        enforce_eager=True, max_num_seqs=1)

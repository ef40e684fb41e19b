"""Installs tests/contract/vllm_stubs.py at interpreter start in every Python process of a vLLM contract check.

tests/contract/vllm_launch.py puts this directory (and the repository root) on PYTHONPATH of the worker it starts in
.venv-vllm, with KIMI_CONTRACT_VLLM_GPU set; vLLM's own subprocesses (the model-registry inspection) inherit both,
so they see the same stand-ins and the same simulated GPU. Without KIMI_CONTRACT_VLLM_GPU this does nothing.
"""

import os

if os.environ.get("KIMI_CONTRACT_VLLM_GPU"):
    from tests.contract import vllm_stubs

    vllm_stubs.install_from_environment()

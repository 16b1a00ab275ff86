"""Every GPU kernel compiles for a real GPU (sm_90 PTX, no float64 arithmetic) on a machine without one: see
tests/cuda_ptx.py. Needs libNVVM (the cuda extra); skipped, saying so, without it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cuda_env import needs_cuda

ROOT = Path(__file__).resolve().parent.parent


@needs_cuda
def test_kernels_compile_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "cuda_ptx.py")], env=env, capture_output=True,
                         text=True, timeout=1200)
    if run.returncode == 3:
        pytest.skip(f'the CUDA compiler is not installed (pip install -e ".[cuda]"): {run.stdout.strip()}')
    assert run.returncode == 0, run.stdout + run.stderr

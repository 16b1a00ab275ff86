from setuptools import find_packages, setup

setup(
    name="llamba",
    version="0.1.0",
    description="CPU-first quantized LLM inference in Python: GGUF files, Numba kernels, memory-mapped weights",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["runtime", "runtime.*", "quant", "quant.*"]),
    package_data={"runtime": ["py.typed", "server/static/*.html"], "quant": ["py.typed"]},  # py.typed: PEP 561
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "gguf>=0.10",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "jinja2>=3.1",
        "threadpoolctl>=3.1",
        "llguidance>=1.9,<2",  # structured output: grammar masks (runtime/grammar.py)
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "scipy",  # numba's np.dot needs it: tests/test_startup.py checks numba's BLAS beside llamba (not needed)
            "hypothesis>=6",
            "torch==2.13.0",
            "transformers>=4.46",
            "accelerate",
            "safetensors",
            "protobuf",
            "ruff",
            "jsonschema",  # tests/test_grammar.py validates constrained outputs
            "fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2",  # the server extra, tested
            "openai>=1.30", "httpx",  # the server's tests talk to it through the official client, and raw HTTP
            "selenium>=4.20",  # the chat page in a headless Chromium (Debian's chromium, chromium-driver)
            "pillow",  # a screenshot of tools/chat_window.py under Xvfb
            "numba-cuda[cu12]==0.30.4",  # its simulator runs the GPU kernels' tests on the CPU (tests/cuda_env.py);
            # cu12 brings NVRTC and libNVVM, with which tests/test_cuda_ptx.py compiles every kernel to PTX
            "greenlet",  # as greenlets, 60x faster than its threads
        ],
        # GPU offload (-ngl): numba-cuda with the CUDA 12 runtime, NVRTC and libNVVM from PyPI (drivers >= 525);
        # numba-cuda 0.30.4 does not import with numpy 2.5
        "cuda": ["numba-cuda[cu12]==0.30.4", "numpy<2.5"],
        "interop": ["llama-cpp-python==0.3.36"],
        "server": ["fastapi>=0.110", "uvicorn>=0.29", "pydantic>=2"],
    },
    entry_points={"console_scripts": ["llamba=runtime.cli:main"]},
)

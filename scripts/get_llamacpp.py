"""Install llama-cpp-python from source (once) and keep llama.cpp's own converter in bakesteer's cache.

    python scripts/get_llamacpp.py      # what scripts/setup.sh runs

The source archive is fetched from PyPI into <cache>/src; llama-cpp-python is built from it for a generic
x86-64 CPU (no -march=native, so the build runs on any CI machine), and its vendored llama.cpp's
convert_hf_to_gguf.py, conversion/ and gguf-py/ are extracted to <cache>/llama.cpp for the tests.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from importlib import metadata

from bakesteer.models import cache_dir

VERSION = "0.3.36"
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF "
              "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF")


def main() -> None:
    src = cache_dir() / "src"
    sdist = src / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(src)], check=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["sentencepiece>=0.2"], check=True)  # convert_hf_to_gguf imports it for any llama
    try:
        built = metadata.version("llama_cpp_python") == VERSION
    except metadata.PackageNotFoundError:
        built = False
    if not built:
        print(f"building llama-cpp-python {VERSION} from source (about 6 minutes on 2 cores)", flush=True)
        subprocess.run(pip + [str(sdist)], check=True, env={**os.environ, "CMAKE_ARGS": CMAKE_ARGS})
    dest = cache_dir() / "llama.cpp"
    if not (dest / "convert_hf_to_gguf.py").is_file():
        prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and rel.startswith(wanted) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            tar.extractall(dest, members=members, filter="data")
    print(f"llama-cpp-python {VERSION} installed; llama.cpp converter in {dest}")


if __name__ == "__main__":
    main()

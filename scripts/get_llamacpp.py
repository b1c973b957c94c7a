"""Install llama-cpp-python (a prebuilt wheel where the index has one, else from source, once) and keep
llama.cpp's own converter in bakesteer's cache.

    python scripts/get_llamacpp.py      # what scripts/setup.sh runs

The source archive is fetched from PyPI into <cache>/src; llama-cpp-python is built from it for a generic
x86-64 CPU (no -march=native, so the build runs on any CI machine), and its vendored llama.cpp's
convert_hf_to_gguf.py, conversion/ and gguf-py/ are extracted to <cache>/llama.cpp for the tests.

The build needs a C and a C++ compiler (checked first; cmake comes from PyPI when missing). It prints a
line a minute while it runs, keeps pip's output in <cache>/src/build.log, and exits 1 with the log's tail
when it fails (scripts/setup.sh then goes on: only the llama.cpp tests skip).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata

from bakesteer.models import cache_dir

VERSION = "0.3.36"
CMAKE_ARGS = ("-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF "
              "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF")


def compilers() -> list[str]:
    """The missing prerequisites of a source build, by name."""
    missing = []
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        missing.append("a C compiler (cc/gcc/clang)")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++/g++/clang++)")
    return missing


def build(cmd: list[str], log_path, env: dict) -> bool:
    """Run the pip build, printing a line a minute; True when it succeeded."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(5)
            minutes = int(time.monotonic() - t0) // 60
            if minutes and int(time.monotonic() - t0) % 60 < 5:
                print(f"  still building llama-cpp-python ({minutes} min)", flush=True)
    return proc.returncode == 0


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
    if not built:  # a prebuilt wheel first, where the package index has one for this platform (seconds)
        built = subprocess.run(pip + ["--only-binary", ":all:", f"llama-cpp-python=={VERSION}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        if built:
            print(f"llama-cpp-python {VERSION}: installed a prebuilt wheel", flush=True)
    if not built:
        missing = compilers()
        if missing:
            sys.exit(f"llama-cpp-python {VERSION} builds from source, which needs {' and '.join(missing)}; "
                     "install them (Debian/Ubuntu: apt-get install build-essential) and run this again.")
        log = src / "build.log"
        print(f"building llama-cpp-python {VERSION} from source (6-15 minutes on 2 cores; log: {log})", flush=True)
        if not build(pip + ["--verbose", str(sdist)], log, {**os.environ, "CMAKE_ARGS": CMAKE_ARGS}):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            sys.exit("the llama-cpp-python build failed; the end of its log:\n" + "\n".join(tail))
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

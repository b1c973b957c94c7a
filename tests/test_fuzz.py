"""A seeded mutation fuzz over everything bakesteer reads from a user: safetensors headers, indexes,
configs, vector files (.svec, IBM, control-vector GGUF), GGUF models and bake records.

Each case copies a seed from tests/fuzz_corpus/ (made by scripts/make_fuzz_corpus.py), mutates it, and
runs the command that reads it, in-process. It must end in exit 0, or in exit 2 with one line on
stderr; no exception may escape, the inputs must be unchanged, and a refused run leaves no output.
A failure names the target, the case number and the seed, which reproduce it exactly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import struct
from pathlib import Path

import pytest

from bakesteer.cli import main

CORPUS = Path(__file__).parent / "fuzz_corpus"
SEED = int(os.environ.get("BAKESTEER_FUZZ_SEED", 20261202))
# per target; a fixed budget that keeps the whole fuzz under a minute on two cores
CASES = int(os.environ.get("BAKESTEER_FUZZ_CASES", 40))
NASTY = [None, True, -1, 0, 2 ** 64, 1e308, -1e308, float("nan"), "", "x", "../../escape", "/etc/passwd", "5",
         "layer.01", [], [1, 2], {}, {"a": 1}, "a" * 300, "F8_E4M3", "\u0000"]


def _json_mutate(doc, rng: random.Random):
    """Replace, delete or retype one value at a random path of a JSON document."""
    if not isinstance(doc, (dict, list)) or not doc or rng.random() < 0.15:
        return rng.choice(NASTY)
    keys = list(doc.keys()) if isinstance(doc, dict) else list(range(len(doc)))
    k = rng.choice(keys)
    roll = rng.random()
    if roll < 0.15 and isinstance(doc, dict):
        del doc[k]
    elif roll < 0.25 and isinstance(doc, dict):
        doc[rng.choice(NASTY[8:14])] = doc.pop(k)  # a hostile key
    else:
        doc[k] = _json_mutate(doc[k], rng)
    return doc


def _bytes_mutate(data: bytes, rng: random.Random, focus: int | None = None) -> bytes:
    """Flip, overwrite, truncate or splice bytes; ``focus`` keeps most edits in the first bytes (the header)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        end = min(len(b), focus) if focus and rng.random() < 0.8 else len(b)
        if not b:
            break
        i = rng.randrange(end)
        roll = rng.random()
        if roll < 0.4:
            b[i] ^= 1 << rng.randrange(8)
        elif roll < 0.6:
            b[i:i + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, struct.pack("<q", -1), struct.pack("<Q", 2 ** 62)])
        elif roll < 0.8:
            del b[rng.randrange(len(b)):]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)


def _header_mutate(data: bytes, rng: random.Random) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    raw = json.dumps(_json_mutate(header, rng)).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def _json_file_mutate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.2:
        return _bytes_mutate(data, rng)
    return json.dumps(_json_mutate(json.loads(data), rng)).encode()


# target -> (seed folder or file in the corpus, file to mutate inside it, mutator, argv builder)
def _bake_model(tmp: Path, site: str = "resid") -> list[str]:
    return ["bake", "--model", str(tmp / "in"), "--vector", str(CORPUS / "vector.npy"), "--layer", "1", "--site",
            site, "-o", str(tmp / "out"), "-q"]


def _bake_vector(name: str):
    return lambda tmp: ["bake", "--model", str(CORPUS / "model"), "--vector", str(tmp / "in" / name), "--layer",
                        "1", "-o", str(tmp / "out"), "-q"]


TARGETS = {
    "safetensors-header": ("model", "model.safetensors", _header_mutate, _bake_model),
    "safetensors-bytes": ("model", "model.safetensors", lambda d, r: _bytes_mutate(d, r, focus=2048),
                          lambda tmp: _bake_model(tmp, "attn_in")),
    "index": ("sharded", "model.safetensors.index.json", _json_file_mutate, _bake_model),
    "config": ("model", "config.json", _json_file_mutate, _bake_model),
    "svec": (None, "vector.svec", _json_file_mutate, _bake_vector("vector.svec")),
    "ibm-svec": (None, "ibm.svec", _json_file_mutate, lambda tmp: _bake_vector("ibm.svec")(tmp)[:-5]
                 + ["2", "-o", str(tmp / "out"), "-q"]),
    "control-gguf": (None, "control.gguf", lambda d, r: _bytes_mutate(d, r, focus=512), _bake_vector("control.gguf")),
    "gguf-model": (None, "model.gguf", lambda d, r: _bytes_mutate(d, r, focus=1024),
                   lambda tmp: ["bake", "--model", str(tmp / "in" / "model.gguf"), "--vector",
                                str(CORPUS / "vector.npy"), "--layer", "1", "--site", "attn_in", "-o",
                                str(tmp / "out.gguf"), "-q"]),
    "recipe": ("bake", "bakesteer.json", _json_file_mutate,
               lambda tmp: ["unbake", str(tmp / "in"), "-o", str(tmp / "out"), "-q"]),
    "recipe-push": ("bake", "bakesteer.json", _json_file_mutate,
                    lambda tmp: ["push", str(tmp / "in"), "--repo", "user/name", "--dry-run", "-q"]),
    "verify-record": ("bake", "bakesteer/verify.json", _json_file_mutate,
                      lambda tmp: ["push", str(tmp / "in"), "--repo", "user/name", "--dry-run", "-q"]),
}


class Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: int):
    def fire(*_):
        raise Hang(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_case(tmp: Path, target: str, case: int, capsys) -> tuple[int | None, str | None]:
    """Run one mutated case: (exit code, None when it behaved, else what went wrong)."""
    folder, name, mutate, argv = TARGETS[target]
    rng = random.Random(f"{SEED}-{target}-{case}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if folder is None:
        (tmp / "in").mkdir()
        shutil.copyfile(CORPUS / name, tmp / "in" / name)
    else:
        shutil.copytree(CORPUS / folder, tmp / "in")
    path = tmp / "in" / name
    path.write_bytes(mutate(path.read_bytes(), rng))
    before = _hashes(tmp / "in")
    capsys.readouterr()
    try:
        with _deadline(60):
            code = main(argv(tmp))
    except SystemExit as e:  # argparse's usage error: one line after the usage text, exit 2
        code = e.code
    except Exception as e:  # noqa: BLE001 - anything escaping the CLI is the finding
        return None, f"{type(e).__name__}: {e}"
    err = capsys.readouterr().err
    if code not in (0, 2):
        return code, f"exit {code}: {err.strip()[:300]}"
    if code == 2:
        lines = [x for x in err.strip().splitlines() if not x.startswith("bakesteer: warning: ")]
        usage = len(lines) > 1 and lines[0].startswith("usage:") and lines[-1].startswith("bakesteer bake: error: ")
        if not usage and (len(lines) != 1 or not lines[0].startswith("bakesteer: error: ")):
            return code, f"not one sentence: {err.strip()[:300]}"
        if any(p.name.startswith(("out", ".out")) for p in tmp.iterdir()):
            return code, "a refused run left output behind"
    if _hashes(tmp / "in") != before:
        return code, "the input was changed"
    return code, None


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a warning would print a second line on stderr
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz(tmp_path, capsys, target):
    if target.endswith("gguf") or target == "gguf-model":
        pytest.importorskip("gguf")
    failures, codes = [], []
    for case in range(CASES):
        code, what = _one_case(tmp_path / "case", target, case, capsys)
        codes.append(code)
        if what is not None:
            failures.append(f"{target} case {case} (seed {SEED}): {what}")
    assert not failures, "\n".join(failures[:8])
    assert codes.count(2) >= CASES // 4, f"the mutator hardly bites: {codes.count(2)} of {CASES} refused"

"""Proof, fit and extraction at any size: peak memory and time of bake, verify, --approx and extract on
synthetic sharded bf16 checkpoints of about 1, 2, 4 and 8 GB (Llama and Qwen3).

Each checkpoint has the same width (hidden 2048, MLP 5632, 16 heads, 4 KV heads, SmolLM2's tokenizer and
vocabulary) and more blocks as it grows, with random weights written straight into safetensors shards (no
torch model of that size is ever built). Per size and family:

    bake       Llama: resid at the middle block; Qwen3: attn_out (exact) at the middle block (--no-strength:
               the bake alone; the strength report is one streamed forward, as in verify's rows)
    verify     of that bake (bytes, touched blocks, end to end; --new-tokens greedy tokens per prompt)
    approx     Qwen3 only: resid at the middle block with --approx (10 Adam steps on 128 tokens)
    extract    64 contrast pairs, resid at the middle block

Every command runs as a child process of this lean parent (no torch imported here); its peak RSS is the
child's own ru_maxrss from os.wait4, its wall time is compared with one `cat` of the checkpoint to
/dev/null. Checkpoints are deleted after each size.

    python scripts/bench_scale_proof.py                    # writes scripts/results/bench_scale_proof.{json,md}
    python scripts/bench_scale_proof.py --render           # re-renders the .md and the README table from the .json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "scripts" / "results" / "bench_scale_proof.json"
TABLE = RESULTS.with_suffix(".md")
README = ROOT / "README.md"
MARK = ("<!-- bench_scale_proof table: begin -->", "<!-- bench_scale_proof table: end -->")
HIDDEN, INTER, HEADS, KV, VOCAB = 2048, 5632, 16, 4, 49152
HEAD_DIM = HIDDEN // HEADS
SHARD = 1 << 30  # bytes per shard (about)
SHARED = 10.0  # every embedding row carries SHARED * u; the head reads u as a strong vote for token 0
ROWS = 4096  # rows written at a time
VOTE = float(os.environ.get("BENCH_VOTE", "1.0"))  # the head's row 0 gets VOTE * u
OUT_STD = 0.0005  # o and down projections: each block adds a small update to the residual, as trained models do


def _np():
    import numpy as np

    return np


def bf16(values):
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even."""
    np = _np()
    u = values.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def shared_direction():
    np = _np()
    u = np.random.default_rng(2).standard_normal(HIDDEN)
    return u / np.linalg.norm(u)


def _write_tensor(f, name: str, shape: tuple[int, ...], std: float, seed: int) -> None:
    """Random bf16 values, ``ROWS`` rows at a time (ones for a norm weight; the shared direction added to the
    embedding rows and to the head's row 0)."""
    np = _np()
    if std == 0:
        f.write(bf16(np.ones(math.prod(shape), np.float32)).tobytes())
        return
    g = np.random.default_rng(seed)
    rows, width = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, shape[0])
    u = shared_direction().astype(np.float32)
    for r in range(0, rows, ROWS):
        part = g.standard_normal((min(ROWS, rows - r), width), dtype=np.float32) * std
        if name == "model.embed_tokens.weight":
            part += SHARED * u
        if name == "lm_head.weight" and r == 0:
            part[0] += VOTE * u
        f.write(bf16(part).tobytes())


def layout(family: str, n_layers: int) -> list[tuple[str, tuple[int, ...], float]]:
    """Every tensor of the checkpoint: (name, shape, std; 0 = ones)."""
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN), 0.02)]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (HIDDEN,), 0), (p + "post_attention_layernorm.weight", (HIDDEN,), 0),
                (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN), 0.02),
                (p + "self_attn.k_proj.weight", (KV * HEAD_DIM, HIDDEN), 0.02),
                (p + "self_attn.v_proj.weight", (KV * HEAD_DIM, HIDDEN), 0.02),
                (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM), OUT_STD),
                (p + "mlp.gate_proj.weight", (INTER, HIDDEN), 0.02), (p + "mlp.up_proj.weight", (INTER, HIDDEN), 0.02),
                (p + "mlp.down_proj.weight", (HIDDEN, INTER), OUT_STD)]
        if family == "qwen3":
            out += [(p + "self_attn.q_norm.weight", (HEAD_DIM,), 0), (p + "self_attn.k_norm.weight", (HEAD_DIM,), 0)]
    return out + [("model.norm.weight", (HIDDEN,), 0), ("lm_head.weight", (VOCAB, HIDDEN), 0.02)]


def block_bytes(family: str) -> int:
    return sum(2 * math.prod(s) for n, s, _ in layout(family, 1) if n.startswith("model.layers.0."))


def layers_for(family: str, gb: float) -> int:
    outer = 2 * 2 * VOCAB * HIDDEN
    return max(2, round((gb * 1e9 - outer) / block_bytes(family)))


def write_checkpoint(folder: Path, family: str, n_layers: int, tokenizer: Path) -> int:
    """Sharded bf16 safetensors + index + config + tokenizer; returns the bytes of the shards."""
    folder.mkdir(parents=True)
    tensors = layout(family, n_layers)
    shards, cur, size = [], [], 0
    for t in tensors:
        cur.append(t)
        size += 2 * math.prod(t[1])
        if size >= SHARD:
            shards.append(cur)
            cur, size = [], 0
    shards += [cur] if cur else []
    weight_map, total = {}, 0
    for k, part in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for n, shape, _ in part:
            header[n] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + 2 * math.prod(shape)]}
            off = header[n]["data_offsets"][1]
            weight_map[n] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for j, (n, shape, std) in enumerate(part):
                _write_tensor(f, n, shape, std, 1000 * k + j)
        total += off
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    cfg = {"model_type": family, "architectures": ["LlamaForCausalLM" if family == "llama" else "Qwen3ForCausalLM"],
           "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": n_layers,
           "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
           "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "hidden_act": "silu", "rope_theta": 10000.0, "bos_token_id": 1,
           "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    for p in tokenizer.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copyfile(p, folder / p.name)
    return total


def run(argv: list[str], log: Path) -> dict:
    """One command in a child process: exit status, wall seconds, the child's own peak RSS (ru_maxrss)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(("\n$ " + " ".join(argv) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def cat_seconds(folder: Path) -> float:
    shards = sorted(str(p) for p in folder.glob("*.safetensors"))
    t0 = time.perf_counter()
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)
    return round(time.perf_counter() - t0, 2)


def verdict(log: Path) -> str:
    """PASS/FAIL of the last verify in ``log``."""
    text = log.read_text(errors="replace").split("bakesteer verify")[-1]
    return "PASS" if "\nPASS  baked vs hooked" in text else "FAIL"


def one(family: str, gb: float, work: Path, tokenizer: Path, log: Path, new_tokens: int, vote: float) -> dict:
    n = layers_for(family, gb)
    src = work / f"{family}-{gb:g}gb"
    shutil.rmtree(src, ignore_errors=True)
    vec = work / "v.npy"
    made = subprocess.run([sys.executable, __file__, "--write", str(src), family, str(n), str(tokenizer), str(vec)],
                          check=True, capture_output=True, text=True, env={**os.environ, "BENCH_VOTE": str(vote)})
    # (the checkpoint is written by a child, so this parent stays lean)
    size = int(made.stdout.split()[-1])
    mid = n // 2
    pairs = work / "pairs.jsonl"
    things = ["the sea", "my job", "this town", "winter", "the music", "your plan", "the food", "that film"]
    pairs.write_text("".join(json.dumps({"positive": f"I love {t} ({k})", "negative": f"I hate {t} ({k})"}) + "\n"
                             for k in range(8) for t in things))
    cli = [sys.executable, "-m", "bakesteer"]
    row = {"family": family, "vote": vote, "gb": round(size / 1e9, 2), "layers": n,
           "block_mb": round(block_bytes(family) / 1e6, 1),
           "largest_part_mb": round(max(block_bytes(family), 2 * VOCAB * HIDDEN) / 1e6, 1), "cat_s": cat_seconds(src)}
    site = "resid" if family == "llama" else "attn_out"
    out = work / "baked"
    row["bake"] = run(cli + ["bake", "--model", str(src), "--vector", str(vec), "--layer", str(mid), "--site", site,
                             "--coef", "1", "-o", str(out), "--force", "-q", "--no-strength"], log)
    row["verify"] = run(cli + ["verify", str(out), "-q", "--new-tokens", str(new_tokens)], log)
    row["verify"]["verdict"] = verdict(log)
    shutil.rmtree(out, ignore_errors=True)
    if family == "qwen3":
        row["approx"] = run(cli + ["bake", "--model", str(src), "--vector", str(vec), "--layer", str(mid), "--site",
                                   "resid", "--coef", "1", "--approx", "--fit-steps", "10", "--calib-tokens", "128",
                                   "--device", "cpu", "-o", str(out), "--force", "-q", "--no-strength"], log)
        shutil.rmtree(out, ignore_errors=True)
    row["extract"] = run(cli + ["extract", "--model", str(src), "--pairs", str(pairs), "--layers", str(mid),
                                "-o", str(work / "x.svec"), "--force", "-q"], log)
    shutil.rmtree(src, ignore_errors=True)
    return row


def render(doc: dict) -> str:
    """The Markdown table of a results document (the README's table is this text)."""
    lines = ["| family | vote | size GB | blocks | largest part MB | cat s | command | peak RSS MB | s | s/GB | × cat "
             "| result |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        for cmd in ("bake", "verify", "approx", "extract"):
            if cmd not in r:
                continue
            c = r[cmd]
            ran = c["rc"] == 0 or (cmd == "verify" and c["rc"] == 1)
            res = c.get("verdict", "ok") if ran else f"exit {c['rc']}"
            lines.append(f"| {r['family']} | {r.get('vote', 0.5):g} | {r['gb']:.2f} | {r['layers']} "
                         f"| {r['largest_part_mb']:.0f} "
                         f"| {r['cat_s']:.1f} | {cmd} | {c['peak_rss_mb']:.0f} | {c['seconds']:.1f} "
                         f"| {c['seconds'] / r['gb']:.1f} | {c['seconds'] / max(r['cat_s'], 1e-3):.0f} | {res} |")
    return "\n".join(lines) + "\n"


def summary(doc: dict) -> str:
    rows = doc["rows"]
    peak = max(r[c]["peak_rss_mb"] for r in rows for c in ("bake", "verify", "approx", "extract") if c in r)
    bound = max(r["largest_part_mb"] for r in rows) + 1536
    per_gb = {f: [r["verify"]["seconds"] / r["gb"] for r in rows if r["family"] == f] for f in ("llama", "qwen3")}
    failed = [f"{r['family']} {r['gb']:.2f} GB (vote {r.get('vote', 0.5):g})" for r in rows
              if r["verify"].get("verdict") != "PASS"]
    lin = ", ".join(f"{f} {v[0]:.1f} → {v[-1]:.1f} s/GB" for f, v in per_gb.items() if v)
    verdicts = "every verify PASS" if not failed else f"verify FAIL at {', '.join(failed)}, every other PASS"
    return (f"Peak RSS of any command at any size: {peak:.0f} MB (goal: largest part + 1.5 GB = {bound:.0f} MB). "
            f"verify time per GB, smallest → largest: {lin}; {verdicts}.\n")


def write_outputs(doc: dict) -> None:
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    TABLE.write_text(f"<!-- {doc['machine']} -->\n" + render(doc) + "\n" + summary(doc))
    text = README.read_text()
    if MARK[0] in text and MARK[1] in text:
        a, b = text.index(MARK[0]) + len(MARK[0]), text.index(MARK[1])
        README.write_text(text[:a] + "\n" + render(doc) + "\n" + summary(doc) + text[b:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,2,4,8", help="checkpoint sizes in GB")
    ap.add_argument("--families", default="llama,qwen3")
    ap.add_argument("--work", default="/tmp/bench_scale_proof", help="scratch folder (deleted per size)")
    ap.add_argument("--new-tokens", type=int, default=8, help="greedy tokens per prompt in verify (default 8)")
    ap.add_argument("--append", action="store_true", help="add rows to the existing results file")
    ap.add_argument("--vote", type=float, default=2.0, help="size of the head's row-0 vote for the shared direction")
    ap.add_argument("--render", action="store_true", help="re-render the table and README from the results file")
    ap.add_argument("--write", nargs=5, metavar=("DIR", "FAMILY", "LAYERS", "TOKENIZER", "VECTOR"),
                    help=argparse.SUPPRESS)  # the checkpoint writer, run as a child process
    a = ap.parse_args()
    if a.write:
        folder, family, n, tok, vec = a.write
        np = _np()
        r = np.random.default_rng(1).standard_normal(HIDDEN)
        np.save(vec, (-SHARED * shared_direction() + 0.5 * r / np.linalg.norm(r)).astype(np.float32))
        print(write_checkpoint(Path(folder), family, int(n), Path(tok)))
        return
    if a.render:
        write_outputs(json.loads(RESULTS.read_text()))
        return
    sys.path.insert(0, str(ROOT))
    from bakesteer.models import default_model_dir  # light: no torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    doc = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "command": " ".join(sys.argv), "new_tokens": a.new_tokens, "rows": []}
    if a.append and RESULTS.is_file():
        old = json.loads(RESULTS.read_text())
        doc["rows"], doc["command"] = old["rows"], old["command"] + " && " + doc["command"]
    for gb in [float(x) for x in a.sizes.split(",")]:
        for family in a.families.split(","):
            row = one(family, gb, work, default_model_dir(), log, a.new_tokens, a.vote)
            doc["rows"].append(row)
            print(json.dumps(row), flush=True)
            write_outputs(doc)


if __name__ == "__main__":
    main()

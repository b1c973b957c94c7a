"""Benchmark a bake at size: bakesteer's streaming bake against `cp -r` and the naive load-edit-save path.

Builds synthetic sharded Llama-architecture checkpoints (random bf16 weights, 1 GB shards, from a
config; no download), then measures in one run, each in a child process (wall time and peak RSS
from wait4): `cp -r`, one `cat` and one sha256 pass (hashlib, as the bake hashes; coreutils' sha256sum is
several times slower here) over the checkpoint, the bake command's start-up alone (its imports),
`bakesteer bake --no-strength` (the bake alone; copy mode, --link,
and --link from a Hub-cache layout whose blob names carry each shard's sha256), and the naive path
(`from_pretrained` + edit + `save_pretrained`). Rounds are interleaved; medians are reported.

Every bake records the sha256 of every shard, so a bake reads the whole source once: a copy is one
read and one write (hashed on worker threads), a --link bake one read, unless the Hub cache already
names each blob by its sha256.

    python scripts/bench_bake.py                       # sizes 2.2 GB and 4.6 GB, 3 rounds
    python scripts/bench_bake.py --layers 5,12 --rounds 3 --workdir /path/on/the/same/disk
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 4096, 11008, 32, 8, 32000
SHARD_BYTES = 1 << 30

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
src, out, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
v = torch.ones(4096, dtype=torch.float64)
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
for name in ("gate_proj", "up_proj"):
    lin = getattr(m.model.layers[layer].mlp, name)
    lin.bias = torch.nn.Parameter((lin.weight.double() @ v).to(torch.bfloat16))
m.save_pretrained(out)
"""

HASH = """
import hashlib, os, sys
for f in sys.argv[2:]:
    with open(f, "rb") as fh:
        hashlib.file_digest(fh, "sha256")
os.mkdir(sys.argv[1])
"""
IMPORTS = "import os, sys, bakesteer.cli, bakesteer.bake; os.mkdir(sys.argv[1])"


def make_checkpoint(path: Path, layers: int) -> int:
    """A Llama-shaped bf16 checkpoint of ``layers`` blocks in ~1 GB shards; returns its size in bytes.

    Runs in a child process (``--make``): a parent that held gigabytes would hand its peak RSS down
    to every child it starts, and the children's measured peaks would be wrong.
    """
    import torch
    from safetensors.torch import save_file

    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (KV_HEADS * 128, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * 128, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shards, cur, size = [], {}, 0
    for k, shape in shapes.items():
        cur[k] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        size += cur[k].numel() * 2
        if sum(t.numel() * 2 for t in cur.values()) >= SHARD_BYTES:
            shards.append(cur)
            cur = {}
    shards.append(cur) if cur else None
    weight_map = {}
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": size},
                                                                   "weight_map": weight_map}))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
           "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
           "num_hidden_layers": layers, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
           "tie_word_embeddings": False, "max_position_embeddings": 4096}
    (path / "config.json").write_text(json.dumps(cfg))
    return size


def hub_layout(src: Path, root: Path) -> Path:
    """``src`` as a Hub-cache snapshot: each file hard-linked as ``blobs/<sha256>``, linked from the snapshot."""
    import hashlib

    repo = root / "models--bench--llama"
    snap = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
        os.link(f, repo / "blobs" / h.hexdigest())
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / h.hexdigest())
    return snap


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


OUT = object()  # stands for the output folder in a command line


def commands(src: Path, hub: Path, work: Path, skip_naive: bool) -> dict[str, list]:
    """Each method's command line; OUT marks where its output folder goes."""
    bake = [sys.executable, "-m", "bakesteer", "bake", "-q", "--no-strength"]  # the bake alone
    resid = [*bake, "--vector", str(work / "v.json"), "--layer", "3", "-o", OUT]
    mlp_in = [*bake, "--vector", str(work / "u.json"), "--layer", "2", "-o", OUT]
    methods = {
        "cp -r": ["cp", "-r", str(src), OUT],
        "cat > /dev/null": ["sh", "-c", f'cat "{src}"/* > /dev/null; mkdir "$0"', OUT],
        "sha256 (hashlib)": [sys.executable, "-c", HASH, OUT, *map(str, sorted(src.iterdir()))],
        "bakesteer start-up (imports)": [sys.executable, "-c", IMPORTS, OUT],
        "bakesteer resid (copy)": [*resid, "--model", str(src)],
        "bakesteer mlp_in (copy)": [*mlp_in, "--model", str(src)],
        "bakesteer resid (--link)": [*resid, "--model", str(src), "--link"],
        "bakesteer mlp_in (--link)": [*mlp_in, "--model", str(src), "--link"],
        "bakesteer resid (--link, Hub cache)": [*resid, "--model", str(hub), "--link"],
    }
    if not skip_naive:
        methods["naive load+save"] = [sys.executable, "-c", NAIVE, str(src), OUT, "2"]
    return methods


def goals(med: dict[str, float], cp: float, results: dict, largest_read: float) -> str:
    """Every bake hashes every shard it reads (tamper detection), so the baselines are a copy and one hash pass:
    a copy bake overlaps the hash with the copy (≤ 1.1× the slower of cp -r and one hash pass), a --link bake
    is one hash pass (≤ 1.1× it), and a --link bake from the Hub cache, whose blob names are the hashes,
    reads no shard at all (≤ the command's start-up + 0.5 s)."""
    copy = max(v for n, v in med.items() if n.endswith("(copy)")) / max(med["cp -r"], med["sha256 (hashlib)"])
    link = max(v for n, v in med.items() if n.endswith("(--link)")) / med["sha256 (hashlib)"]
    hub = (med["bakesteer resid (--link, Hub cache)"] - med["bakesteer start-up (imports)"]) * cp
    rss = max(m for n, rs in results.items() if n.startswith("bakesteer") for _, m in rs)
    budget = 2 * largest_read + 300
    ok = lambda met: "met" if met else "MISSED"  # noqa: E731
    return (f"goals: copy {copy:.2f}× the slower of cp -r and one sha256 pass (≤ 1.1: {ok(copy <= 1.1)}); "
            f"--link {link:.2f}× one sha256 pass (≤ 1.1: {ok(link <= 1.1)}); --link from the Hub cache {hub:+.2f} s "
            f"over start-up (≤ 0.5: {ok(hub <= 0.5)}); peak RSS {rss:.0f} MB ≤ 2 × {largest_read:.0f} MB + 300 = "
            f"{budget:.0f} MB: {ok(rss <= budget)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="5,12", help="checkpoint sizes as block counts (5 ≈ 2.2 GB, 12 ≈ 4.6 GB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary folder in /tmp)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--make", nargs=2, metavar=("DIR", "LAYERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        print(make_checkpoint(Path(args.make[0]), int(args.make[1])))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_bake-", dir=args.workdir))
    largest_read = INTER * HIDDEN * 2 / 2**20  # mlp_in reads gate and up, one at a time: (11008, 4096) bf16
    try:
        (work / "v.json").write_text(json.dumps({"directions": {"3": [1.0] * HIDDEN}}))  # IBM key 3 = resid 2
        (work / "u.json").write_text(json.dumps({"bakesteer": {"site": "mlp_in", "vectors": {"2": [1.0] * HIDDEN}}}))
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(f"machine: {os.cpu_count()} cores, {ram:.0f} GiB; work folder {work}")
        for layers in [int(x) for x in args.layers.split(",")]:
            src = work / f"src-{layers}"
            t0 = time.perf_counter()
            size = int(subprocess.run([sys.executable, __file__, "--make", str(src), str(layers)], check=True,
                                      capture_output=True, text=True).stdout)
            nshards = len(list(src.glob("*.safetensors")))
            made = time.perf_counter() - t0
            print(f"\n## {size / 1e9:.2f} GB, {nshards} shards, {layers} blocks (made in {made:.0f} s)")
            subprocess.run(["cat", *map(str, src.iterdir())], stdout=subprocess.DEVNULL)  # warm the page cache
            hub = hub_layout(src, work / "hub")
            methods = commands(src, hub, work, args.skip_naive)
            results = {m: [] for m in methods}
            for _ in range(args.rounds):
                for name, cmd in methods.items():
                    out = work / "out"
                    results[name].append(run([str(out) if x is OUT else x for x in cmd]))
                    shutil.rmtree(out)
                    subprocess.run(["sync"])
            cp = statistics.median(w for w, _ in results["cp -r"])
            print("| method | wall s (median) | × cp -r | peak RSS MB |")
            print("|---|---|---|---|")
            for name, rs in results.items():
                wall = statistics.median(w for w, _ in rs)
                rss = max(m for _, m in rs)
                print(f"| {name} | {wall:.2f} | {wall / cp:.2f} | {rss:.0f} |")
            med = {n: statistics.median(w for w, _ in rs) / cp for n, rs in results.items()}
            print(goals(med, cp, results, largest_read))
            shutil.rmtree(src)
            shutil.rmtree(work / "hub")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

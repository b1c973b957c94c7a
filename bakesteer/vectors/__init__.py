"""Steering-vector files, one reader and one writer per format, with each tool's layer numbering.

Where each format's key N is ADDED when its tool steers (read from their sources; tests/test_peers.py runs
the peers' own steering code against a bake to prove it):

    bakesteer .svec                the site of decoder block N (0-based)                         block N
    IBM activation-steering .svec  input of model.layers[N] (LeashLayer)                        resid, block N-1
    repeng / llama.cpp GGUF        output of block N (l_out, ControlModule); N = 0 refused      resid, block N
    steering-vectors               output of the layer_type module of block N                   see sv.SV_TYPES
    raw tensors                    row or key N = block N; site given by --site

Modules: ``core`` (VectorFile, shared checks, ``pick``), ``svec`` (bakesteer + IBM JSON), ``control``
(GGUF control vectors), ``sv`` (steering-vectors), ``raw`` (.npy/.pt/.safetensors), ``files`` (load any,
write any, refusals), ``inspect`` (describe).
"""
from ..paths import BUNDLED
from .core import VectorFile, pick, resolve_path
from .files import (FORMATS, blocks_of, check_expressible, check_model, format_for, load_vector_file, model_info,
                    write_vectors)
from .inspect import CONVENTIONS, describe
from .svec import CONVENTION, FORMAT_VERSION, explained_of, write_bakesteer as save_bakesteer_vector

__all__ = ["BUNDLED", "CONVENTION", "CONVENTIONS", "FORMATS", "FORMAT_VERSION", "VectorFile", "blocks_of",
           "check_expressible", "check_model", "describe", "explained_of", "format_for", "load_vector_file",
           "model_info", "pick", "resolve_path", "save_bakesteer_vector", "write_vectors"]

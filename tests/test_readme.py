"""The README's figures and tables are the committed results files' (scripts/readme_tables.py writes them
between markers); a hand edit or a re-measured results file without a regenerated README fails here."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import readme_tables  # noqa: E402

README = (ROOT / "README.md").read_text()
NAMES = ("equivalence", "fp32-rounding", "bench-extract", "test-time", "portability", "headline", "llamacpp",
         "positions", "bench-bake", "bench-approx", "inference", "eval-time", "setup-time",
         "runtime-evidence", "inference-runtimes")


def test_every_region_is_in_the_readme_and_matches_its_results():
    assert all(f"<!-- results:{n} -->" in README for n in NAMES)
    assert readme_tables.drift(README) == [], "run python scripts/readme_tables.py"


def test_a_hand_edited_figure_is_caught():
    figure = readme_tables.fp32_rounding()
    edited = README.replace(f"<!-- results:fp32-rounding -->{figure}<!--",
                            "<!-- results:fp32-rounding -->1.0e-09<!--")
    assert edited != README
    assert readme_tables.drift(edited) == ["fp32-rounding"]
    row = next(r for r in README.splitlines() if r.startswith("| llama | resid |"))
    assert readme_tables.drift(README.replace(row, row.replace("PASS", "PASS (checked by hand)"))) == ["equivalence"]


def test_the_headline_names_only_runtimes_measured_reading_every_llama_bias():
    from bakesteer.arch import ARCHS, GROUPS

    llama = ARCHS["llama"]
    named = readme_tables.headline().replace(" and ", ", ").split(", ")
    assert named and all(all(llama.runtimes[rt][g] == "yes" for g in GROUPS) for rt in named)
    assert all(set(llama.measured[rt]) == set(GROUPS) for rt in named)  # run in a test, not read
    assert "SGLang" not in named and "vLLM" not in named  # drops Llama's MLP biases; read, never run here

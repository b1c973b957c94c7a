"""Write the README's measured figures and tables from the committed results files (and the runtime rows
from the architecture table), between markers:

    <!-- results:NAME -->generated text<!-- /results:NAME -->

    python scripts/readme_tables.py            # rewrite README.md's marked regions
    python scripts/readme_tables.py --check    # exit 1, naming each region, when README.md differs

tests/test_readme.py runs the check, so a hand edit of a figure, or a results file re-measured without
this script, fails the tests.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from bakesteer.arch import (ARCHS, GROUPS, INSIDE_WRAPPERS, NEVER, READ_FROM, RUNTIME_TESTS, RUNTIMES, WRAPPERS,
                            family_of)
from bakesteer.portability import MULTIMODAL, entry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "scripts" / "results"
REGION = re.compile(r"<!-- results:([\w-]+) -->(.*?)<!-- /results:\1 -->", re.S)
GROUP_TITLE = {"qkv": "q/k/v biases", "o": "o bias", "mlp": "MLP biases"}
FAMILY_TITLE = {"gpt2": "GPT-2", "gpt_neox": "GPT-NeoX",
                "llama": "Llama (also relabelled Mistral, Ministral 3, Qwen2, Phi-3)",
                "granite": "Granite", "granite_swa": "GraniteSWA", "qwen2": "Qwen2 (`attn_in`, config unchanged)",
                "qwen3": "Qwen3",
                "gemma": "Gemma", "gemma2": "Gemma2", "gemma3": "Gemma3", "olmo2": "OLMo2", "olmo3": "OLMo3",
                "smollm3": "SmolLM3 (also relabelled Mistral, Ministral 3, Phi-3 with a sliding window)",
                "starcoder2": "StarCoder2",
                "phi": "Phi-2", "opt": "OPT", "opt_post_norm": "OPT post-norm (OPT-350m)",
                "gptj": "GPT-J", "cohere": "Cohere", "cohere2": "Cohere2",
                "qwen3_moe": "Qwen3-MoE", "qwen2_moe": "Qwen2-MoE (`attn_in`)", "gpt_oss": "GPT-OSS",
                "olmoe": "OLMoE", "glm4": "GLM4 (`attn_in`)", "deepseek_v3": "DeepSeek-V3", "seed_oss": "Seed-OSS",
                "llama4_text": "Llama 4 text", "granitemoe": "GraniteMoE",
                **{MULTIMODAL + w: title for w, title in (
                    ("gemma3", "Gemma 3 multimodal (`gemma3`, its Gemma 3 decoder)"),
                    ("llava", "LLaVA (`llava`, a Llama decoder)"),
                    ("mistral3", "Mistral 3 (`mistral3`, its decoder relabelled to Llama)"),
                    ("qwen2_5_vl", "Qwen2.5-VL (`qwen2_5_vl`, `attn_in`)"),
                    ("qwen2_vl", "Qwen2-VL (`qwen2_vl`, `attn_in`)"),
                    ("llama4", "Llama 4 (`llama4`, `attn_in`, `attn_out`)"))}}
VERBS = {"ignored": ("ignores", "ignore"), "refused": ("refuses", "refuse"), "unknown": ("not checked", "not checked")}


def _equivalence_rows() -> list[str]:
    return [line for line in (RESULTS / "equivalence_table.md").read_text().splitlines() if line.startswith("|")]


def equivalence() -> str:
    return "\n" + "\n".join(_equivalence_rows()) + "\n"


def fp32_rounding() -> str:
    """fp32's own error (hooked fp32 vs hooked fp64) on the real model, three layers."""
    row = next(r for r in _equivalence_rows() if r.startswith("| SmolLM2") and "×3" in r)
    return row.split("|")[6].strip()


def bench_extract() -> str:
    text = (RESULTS / "bench_extract.txt").read_text()
    rate = dict(re.findall(r"^\s+(\w+)\s+[\d.]+ s\s+([\d.]+) pairs/s", text, re.M))
    speedup = re.search(r"speed-up bakesteer / repeng: ([\d.]+)x", text).group(1)
    return f"{rate['bakesteer']} vs {rate['repeng']} pairs/s, {speedup}×"


def test_time() -> str:
    """The wall time of the last recorded `.ci/run` (its last line, kept in scripts/results/ci_wall_time.txt)."""
    path = RESULTS / "ci_wall_time.txt"
    if not path.is_file():
        return "none recorded yet"
    m = re.search(r"ci wall time: (\d+) s \(tests: (\d+) s\)", path.read_text())
    return f"{round(int(m.group(1)) / 60)} minutes in all, {round(int(m.group(2)) / 60)} of them the tests"


def setup_time() -> str:
    """Set-up's own last line, as the last recorded `.ci/run` kept it: its total, steps and first report."""
    text = (RESULTS / "ci_wall_time.txt").read_text() if (RESULTS / "ci_wall_time.txt").is_file() else ""
    m = re.search(r"setup: done in (\d+) s \(install (\d+) s, main job (\d+) s, oracles (\d+) s; "
                  r"the verify report after (\d+) s\)", text)
    if not m:
        return "not recorded yet"
    total, install, job, oracles, report = (int(x) for x in m.groups())
    return (f"{total / 60:.1f} minutes: installing {install} s, the main job {job} s (its verify report "
            f"{report} s after the start), the test-only oracles {oracles} s")


def eval_time() -> str:
    """Wall time of the README's eval sweep (scripts/results/eval_love/eval.json, written by that command)."""
    return f"{round(json.loads((RESULTS / 'eval_love' / 'eval.json').read_text())['seconds'])} s"


def _short(x: float) -> str:
    """1.49e-04 -> 1.5e-4."""
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m.group(1).replace('+', '')}{m.group(2)}", f"{x:.1e}")


def llamacpp() -> str:
    """The llama.cpp checks (scripts/llamacpp_figures.py's output)."""
    text = (RESULTS / "llamacpp.txt").read_text()
    conv = {m[0]: (float(m[1]), float(m[2]), m[3]) for m in
            re.findall(r"^(\w+)\s+max \|Δlogit\| llama.cpp vs transformers (\S+); steering effect (\S+); "
                       r"(\d+) greedy tokens identical", text, re.M)}
    cvec = [(float(d), float(e)) for d, e in re.findall(r"max \|Δ\| (\S+) = .*? baked vs unbaked (\S+)", text)]
    right, wrong = re.search(r"stored weight: max \|Δ\| (\S+); from transformers' unpermuted weight: (\S+)",
                             text).groups()
    worst = max(d for d, _ in cvec)
    rows = ["| check | max \\|Δlogit\\| | steering effect | greedy |", "|---|---|---|---|"]
    for site, what in (("resid", "`resid` bake → `convert_hf_to_gguf.py` f32 → llama.cpp vs transformers"),
                       ("attn_in", "`attn_in` bake, the same way")):
        d, e, n = conv[site]
        rows.append(f"| {what} | {_short(d)} | {e:.1f} | {n} tokens identical |")
    rows.append("| `resid` baked into the Q4_1 GGUF vs llama.cpp's own control vector on the unbaked file | "
                + ("0 (bit-identical)" if worst == 0 else _short(worst))
                + f" | {min(e for _, e in cvec):.1f}–{max(e for _, e in cvec):.1f} | |")
    rows.append("| `attn_in` baked into an F32 GGUF from llama.cpp's converter vs transformers hooked | "
                f"{_short(float(right))} (same bias in unpermuted q/k order: {float(wrong):.1f}) | "
                f"{conv['attn_in'][1]:.1f} | |")
    return "\n" + "\n".join(rows) + "\n"


def _num(x: str) -> str:
    """A KL figure as the README prints it: two decimals, exact zero as 0."""
    return "0" if float(x) == 0 else f"{float(x):.2f}"


def positions() -> str:
    """The wedding position experiment: KL per form at each coefficient (scripts/wedding.py --positions-only)."""
    text = (RESULTS / "wedding" / "positions.md").read_text()
    blocks = re.findall(r"coefficient ([\d.]+), resid;.*?\n\n((?:\|[^\n]*\n)+)", text, re.S)
    coefs = [c for c, _ in blocks]
    rows: dict[str, list[str]] = {}
    for _, table in blocks:
        for line in table.splitlines()[2:]:
            form, a, b = (c.strip() for c in line.strip("|").split("|"))
            rows.setdefault(form, []).extend([_num(a), _num(b)])
    head = " | ".join(f"coef {c}: KL(source ‖ form) | KL(ActAdd ‖ form)" for c in coefs)
    lines = [f"| form | {head} |", "|---" + "|---:" * 2 * len(coefs) + "|"]
    lines += [f"| {form} | " + " | ".join(vals) + " |" for form, vals in rows.items()]
    return "\n" + "\n".join(lines) + "\n"


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}–{format(hi, fmt)}"


def bench_bake() -> str:
    """Bake vs cp -r vs naive load+save on synthetic checkpoints (scripts/bench_bake.py)."""
    text = (RESULTS / "bench_bake.txt").read_text()
    lines = ["| checkpoint | cp -r | one sha256 pass | bake copy | bake --link | --link, Hub cache | naive "
             "| bake peak RSS | naive peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for size, shards, table in re.findall(r"^## ([\d.]+ GB), (\d+) shards.*?\n((?:\|[^\n]*\n)+)", text, re.M | re.S):
        rows = {c[0]: c[1:] for c in ([x.strip() for x in r.strip("|").split("|")] for r in table.splitlines()[2:])}
        ours = {k: v for k, v in rows.items() if k.startswith("bakesteer") and "start-up" not in k}
        copy = [float(v[1]) for k, v in ours.items() if "(copy)" in k]
        link = [float(v[1]) for k, v in ours.items() if "(--link)" in k]
        rss = [float(v[2]) for v in ours.values()]
        naive = rows["naive load+save"]
        hub = rows["bakesteer resid (--link, Hub cache)"]
        lines.append(f"| {size}, {shards} shards | {rows['cp -r'][0]} s | {rows['sha256 (hashlib)'][1]}× | "
                     f"{_span(copy, '.2f')}× | {_span(link, '.2f')}× | {hub[0]} s | {naive[1]}× | "
                     f"{_span(rss, '.0f')} MB | {naive[2]} MB |")
    return "\n" + "\n".join(lines) + "\n"


def bench_approx() -> str:
    """Approximate bakes on SmolLM2 with its MLP slots declared unavailable (scripts/bench_approx.py)."""
    text = (RESULTS / "bench_approx.txt").read_text()
    lines = ["| block L | coef | steering KL (nats/token) | closed form | fitted (kept) | top-1: closed → kept "
             "| fit s |", "|---|---|---|---|---|---|---|"]
    for m in re.finditer(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+%)\s+\S+%\s+(\S+%) \(\w+\)\s+(\S+%)\s+(\S+%)\s+(\S+)$",
                         text, re.M):
        layer, coef, kl, closed, kept, t1, t2, secs = m.groups()
        lines.append(f"| {layer} | {coef} | {kl} | {closed} | {kept} | {t1} → {t2} | {secs} |")
    return "\n" + "\n".join(lines) + "\n"


def inference() -> str:
    """Paired decode steps, × source (scripts/bench_inference.py; the first paired table of the file)."""
    text = (RESULTS / "bench_inference.txt").read_text()
    table = re.search(r"Paired decode steps.*?\n\n((?:\|[^\n]*\n)+)", text, re.S).group(1)
    lines = ["| row | batch 1 | batch 8 | same tokens as baked |", "|---|---|---|---|"]
    for row in table.splitlines()[2:]:
        c = [x.strip() for x in row.strip("|").split("|")]
        if c[0] == "source":
            continue
        same = "yes" if c[7] == "b1 yes, b8 yes" else c[7]
        b1, b8 = (f"{float(c[i]):.3f} ({'–'.join(f'{float(x):.3f}' for x in c[i + 1].split('–'))})" for i in (2, 5))
        lines.append(f"| {c[0]} | {b1} | {b8} | {same} |")
    return "\n" + "\n".join(lines) + "\n"


def inference_runtimes() -> str:
    """The runtimes a bake unlocks (bench_inference.py --measures runtimes; the file's last such run): steered
    tokens/s against bakesteer's hooks, and the goal lines."""
    text = (RESULTS / "bench_inference.txt").read_text()
    start = text.rindex("$ python scripts/bench_inference.py --measures runtimes")
    before = text[:start].rstrip("\n")
    note = before[before.rfind("\n\n"):]  # the paragraph above the command
    block = text[start:]
    lines = ["| runtime | steered tok/s (range) | × bakesteer hooks | same tokens as baked |", "|---|---|---|---|"]
    for row in [r for r in block.splitlines() if r.startswith("| ")][1:]:
        c = [x.strip() for x in row.strip("|").split("|")]
        lines.append(f"| {c[0]} | {c[1]} | {c[2]} | {c[4]} |")
    goals = [f"{kind} ≥ {goal}×: **{verdict}**" + (f" ({best}, {ratio}×)" if best else "")
             for kind, goal, verdict, best, ratio in re.findall(
                 r"^goal: best (\w+) runtime ≥ ([\d.]+)× the hook path: (met|missed|not measured)"
                 r"(?: \((.*?): [\d.]+ vs [\d.]+ tok/s, ([\d.]+)×\))?", block, re.M)]
    load = " Measured under load (see the results file)." if "UNDER LOAD" in note else ""
    return "\n" + "\n".join(lines) + "\n\nGoals, best runtime vs the hook path: " + "; ".join(goals) + "." + load + "\n"


def _has_group(family: str, group: str) -> bool:
    """Whether the family (a wrapper: the text family its rows were measured with) has a bias slot in the group."""
    arch = ARCHS[family_of(entry(family).measured_text)] if family.startswith(MULTIMODAL) else ARCHS[family]
    return any(arch.groups[m] == group and slot != NEVER for m, slot in arch.linears.items())


def _name(family: str, group: str, rt: str) -> str:
    """The runtime's name, in bold where its cell was measured (a test ran bakes in it)."""
    return f"**{rt}**" if group in entry(family).measured.get(rt, ()) else rt


def _cell(family: str, group: str) -> str:
    if not _has_group(family, group):
        return "–"
    rows = entry(family).runtimes
    by = {v: [_name(family, group, rt) for rt in RUNTIMES if rows[rt][group] == v]
          for v in ("yes", "ignored", "refused", "unknown")}
    parts = [", ".join(by["yes"]) or "none"]
    parts += [f"{', '.join(by[v])} {VERBS[v][len(by[v]) > 1]}" for v in VERBS if by[v]]
    return "; ".join(parts)


def portability() -> str:
    families = [name for name, a in ARCHS.items() if a.runtimes and name not in INSIDE_WRAPPERS]
    families += [MULTIMODAL + name for name, w in WRAPPERS.items() if w.runtimes]
    lines = ["| written as | " + " | ".join(GROUP_TITLE[g] for g in GROUPS) + " |", "|---" * (1 + len(GROUPS)) + "|"]
    lines += [f"| {FAMILY_TITLE.get(f, f)} | " + " | ".join(_cell(f, g) for g in GROUPS) + " |" for f in families]
    return "\n" + "\n".join(lines) + "\n"


def runtime_evidence() -> str:
    """Per runtime: where its cells were measured, and what the others were read from."""
    lines = ["| runtime | measured (bold cells) in | other cells read from |", "|---|---|---|"]
    for rt in RUNTIMES:
        ran = [FAMILY_TITLE.get(f, f).split(" (")[0] for f, a in ARCHS.items() if a.measured.get(rt)]
        where = f"`{RUNTIME_TESTS[rt]}`: {', '.join(ran)}" if rt in RUNTIME_TESTS else "not run here"
        wrapped = [FAMILY_TITLE[MULTIMODAL + n].split(" (")[0] for n, w in WRAPPERS.items() if w.measured.get(rt)]
        if wrapped and rt != "transformers":
            where += f"; `tests/test_wrapper_runtimes.py`: {', '.join(wrapped)}"
        lines.append(f"| {rt} | {where} | {READ_FROM[rt]} |")
    return "\n" + "\n".join(lines) + "\n"


def headline() -> str:
    """The runtimes measured reading every bias group of the default model's family (Llama)."""
    llama = ARCHS["llama"]
    names = [rt for rt in RUNTIMES if all(llama.runtimes[rt][g] == "yes" for g in GROUPS)
             and set(llama.measured.get(rt, ())) == set(GROUPS)]
    return ", ".join(names[:-1]) + " and " + names[-1]


GENERATORS: dict[str, Callable[[], str]] = {"equivalence": equivalence, "fp32-rounding": fp32_rounding,
                                            "bench-extract": bench_extract, "test-time": test_time,
                                            "setup-time": setup_time,
                                            "portability": portability, "headline": headline,
                                            "runtime-evidence": runtime_evidence,
                                            "llamacpp": llamacpp, "positions": positions, "bench-bake": bench_bake,
                                            "bench-approx": bench_approx, "inference": inference,
                                            "inference-runtimes": inference_runtimes,
                                            "eval-time": eval_time}


def render(text: str) -> str:
    """``text`` with every marked region regenerated; an unknown region name is an error."""
    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in GENERATORS:
            raise KeyError(f"README region {name!r} has no generator in scripts/readme_tables.py")
        return f"<!-- results:{name} -->{GENERATORS[name]()}<!-- /results:{name} -->"
    return REGION.sub(fill, text)


def drift(text: str) -> list[str]:
    """Names of the regions whose text differs from what the results files give."""
    want = {m.group(1): m.group(2) for m in REGION.finditer(render(text))}
    return [m.group(1) for m in REGION.finditer(text) if want[m.group(1)] != m.group(2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="report drift; change nothing")
    a = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if a.check:
        bad = drift(text)
        for name in bad:
            print(f"README.md region {name!r} differs from its results; run python scripts/readme_tables.py")
        return 1 if bad else 0
    readme.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared checks: a refused command (one sentence, exit 2, nothing changed), a folder fingerprint, hooked vs
baked logits and greedy tokens."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from bakesteer.cli import main
from bakesteer.hooks import Steer, steering


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` -> a fingerprint (sha256 of a file, the target of a link, 'dir')."""
    out = {}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath) / name
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_dir():
                    out[str(p)] = "dir"
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(capsys, argv: list[str], match: str, *watched: Path) -> str:
    """Run the CLI in-process: exit 2, one line on stderr containing ``match``, nothing under ``watched``
    changed (an output that did not exist stays absent), and no exception escaping."""
    before = snapshot(*watched)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert err.startswith("bakesteer: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert snapshot(*watched) == before, "a refused run changed files"
    return err


@torch.inference_mode()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits.float()


@torch.inference_mode()
def greedy(model, ids: torch.Tensor, n: int = 64) -> list[int]:
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, ids.shape[1]:].tolist()


def hooked_vs_baked(source, baked, steers: list[Steer], ids: torch.Tensor, reference=None):
    """(max |baked - hooked|, max |hooked - unsteered|, hooked greedy, baked greedy).

    ``reference`` (default: ``source``) is the model the hooked and unsteered logits come from.
    """
    ref = reference if reference is not None else source
    plain = logits(ref, ids)
    with steering(ref, steers):
        hooked = logits(ref, ids)
    baked_l = logits(baked, ids)
    with steering(source, steers):
        g_hooked = greedy(source, ids)
    return float((baked_l - hooked).abs().max()), float((hooked - plain).abs().max()), g_hooked, greedy(baked, ids)


def the_table_says(runtime: str, measured: dict[str, str | dict[str, str]]) -> None:
    """bakesteer's runtime table agrees with what a runtime test measured (family -> yes / ignored / refused, or
    group -> verdict): each family it ran is marked measured for ``runtime`` with those verdicts (for exactly the
    groups named, where they are named), and no other family is."""
    from bakesteer.arch import ARCHS

    for family, verdict in measured.items():
        arch = ARCHS[family]
        if not arch.runtimes:  # relabelled on every bake (Mistral): its rows are the target family's
            continue
        groups = arch.measured.get(runtime, ())
        assert groups, f"{runtime} ran {family} bakes here, but the table does not mark the family measured"
        if isinstance(verdict, dict):
            assert set(groups) == set(verdict), f"the table marks {runtime} {groups} measured for {family}"
        wrong = {g: arch.runtimes[runtime][g] for g in groups
                 if arch.runtimes[runtime][g] != (verdict[g] if isinstance(verdict, dict) else verdict)}
        assert not wrong, f"the table says {runtime} {wrong} for {family}; this test measured {verdict}"
    claimed = {f for f, a in ARCHS.items() if a.measured.get(runtime)}
    assert claimed <= set(measured), f"the table marks {sorted(claimed - set(measured))} measured in {runtime}"


LOVE_BLOCK = 5  # the bundled love vector's block in the runtime tests


def love_steer(site: str):
    """The bundled love vector at block 5: as extracted at ``resid`` (coef 1), elsewhere its unit vector × 8."""
    import numpy as np

    from bakesteer.vectors import load_vector_file

    v = load_vector_file("love.svec").vectors[LOVE_BLOCK]
    if site == "resid":
        return Steer("resid", LOVE_BLOCK, v, 1.0)
    return Steer(site, LOVE_BLOCK, v / np.linalg.norm(v), 8.0)


def max_diff(a, b) -> float:
    """Largest |Δ| over paired arrays (per-prompt logits)."""
    import numpy as np

    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b, strict=True))


def runtime_runs_the_smollm2_bake(runtime: str, run, hf, smollm2, prompts, plain, site: str, out: Path,
                                  tol: float) -> None:
    """Bake SmolLM2 with ``love_steer(site)`` into ``out``; ``run`` (the runtime) gives ``hf``'s (transformers')
    logits on it within ``tol``, and moves its own logits of the source (``plain``) by at least 100 × ``tol``."""
    from bakesteer.bake import Item, bake

    bake(smollm2, [Item(love_steer(site), {})], out, progress=False)
    got, want = run(out, prompts), hf(out, prompts)
    err = max_diff(got, want)
    assert err <= tol, f"{runtime} vs transformers on the SmolLM2 {site} bake: {err:.2e}"
    effect = max_diff(got, plain)
    assert effect >= 100 * tol, f"the steer moved {runtime}'s logits by only {effect:.2e}"


def hf_logits(folder: Path, prompts: list[list[int]]) -> list:
    """transformers' float32 logits of the checkpoint in ``folder``, per prompt (float64 numpy arrays)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].double().numpy() for ids in prompts]


def with_rope(folder: Path, dst: Path, **rope) -> Path:
    """A copy of the checkpoint in ``folder`` whose RoPE settings are ``rope`` (both config forms): run by
    transformers, it computes what a runtime that reads the original settings as ``rope`` computes."""
    import json
    import shutil

    from bakesteer.configs import for_every_reader

    shutil.copytree(folder, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    (dst / "config.json").write_text(json.dumps(for_every_reader({**cfg, "rope_parameters": rope})))
    return dst


def long_rope_as_read(folder: Path, dst: Path, how: str) -> Path:
    """``with_rope`` for the two ways runtimes were measured to read a Llama's long-rope: "plain" (no scaling at
    all) or "long" (the long factors at every length, never the short ones)."""
    import json

    rope = json.loads((folder / "config.json").read_text())["rope_parameters"]
    if how == "plain":
        return with_rope(folder, dst, rope_type="default", rope_theta=rope["rope_theta"])
    return with_rope(folder, dst, **{**rope, "short_factor": rope["long_factor"]})

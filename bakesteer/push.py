"""Push a baked folder to the Hugging Face Hub with its model card (huggingface_hub does the HTTP)."""
from __future__ import annotations

from pathlib import Path

from .card import render, with_base_model
from .errors import BakesteerError
from .paths import inside
from .schema import check_verification
from .recipe import RECIPE, SIDE, VERIFIED, has_record, load_record


def card_for(folder: Path, repo: str | None = None, verify_first: bool = True, progress: bool = False,
             record: bool = True, base_model: str | None = None) -> str:
    """The model card with the verify figures; runs `verify` first when the folder has none yet.

    ``record``: keep the figures in the folder (``verify.json`` and README.md); a dry run writes nothing.
    ``base_model``: the Hub id the card names as the base model, in place of the recorded one.
    """
    from .verify import record_verification, verification_doc, verify

    rec = load_record(folder)
    done = folder / SIDE / VERIFIED
    verification = read_verification(done) if done.is_file() else None
    if verification is None and verify_first:
        recipe, report = verify(folder, progress=progress)
        if record:
            record_verification(folder, recipe, report)
            verification = read_verification(done) if done.is_file() else None
        else:
            verification = verification_doc(report)
    return render(with_base_model(rec.recipe, base_model), verification, repo)


def read_verification(path: Path) -> dict:
    """The figures ``verify`` kept, checked field by field (a downloaded bake may carry anything there)."""
    import json

    try:
        doc = json.loads(path.read_text())
        check_verification(doc)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BakesteerError(f"{path} is damaged ({e}); run `bakesteer verify` on the folder again.") from None
    return doc


def files_to_push(folder: Path) -> list[str]:
    """Every file under ``folder``; a symlink that leaves it is refused (it would upload a file from elsewhere)."""
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not inside(folder, path):
            raise BakesteerError(f"{path} is a symlink to a file outside {folder}, which push would upload; copy the "
                                 "file in or remove the link.")
        if path.is_file():
            files.append(str(path.relative_to(folder)))
    return files


def _check_repo_id(repo: str) -> None:
    from .models import is_repo_id

    if not is_repo_id(repo):
        raise BakesteerError(f"--repo {repo!r} is not a Hub id like user/name (letters, digits, '-', '_', '.'); give "
                             "the repository to push to.")


def _record_base_model(folder: Path, base_model: str) -> None:
    """Keep a push's --base-model in ``bakesteer.json`` too, so a later `verify` writes the same card."""
    import json
    import os

    rec = load_record(folder)
    path = folder / RECIPE
    tmp = path.with_name(f".{RECIPE}.{os.getpid()}")
    tmp.write_text(json.dumps(with_base_model(rec.recipe, base_model), indent=2) + "\n")
    os.replace(tmp, path)


def _network_error(e: Exception) -> bool:
    """An error of the HTTP stack underneath huggingface_hub: the Hub could not be reached."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def _check_push(folder: Path, repo: str, force: bool, base_model: str | None) -> bool:
    """Refuse a push that cannot be done before anything is read or written; True: ``folder`` is a bake."""
    from .models import base_model_arg

    if not folder.is_dir():
        raise BakesteerError(f"{folder} is not a folder; give a folder written by `bakesteer bake`.")
    _check_repo_id(repo)
    base_model_arg(base_model)
    baked = has_record(folder)
    if not baked and not force:
        raise BakesteerError(f"{folder} has no {RECIPE}, so it is not a bakesteer output; bake it first, or pass "
                             "--force to push it as it is.")
    if not baked and base_model:
        raise BakesteerError(f"--base-model sets the base model in a bake's model card, and {folder} is not a "
                             "bakesteer output; edit its README.md front matter instead.")
    return baked


def push(folder: str | Path, repo: str, private: bool = False, revision: str | None = None, dry_run: bool = False,
         force: bool = False, progress: bool = True,
         base_model: str | None = None) -> tuple[str, list[str], str | None]:
    """Write the card, then create the repo (if needed) and upload the folder. Returns (card, files, url).

    ``base_model``: the Hub id the card names as the base model (recorded in ``bakesteer.json`` too).
    A dry run writes nothing, locally or on the Hub.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    baked = _check_push(folder, repo, force, base_model)
    files = files_to_push(folder)
    token = None if dry_run else get_token()
    if not dry_run and not token:
        raise BakesteerError(
            "no Hugging Face token found; log in with `hf auth login` (or set HF_TOKEN) and push again.")
    if baked:
        if base_model and not dry_run:
            _record_base_model(folder, base_model)
        card = card_for(folder, repo, progress=progress, record=not dry_run, base_model=base_model)
    else:  # --force on a folder that is not a bake: pushed as it is
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    if dry_run:
        return card, files, None
    if baked:
        (folder / "README.md").write_text(card)
        files = files_to_push(folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision, allow_patterns=files,
                                 commit_message="Upload a bakesteer bake")
    except HfHubHTTPError as e:
        raise BakesteerError(f"the Hub refused the upload to {repo} ({str(e).splitlines()[0]}); check the name and "
                             "your token's write access.") from e
    except Exception as e:
        if not _network_error(e):
            raise
        raise BakesteerError(f"the Hub could not be reached ({type(e).__name__}); check your network connection "
                             "and push again.") from None
    return card, files, getattr(info, "commit_url", None) or str(info)

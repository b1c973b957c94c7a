"""Push a baked folder to the Hugging Face Hub with its model card (huggingface_hub does the HTTP)."""
from __future__ import annotations

from pathlib import Path

from .card import render
from .errors import BakesteerError
from .recipe import RECIPE, SIDE, VERIFIED, has_record, load_record


def card_for(folder: Path, repo: str | None = None, verify_first: bool = True, progress: bool = False) -> str:
    """The model card with the verify figures; runs `verify` first when the folder has none yet."""
    import json

    rec = load_record(folder)
    done = folder / SIDE / VERIFIED
    if not done.is_file() and verify_first:
        from .verify import record_verification, verify

        recipe, report = verify(folder, progress=progress)
        record_verification(folder, recipe, report)
    verification = json.loads(done.read_text()) if done.is_file() else None
    return render(rec.recipe, verification, repo)


def files_to_push(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def push(folder: str | Path, repo: str, private: bool = False, revision: str | None = None, dry_run: bool = False,
         force: bool = False, progress: bool = True) -> tuple[str, list[str], str | None]:
    """Write the card, then create the repo (if needed) and upload the folder. Returns (card, files, url)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not folder.is_dir():
        raise BakesteerError(f"{folder} is not a folder; give a folder written by `bakesteer bake`.")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise BakesteerError(f"--repo {repo!r} is not a Hub id like user/name; give the repository to push to.")
    baked = has_record(folder)
    if not baked and not force:
        raise BakesteerError(f"{folder} has no {RECIPE}, so it is not a bakesteer output; bake it first, or pass "
                             "--force to push it as it is.")
    token = None if dry_run else get_token()
    if not dry_run and not token:
        raise BakesteerError("no Hugging Face token found; log in with `hf auth login` (or set HF_TOKEN) and push again.")
    if baked:
        card = card_for(folder, repo, progress=progress)
    else:  # --force on a folder that is not a bake: pushed as it is
        card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    if dry_run:
        return card, files_to_push(folder), None
    if baked:
        (folder / "README.md").write_text(card)
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), revision=revision,
                                 commit_message="Upload a bakesteer bake")
    except HfHubHTTPError as e:
        raise BakesteerError(f"the Hub refused the upload to {repo} ({str(e).splitlines()[0]}); check the name and "
                             "your token's write access.")
    return card, files_to_push(folder), getattr(info, "commit_url", None) or str(info)

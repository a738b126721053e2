"""`lmtune push TARGET REPO_ID`: upload a run directory or model folder to the Hugging Face Hub.

A run directory goes up as it is (the PEFT adapter, tokenizer with chat template, config, metrics,
summary) without its checkpoints, with a model card naming the base model so the Hub links them;
a merged or exported folder goes up whole. Only `huggingface_hub.HfApi` touches the network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtune.errors import ConfigError

# Training state that is large and useless to someone loading the model.
RUN_IGNORE = ["checkpoints/*", "checkpoints/**", "*.pt", "*.pth", "optimizer*", "rng_state*", "eval_again/**"]


@dataclass
class PushResult:
    repo_id: str
    url: str
    files: int


def push(
    target: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    message: str | None = None,
) -> PushResult:
    from lmtune.run.layout import is_run_dir, read_marker

    folder = Path(target)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} is not a folder: push a run directory, or a folder from lmtune merge / export"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"repo id {repo_id!r} should look like 'your-name/model-name'")
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ConfigError(
            "no Hugging Face token: log in with `hf auth login`, or pass --token / set HF_TOKEN to a token "
            "with write access"
        )
    api = HfApi(token=token)
    run = is_run_dir(folder)
    files = [p for p in folder.rglob("*") if p.is_file() and not (run and _ignored(p.relative_to(folder)))]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            ignore_patterns=RUN_IGNORE if run else None,
            commit_message=message or f"Upload {folder.name} with lmtune",
        )
        if run and not (folder / "README.md").is_file():
            card = run_card(folder, read_marker(folder), repo_id)
            api.upload_file(
                path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id, repo_type="model"
            )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise ConfigError(
                f"the Hub refused the upload to {repo_id} ({status}): log in with `hf auth login`, or pass "
                "--token / set HF_TOKEN to a token with write access"
            ) from None
        raise ConfigError(f"the upload to {repo_id} failed: {err}") from None
    except (OSError, ConnectionError) as err:
        raise ConfigError(
            f"could not reach the Hugging Face Hub ({err.__class__.__name__}: {err}); check the network"
        ) from None
    return PushResult(repo_id, f"https://huggingface.co/{repo_id}", len(files))


def _ignored(rel: Path) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(rel.as_posix(), pattern) for pattern in RUN_IGNORE)


def run_card(folder: Path, marker: dict[str, Any], repo_id: str) -> str:
    """A model card for an adapter run: base model metadata (so the Hub links it) and how to load it."""
    summary = (folder / "summary.md").read_text(encoding="utf-8") if (folder / "summary.md").is_file() else ""
    base = marker["base_model"]
    peft = (folder / "adapter_config.json").is_file()
    load = (
        [
            "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
        ]
        if peft
        else [
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
        ]
    )
    return "\n".join(
        [
            "---",
            f"base_model: {base}",
            "library_name: " + ("peft" if peft else "transformers"),
            "tags: [lmtune]",
            "---",
            "",
            f"Fine-tuned from `{base}` with lmtune (method {marker['method']}).",
            "",
            "```python",
            *load,
            "```",
            "",
            summary,
        ]
    )

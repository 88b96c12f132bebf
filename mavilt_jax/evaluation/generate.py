"""Generation for evaluation: a trained stage-1 / stage-2 checkpoint -> prediction records.

For each study of a split: the VQ-GAN encodes the radiograph; the LLM writes the report from the
codes (greedy, text mode), generates an image from the reference report (image mode, optionally
classifier-free guided), and, for stage 2, answers the study's VQA questions, with P(yes) from
the model's own distribution over the answers "yes" and "no" (:func:`sampling.score_continuations`).
Prompts are those the stage trained on (stage-1 layout for stage 1, default instruction
templates for stage 2), built by the stage's ``SequenceBuilder``. The output records follow
:mod:`.records`; images are written as PNG next to them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mavilt_jax import sampling
from mavilt_jax.data import sequences
from mavilt_jax.models import vqgan as vqgan_lib


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """max_report_tokens: decode steps for reports and answers; guidance_scale: classifier-free
    guidance of report -> image (1.0: none); image_temperature: 0 for greedy codes; wording: the
    stage-2 instruction wording, "eval" (the held-out one, `templates.default_template`) or "train"
    (the first training one: separates reading the image from generalising to a new wording)."""

    max_report_tokens: int = 128
    max_answer_tokens: int = 16
    guidance_scale: float = 1.0
    image_temperature: float = 1.0
    batch_size: int = 8
    seed: int = 0
    wording: str = "eval"

    def __post_init__(self):
        if self.wording not in ("eval", "train"):
            raise ValueError(f"wording={self.wording!r}; expected 'eval' or 'train'")


class Generator:
    """Wraps a multimodal stage (after ``setup``) with its LLM and VQ-GAN parameters."""

    def __init__(self, stage, params: Mapping, vq_params: Mapping, cfg: GenerationConfig = GenerationConfig()):
        from mavilt_jax.stages import multimodal

        self.stage, self.params, self.vq_params, self.cfg = stage, params, vq_params, cfg
        self.instruction = isinstance(stage, multimodal.Stage2)
        self.vocab, self.layout, self.builder = stage.vocab, stage.layout, stage.builder
        self.image_size = stage.vq_config.image_size
        model = stage.vqgan
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
        self._decode = jax.jit(lambda p, ids: model.apply({"params": p}, ids, method=model.decode))
        self._rng = jax.random.key(cfg.seed)

    @contextlib.contextmanager
    def draws_set_aside(self) -> Iterator[None]:
        """Generations inside the block take their random draws from a copy of the stream, and its
        config is restored after: what is generated after the block is as if it had not run (the
        guidance scale chosen on validation studies does not change the test split's draws)."""
        rng, cfg = self._rng, self.cfg
        try:
            yield
        finally:
            self._rng, self.cfg = rng, cfg

    def _template(self, task: str, question_type: str | None = None):
        """The instruction wording of ``task`` (None: the builder's default, held-out or fixed)."""
        from mavilt_jax.data import templates

        if self.cfg.wording == "eval" or self.builder.config.fixed_instructions:
            return None
        return templates.templates(task, "train", question_type)[0]

    # ---- pieces --------------------------------------------------------------------------------
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, 1] -> codes int32 [B, n]."""
        x = vqgan_lib.to_model_range(np.asarray(images), self.image_size)
        return np.asarray(self._encode(self.vq_params, jnp.asarray(x)))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes int32 [B, n] -> the VQ-GAN's images uint8 [B, R, R]."""
        return vqgan_lib.to_uint8(np.asarray(self._decode(self.vq_params, jnp.asarray(codes))))[..., 0]

    def _run(self, prompts: Sequence[Sequence[int]], sampler: sampling.Sampler,
             uncond: Sequence[Sequence[int]] | None = None) -> sampling.GenerationOutput:
        tokens, lengths = sequences.left_pad(prompts, self.layout.pad_id)
        kwargs = {}
        if uncond is not None:
            u_tokens, u_lengths = sequences.left_pad(uncond, self.layout.pad_id)
            kwargs = dict(uncond_prompt_tokens=u_tokens, uncond_prompt_lengths=u_lengths)
        self._rng, rng = jax.random.split(self._rng)
        return sampling.generate(self.params, self.stage.llm_config, tokens, lengths, sampler=sampler, rng=rng,
                                 layout=self.layout, **kwargs)

    def report_prompts(self, codes: np.ndarray) -> list[list[int]]:
        """The report prompt of each codes row (stage-1 layout, or stage 2's "report" wording)."""
        return [self.builder.instruction_prompt("report", codes=c, template=self._template("report"))
                if self.instruction
                else self.builder.image_to_report_prompt(c) for c in codes]

    def reports(self, codes: np.ndarray) -> list[str]:
        prompts = self.report_prompts(codes)
        out = self._run(prompts, sampling.Sampler(self.cfg.max_report_tokens, mode="text", temperature=0.0))
        return [self.vocab.decode_text(t).strip() for t in np.asarray(out.tokens)]

    def images(self, reports: Sequence[str]) -> np.ndarray:
        """Reports -> generated radiographs uint8 [B, R, R]."""
        def prompt(report: str, uncond: bool) -> list[int]:
            if self.instruction:
                return self.builder.instruction_prompt("report_to_image", report=report, uncond=uncond)
            return self.builder.report_to_image_prompt(report, uncond=uncond)

        guided = self.cfg.guidance_scale != 1.0
        sampler = sampling.Sampler(self.layout.codes_per_image + 2, mode="image", temperature=self.cfg.image_temperature,
                                   guidance_scale=self.cfg.guidance_scale)
        out = self._run([prompt(r, False) for r in reports], sampler,
                        [prompt(r, True) for r in reports] if guided else None)
        codes = np.stack([self.vocab.codes(t)[: self.layout.codes_per_image] for t in np.asarray(out.tokens)])
        if codes.shape[1] != self.layout.codes_per_image:
            raise RuntimeError(f"the sampler returned {codes.shape[1]} codes per image, expected {self.layout.codes_per_image}")
        return self.decode(codes)

    def answers(self, codes: np.ndarray, questions: Sequence[Mapping]) -> tuple[list[str], list[float]]:
        """Stage-2 VQA: greedy answers and P(yes) / (P(yes) + P(no)) for each (codes row, question)."""
        prompts = self._vqa_prompts(codes, questions)
        out = self._run(prompts, sampling.Sampler(self.cfg.max_answer_tokens, mode="text", temperature=0.0))
        answers = [self.vocab.decode_text(t).strip() for t in np.asarray(out.tokens)]
        return answers, self._p_yes(prompts)

    def p_yes(self, codes: np.ndarray, questions: Sequence[Mapping]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for each (codes row, question), as `answers` gives it, without the greedy answer."""
        return self._p_yes(self._vqa_prompts(codes, questions))

    def _vqa_prompts(self, codes: np.ndarray, questions: Sequence[Mapping]) -> list[list[int]]:
        return [self.builder.instruction_prompt("vqa", codes=c, question=q["question"],
                                                question_type=q.get("question_type"),
                                                template=self._template("vqa", q.get("question_type")))
                for c, q in zip(codes, questions)]

    def _p_yes(self, prompts: Sequence[Sequence[int]]) -> list[float]:
        tokens, lengths = sequences.left_pad(prompts, self.layout.pad_id)
        logp = {}
        for word in ("yes", "no"):
            # The answer as training scored it: its text ids, then eos.
            ids = self.vocab.encode_text(word) + [self.layout.eos_id]
            cont = np.tile(np.asarray(ids, np.int32), (len(prompts), 1))
            total, _ = sampling.score_continuations(self.params, self.stage.llm_config, tokens, lengths, cont,
                                                    np.full((len(prompts),), len(ids), np.int32))
            logp[word] = np.asarray(total, np.float64)
        p_yes = 1.0 / (1.0 + np.exp(logp["no"] - logp["yes"]))
        return p_yes.tolist()


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict(generator: Generator, examples: Sequence[Mapping], out_dir: str | pathlib.Path,
            tasks: Sequence[str] = ("report_generation", "report_to_image", "vqa"),
            progress: Callable[[int, int], None] | None = None,
            records_path: str | pathlib.Path | None = None) -> list[dict]:
    """Prediction records for ``examples`` (dicts with image uint8 [H, W(, 1)], findings,
    impression, study_id, optional vqa); images go to ``out_dir/images``. ``progress(done,
    total)`` is called after each batch of studies.

    With ``records_path`` (JSONL), each finished batch is appended to it at once, and the studies
    already there (an interrupted earlier call) are not generated again: the records returned are
    the earlier ones followed by the new ones."""
    from mavilt_jax.evaluation import records as records_lib

    out_dir = pathlib.Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict] = records_lib.resume_records(records_path) if records_path is not None else []
    done = {str(r.get("study_id")) for r in records}
    examples = [e for e in examples if sequences.as_text(e.get("study_id")) not in done]
    for start, batch in zip(range(0, len(examples), generator.cfg.batch_size),
                            _batches(examples, generator.cfg.batch_size)):
        first_new = len(records)
        images = np.stack([np.asarray(e["image"]).reshape(np.asarray(e["image"]).shape[:2] + (1,)) for e in batch])
        codes = generator.encode(images)
        ids = [sequences.as_text(e.get("study_id")) for e in batch]
        references = [generator.builder.report_text(e) for e in batch]
        if "report_generation" in tasks:
            for sid, ref, gen in zip(ids, references, generator.reports(codes)):
                records.append({"task": "report_generation", "study_id": sid, "reference": ref, "generation": gen})
        if "report_to_image" in tasks:
            generated = generator.images(references)
            for sid, ref, real, gen in zip(ids, references, images, generated):
                real_path, gen_path = f"images/{sid}_real.png", f"images/{sid}_generated.png"
                Image.fromarray(real[..., 0]).save(out_dir / real_path)
                Image.fromarray(gen).save(out_dir / gen_path)
                records.append({"task": "report_to_image", "study_id": sid, "report": ref,
                                "real_image": real_path, "generated_image": gen_path})
        if "vqa" in tasks and generator.instruction:
            rows = [(i, q) for i, e in enumerate(batch) for q in sequences.vqa_pairs(e.get("vqa"))]
            for chunk in _batches(rows, generator.cfg.batch_size):
                answers, p_yes = generator.answers(codes[[i for i, _ in chunk]], [q for _, q in chunk])
                for (i, q), answer, p in zip(chunk, answers, p_yes):
                    records.append({"task": "vqa", "study_id": ids[i], "question": q["question"], "answer": q["answer"],
                                    "prediction": answer, "p_yes": p, "question_type": q.get("question_type"),
                                    "answer_type": q.get("answer_type")})
        if records_path is not None:
            records_lib.append_records(records_path, records[first_new:])
        if progress is not None:
            progress(start + len(batch), len(examples))
    return records


def load_generator(config, workdir: str, cfg: GenerationConfig = GenerationConfig()) -> Generator:
    """The stage of ``config`` set up on ``workdir`` (its vocabulary), with the LLM and frozen
    VQ-GAN parameters of the workdir's latest checkpoint."""
    from mavilt_jax import checkpointing
    from mavilt_jax.stages import get_stage_class, multimodal

    stage = get_stage_class(config.stage)(config)
    if not isinstance(stage, multimodal.Stage1):
        raise ValueError(f"evaluation generates with a stage-1 or stage-2 model, not {config.stage!r}")
    stage.setup(workdir)
    params = checkpointing.load_subtree(workdir, "params")
    frozen = checkpointing.load_subtree(workdir, "frozen")
    return Generator(stage, params, frozen["vqgan"], cfg)


def split_examples(generator: Generator, config, split: str, max_studies: int = 0) -> list[Mapping]:
    """The first ``max_studies`` (0: all) examples of ``split`` from the stage's data source."""
    source = generator.stage.source(split)
    n = len(source) if not max_studies else min(max_studies, len(source))
    return [source[i] for i in range(n)]

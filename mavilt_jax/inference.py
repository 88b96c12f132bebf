"""Use a trained model on your own radiographs: report, image and question answering (notebooks, CLI, app).

    import mavilt_jax
    model = mavilt_jax.load("/tmp/mavilt/stage2")          # a stage-2 workdir or an export bundle
    model.report("cxr.png")                                 # CXR -> report (greedy)
    model.report(pixels, decoding="sample", top_p=0.9, seed=1)
    model.image("Mild cardiomegaly. No effusion.", guidance_scale=3.0, num_samples=2, seed=0)
    model.answer("cxr.dcm", "Is there a pleural effusion?")  # Answer(text="no", p_yes=0.12)

Images may be paths (PNG, JPEG, DICOM), file bytes, numpy arrays or PIL images; they are read and
resized by `mavilt_jax.image_io` the way the training data was. The prompts are the stage's own
(`SequenceBuilder`: stage-2 instruction templates, or the stage-1 layout) and decoding is
`mavilt_jax.sampling` (constrained spans, classifier-free guidance, beams); P(yes) of a yes/no
question is the model's own P("yes" <eos>) / (P("yes" <eos>) + P("no" <eos>)) from
`sampling.score_continuations`, as in evaluation.

A bundle (`python -m mavilt_jax.export`) holds: ``bundle.json``, ``config.json`` (the training
config), ``vqgan.json`` (the VQ-GAN config), ``vocab/`` (the extended vocabulary), ``llm/`` and
``vqgan/`` (parameters, orbax) and ``hf/`` (the LLM as a Hugging Face directory).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mavilt_jax import checkpointing, image_io, sampling
from mavilt_jax.data import sequences
from mavilt_jax.data.vocab import ExtendedVocab
from mavilt_jax.models import vqgan as vqgan_lib

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "mavilt_jax-inference-bundle"
MULTIMODAL_STAGES = ("stage1", "stage2")
DECODINGS = ("greedy", "beam", "sample")
# Words that open a yes/no question ("Is there ...?", "Does the patient have ...?").
_YES_NO_OPENERS = ("is", "are", "was", "were", "does", "do", "did", "has", "have", "can", "could", "should",
                   "will", "would", "any")
_PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this, so new lengths rarely recompile


class InferenceError(ValueError):
    """A checkpoint, report or question that cannot be used; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How reports are decoded: "greedy", "beam" (``beams``, ``length_penalty``) or "sample"
    (``temperature``, ``top_k``, ``top_p``); at most ``max_new_tokens`` tokens."""

    method: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    beams: int = 4
    length_penalty: float = 0.0
    max_new_tokens: int = 128

    def __post_init__(self):
        if self.method not in DECODINGS:
            raise InferenceError(f"decoding={self.method!r}; expected one of {DECODINGS}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.beams < 1 or self.max_new_tokens < 1:
            raise InferenceError(f"invalid decoding settings: {self}")


@dataclasses.dataclass(frozen=True)
class Answer:
    """A VQA answer; ``p_yes`` for yes/no questions (None otherwise)."""

    question: str
    text: str
    p_yes: float | None


def is_yes_no(question: str) -> bool:
    """True for a closed question (opens with an auxiliary such as "is", "are", "does")."""
    words = re.findall(r"[a-z]+", question.lower())
    return bool(words) and words[0] in _YES_NO_OPENERS


# ---- the model -------------------------------------------------------------------------------------

class Model:
    """A trained stage-1 / stage-2 model ready for inference (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, vocab: ExtendedVocab, vq_config: vqgan_lib.VQGANConfig,
                 params: Any, vq_params: Any, *, source: str, step: int | None = None):
        from mavilt_jax.stages import get_stage_class

        self.config, self.source, self.step = config, source, step
        self.stage = get_stage_class(config.stage)(config)
        self.stage._finish_setup(vocab)  # the vocabulary, sequence builder and LLM config of training
        self.vocab, self.layout, self.builder = vocab, self.stage.layout, self.stage.builder
        self.llm_config = self.stage.llm_config
        self.instruction = config.stage == "stage2"
        self.vq_config = vq_config
        self.image_size = vq_config.image_size
        self.resolution = data_resolution(config)
        compute = jnp.dtype(self.llm_config.dtype)
        cast = lambda x: jnp.asarray(x, compute) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x)  # noqa: E731
        self.params = jax.tree.map(cast, params)
        self.vq_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), vq_params)
        model = vqgan_lib.VQGAN(vq_config)
        self._encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
        self._decode = jax.jit(lambda p, c: model.apply({"params": p}, c, method=model.decode))

    # ---- images in -------------------------------------------------------------------------------
    def preprocess(self, image: image_io.Source) -> np.ndarray:
        """One radiograph -> uint8 [R, R], what the tokenizer sees (crop, resize; `image_io`)."""
        pixels = image_io.load_radiograph(image, self.resolution or self.image_size)
        if pixels.shape[0] != self.image_size:  # the training data's resolution, then the tokenizer's
            pixels = vqgan_lib.to_uint8(vqgan_lib.to_model_range(pixels, self.image_size))
        return pixels[..., 0]

    def encode(self, images: Sequence[image_io.Source]) -> np.ndarray:
        """Radiographs -> VQ-GAN codes int32 [B, n]."""
        x = np.stack([vqgan_lib.to_model_range(self.preprocess(im)[..., None]) for im in images])
        return np.asarray(self._encode(self.vq_params, jnp.asarray(x)))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, n] -> uint8 radiographs [B, R, R]."""
        out = self._decode(self.vq_params, jnp.asarray(np.asarray(codes, np.int32)))
        return vqgan_lib.to_uint8(np.asarray(out))[..., 0]

    def reconstruct(self, image: image_io.Source) -> np.ndarray:
        """The VQ-GAN reconstruction of a radiograph uint8 [R, R]: what the model sees of it."""
        return self.decode(self.encode([image]))[0]

    # ---- report ---------------------------------------------------------------------------------------
    def report(self, image: image_io.Source, *, seed: int = 0, **decoding: Any) -> str:
        """One radiograph -> its report. ``decoding``: fields of `Decoding` (method="greedy", ...)."""
        return self.reports([image], seed=seed, **decoding)[0]

    def reports(self, images: Sequence[image_io.Source], *, seed: int = 0, **decoding: Any) -> list[str]:
        """Radiographs -> reports, decoded as one batch."""
        options = Decoding(**decoding)
        codes = self.encode(images)
        tokens, lengths = self._pad([self.stage.report_prompt(c) for c in codes])
        if options.method == "beam":
            out = sampling.beam_search(self.params, self.llm_config, tokens, lengths, layout=self.layout,
                                       beam_width=options.beams, max_new_tokens=options.max_new_tokens,
                                       length_penalty=options.length_penalty)
        else:
            greedy = options.method == "greedy"
            sampler = sampling.Sampler(options.max_new_tokens, mode="text", temperature=0.0 if greedy else options.temperature,
                                       top_k=0 if greedy else options.top_k, top_p=1.0 if greedy else options.top_p)
            out = sampling.generate(self.params, self.llm_config, tokens, lengths, sampler=sampler,
                                    rng=jax.random.key(seed), layout=self.layout)
        return [self.vocab.decode_text(t).strip() for t in np.asarray(out.tokens)]

    # ---- image ----------------------------------------------------------------------------------------
    def image(self, report: str, *, guidance_scale: float = 3.0, num_samples: int = 1, seed: int = 0,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
        """A report -> ``num_samples`` radiographs uint8 [num_samples, R, R] (classifier-free guided;
        ``guidance_scale`` 1 is unguided; ``temperature`` 0 is greedy)."""
        report = check_text(report, "report")
        if num_samples < 1:
            raise InferenceError(f"num_samples={num_samples} must be at least 1")
        if temperature < 0 or guidance_scale < 0:
            raise InferenceError("temperature and guidance_scale must be >= 0")
        sampler = sampling.Sampler(self.layout.codes_per_image + 2, mode="image", temperature=float(temperature),
                                   top_k=top_k, top_p=top_p, guidance_scale=float(guidance_scale))
        tokens, lengths = self._pad([self.stage.image_prompt(report, False)] * num_samples)
        kwargs = {}
        if guidance_scale != 1.0:
            u_tokens, u_lengths = self._pad([self.stage.image_prompt(report, True)] * num_samples, tokens.shape[1])
            kwargs = dict(uncond_prompt_tokens=u_tokens, uncond_prompt_lengths=u_lengths)
        out = sampling.generate(self.params, self.llm_config, tokens, lengths, sampler=sampler,
                                rng=jax.random.key(seed), layout=self.layout, **kwargs)
        n = self.layout.codes_per_image
        codes = np.stack([self.vocab.codes(t)[:n] for t in np.asarray(out.tokens)])
        return self.decode(codes)

    # ---- questions ----------------------------------------------------------------------------------
    def answer(self, image: image_io.Source, question: str) -> Answer:
        """One question about a radiograph -> `Answer` (greedy text; P(yes) for yes/no questions)."""
        return self.answers(image, [question])[0]

    def answers(self, image: image_io.Source, questions: Sequence[str], max_new_tokens: int = 16) -> list[Answer]:
        """Several questions about one radiograph, answered as one batch."""
        if not self.instruction:
            raise InferenceError(f"question answering needs a stage-2 model; {self.source} is {self.config.stage}")
        questions = [check_text(q, "question") for q in questions]
        if not questions:
            raise InferenceError("no question given")
        codes = self.encode([image])[0]
        prompts = [self.builder.instruction_prompt("vqa", codes=codes, question=q) for q in questions]
        tokens, lengths = self._pad(prompts)
        sampler = sampling.Sampler(max_new_tokens, mode="text", temperature=0.0)
        out = sampling.generate(self.params, self.llm_config, tokens, lengths, sampler=sampler,
                                rng=jax.random.key(0), layout=self.layout)
        texts = [self.vocab.decode_text(t).strip() for t in np.asarray(out.tokens)]
        logp = {}
        for word in ("yes", "no"):  # the answer as training scored it: its text ids, then eos
            ids = self.vocab.encode_text(word) + [self.layout.eos_id]
            cont = np.tile(np.asarray(ids, np.int32), (len(prompts), 1))
            total, _ = sampling.score_continuations(self.params, self.llm_config, tokens, lengths, cont,
                                                    np.full((len(prompts),), len(ids), np.int32))
            logp[word] = np.asarray(total, np.float64)
        p_yes = 1.0 / (1.0 + np.exp(logp["no"] - logp["yes"]))
        return [Answer(q, t, float(p) if is_yes_no(q) else None) for q, t, p in zip(questions, texts, p_yes)]

    # ---- helpers ------------------------------------------------------------------------------------
    def _pad(self, prompts: Sequence[Sequence[int]], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        longest = max(len(p) for p in prompts)
        length = length or -(-longest // _PROMPT_BUCKET) * _PROMPT_BUCKET
        return sequences.left_pad(prompts, self.layout.pad_id, length=max(length, longest))


def check_text(text: Any, what: str) -> str:
    """``text`` stripped, or `InferenceError` when it is not a non-empty string."""
    if not isinstance(text, str) or not text.strip():
        raise InferenceError(f"the {what} is empty")
    return text.strip()


def data_resolution(config: ml_collections.ConfigDict) -> int | None:
    """The side of the training images (``r64_small`` -> 64), or None when the config does not say."""
    name = str(config.get("data", {}).get("builder_config") or "")
    found = re.findall(r"r(\d+)", name)
    return int(found[-1]) if found else None


# ---- loading ----------------------------------------------------------------------------------------

def load(path: str | pathlib.Path, *, allow_unfinished: bool = False) -> Model:
    """A stage-2 (or stage-1) training workdir, an export bundle, or a main-job workdir (its
    ``stage2/``) -> `Model`.

    Raises `InferenceError` for a missing path, a workdir of another stage, a workdir without a
    checkpoint, or one whose training has not reached ``total_steps`` (unless ``allow_unfinished``).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise InferenceError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_dir():
        raise InferenceError(f"checkpoint {str(path)!r} is not a directory (a workdir or an export bundle)")
    if (path / BUNDLE_FILE).is_file():
        return _load_bundle(path)
    if not (path / "config.json").is_file() and (path / "stage2" / "config.json").is_file():
        path = path / "stage2"  # a main-job workdir (configs/demo.py): its final model
    return _load_workdir(path, allow_unfinished)


def workdir_info(path: pathlib.Path, allow_unfinished: bool = False) -> tuple[ml_collections.ConfigDict, int]:
    """(training config, last checkpoint step) of a finished stage-1 / stage-2 workdir, else `InferenceError`."""
    try:
        saved = checkpointing.read_workdir_config(str(path))
    except FileNotFoundError as e:
        raise InferenceError(f"{str(path)!r} is neither a training workdir (no config.json) nor an export bundle") from e
    stage = saved.get("stage")
    if stage not in MULTIMODAL_STAGES:
        raise InferenceError(f"{str(path)!r} is a {stage!r} workdir; inference needs a stage-2 (or stage-1) workdir")
    config = ml_collections.ConfigDict(saved)
    steps = _checkpoint_steps(path)
    if not steps:
        raise InferenceError(f"{str(path)!r} has no checkpoint yet (unfinished workdir)")
    if max(steps) < int(config.total_steps) and not allow_unfinished:
        raise InferenceError(f"{str(path)!r} is unfinished: step {max(steps)} of {config.total_steps} "
                             "(finish training, or allow unfinished workdirs)")
    if not (path / "vocab").is_dir():
        raise InferenceError(f"{str(path)!r} has no vocab/ folder (unfinished workdir)")
    return config, max(steps)


def _checkpoint_steps(path: pathlib.Path) -> list[int]:
    folder = pathlib.Path(checkpointing.checkpoint_dir(str(path)))
    if not folder.is_dir():
        return []
    # Finished orbax steps are plain integer folders (in-progress saves carry a tmp suffix).
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]


def workdir_vq_config(config: ml_collections.ConfigDict) -> vqgan_lib.VQGANConfig:
    """The VQ-GAN config a multimodal stage trained with: its tokenizer workdir's, else ``config.vqgan``."""
    tokenizer = config.get("tokenizer_checkpoint")
    if tokenizer:
        try:
            return vqgan_lib.vqgan_config(checkpointing.read_workdir_config(tokenizer)["model"])
        except FileNotFoundError as e:
            raise InferenceError(f"the VQ-GAN workdir this model trained with, {tokenizer!r}, is gone; "
                                 "export a bundle where it still exists") from e
    return vqgan_lib.vqgan_config(config.vqgan.model)


def read_parameters(path: pathlib.Path, step: int) -> tuple[Any, Any]:
    """(LLM params, frozen VQ-GAN params) of a workdir's checkpoint ``step`` (no optimizer state kept)."""
    with warnings.catch_warnings():  # orbax notes that it reads shardings from the file: expected here
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        params = checkpointing.load_subtree(str(path), "params", step=step)
        vq_params = checkpointing.load_subtree(str(path), "frozen", step=step)["vqgan"]
    return params, vq_params


def _load_workdir(path: pathlib.Path, allow_unfinished: bool) -> Model:
    config, step = workdir_info(path, allow_unfinished)
    vq_config = workdir_vq_config(config)
    vocab = ExtendedVocab.load(path / "vocab")
    params, vq_params = read_parameters(path, step)
    return Model(config, vocab, vq_config, params, vq_params, source=str(path), step=step)


def _load_bundle(path: pathlib.Path) -> Model:
    import orbax.checkpoint as ocp

    meta = json.loads((path / BUNDLE_FILE).read_text())
    if meta.get("format") != BUNDLE_FORMAT:
        raise InferenceError(f"{str(path / BUNDLE_FILE)!r} is not an inference bundle (format {meta.get('format')!r})")
    config = ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))
    vq_config = vqgan_lib.vqgan_config(json.loads((path / "vqgan.json").read_text()))
    vocab = ExtendedVocab.load(path / "vocab")
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore((path / "llm").absolute())
        vq_params = checkpointer.restore((path / "vqgan").absolute())
    return Model(config, vocab, vq_config, params, vq_params, source=str(path), step=meta.get("step"))

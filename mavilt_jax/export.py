"""Export a trained stage-2 (or stage-1) workdir as an inference bundle.

  python -m mavilt_jax.export --checkpoint=/tmp/mavilt/stage2 --out=/tmp/mavilt/bundle [--dtype=bfloat16]

The bundle keeps what inference needs and nothing else (no optimizer state, no Eq. 11 anchor, no
phi): the LLM parameters and the frozen VQ-GAN parameters (orbax, optionally cast to ``--dtype``),
the training config, the VQ-GAN config, the extended vocabulary, and the LLM as a Hugging Face
directory (``hf/``, `models.pretrained.export_hf_checkpoint`; the image codes and specials are
its last vocabulary rows, their meaning is in ``vocab/``). `mavilt_jax.load` and
``python -m mavilt_jax.generate`` read it like a workdir. A user error exits with status 2 and
one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
import sys

from mavilt_jax import cli

DTYPES = ("float32", "bfloat16", "float16")


def directory_bytes(path: pathlib.Path) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def export(checkpoint: str | pathlib.Path, out: str | pathlib.Path, *, dtype: str | None = None,
           allow_unfinished: bool = False) -> dict:
    """Writes the bundle of ``checkpoint`` (a workdir) to ``out``; returns bundle.json's content."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from mavilt_jax import checkpointing, inference
    from mavilt_jax.data.vocab import ExtendedVocab
    from mavilt_jax.models import pretrained
    from mavilt_jax.stages import lm

    checkpoint, out = pathlib.Path(checkpoint), pathlib.Path(out)
    if dtype is not None and dtype not in DTYPES:
        raise inference.InferenceError(f"--dtype={dtype!r}; expected one of {DTYPES}")
    if not checkpoint.is_dir():
        raise inference.InferenceError(f"checkpoint {str(checkpoint)!r} does not exist or is not a directory")
    if (checkpoint / inference.BUNDLE_FILE).is_file():
        raise inference.InferenceError(f"{str(checkpoint)!r} is already an export bundle")
    if out.exists() and any(out.iterdir()):
        raise inference.InferenceError(f"--out {str(out)!r} exists and is not empty")
    config, step = inference.workdir_info(checkpoint, allow_unfinished)
    vq_config = inference.workdir_vq_config(config)
    params, vq_params = inference.read_parameters(checkpoint, step)
    if dtype is not None:
        cast = lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x  # noqa: E731
        params, vq_params = jax.tree.map(cast, params), jax.tree.map(cast, vq_params)

    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((out / "llm").absolute(), params)
        checkpointer.save((out / "vqgan").absolute(), vq_params)
        checkpointer.wait_until_finished()
    (out / "config.json").write_text(config.to_json_best_effort(indent=2))
    (out / "vqgan.json").write_text(json.dumps(dataclasses.asdict(vq_config), indent=2))
    shutil.copytree(checkpoint / "vocab", out / "vocab")
    vocab = ExtendedVocab.load(out / "vocab")
    ids = {"eos_token_id": vocab.layout.eos_id, "pad_token_id": vocab.layout.pad_id}
    if vocab.bos_id is not None:
        ids["bos_token_id"] = vocab.bos_id
    pretrained.export_hf_checkpoint(params, lm.llm_config(config.model, vocab.size), out / "hf", dtype=dtype, **ids)
    ckpt_dir = pathlib.Path(checkpointing.checkpoint_dir(str(checkpoint))) / str(step)
    meta = {
        "format": inference.BUNDLE_FORMAT, "version": 1, "stage": config.stage, "step": step,
        "dtype": dtype or "as trained", "source": str(checkpoint.absolute()),
        "bytes": {"bundle": directory_bytes(out), "params_orbax": directory_bytes(out / "llm") + directory_bytes(out / "vqgan"),
                  "hf": directory_bytes(out / "hf"), "training_checkpoint_step": directory_bytes(ckpt_dir)},
    }
    (out / inference.BUNDLE_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m mavilt_jax.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a finished stage-2 (or stage-1) workdir")
    parser.add_argument("--out", required=True, help="the bundle folder to write (new or empty)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="cast parameters (default: as trained)")
    parser.add_argument("--allow_unfinished", action="store_true", help="export the last checkpoint of an unfinished run")
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's read-only restore notes are not for the user
    from mavilt_jax import inference

    try:
        meta = export(args.checkpoint, args.out, dtype=args.dtype, allow_unfinished=args.allow_unfinished)
    except inference.InferenceError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    size = meta["bytes"]
    print(f"wrote {args.out}: {size['bundle'] / 1e6:.1f} MB in all ({size['params_orbax'] / 1e6:.1f} MB parameters, "
          f"{size['hf'] / 1e6:.1f} MB Hugging Face copy); the training checkpoint step was "
          f"{size['training_checkpoint_step'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

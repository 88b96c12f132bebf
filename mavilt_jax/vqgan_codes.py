"""Encode a radiograph into VQ-GAN codes, or decode codes back into a PNG.

  python -m mavilt_jax.vqgan_codes encode --checkpoint DIR --image x.png --out codes.npy
  python -m mavilt_jax.vqgan_codes decode --checkpoint DIR --codes codes.npy --out y.png

``DIR`` is a VQ-GAN training workdir (stage ``vqgan``, or its ``checkpoints/`` folder). Colour
images are converted to grayscale; square images are resized to the VQ-GAN's resolution. Codes
are saved as int32 [h * w] (row-major latent grid). Bad arguments exit with a message and status 2.
"""

from __future__ import annotations

import os
import sys

import numpy as np


class UsageError(Exception):
    """A bad argument or input file; reported as one line, without a traceback."""


def _load(checkpoint: str):
    from mavilt_jax.models import vqgan

    if not os.path.isdir(checkpoint):
        raise UsageError(f"--checkpoint {checkpoint!r} is not a directory")
    try:
        cfg, params = vqgan.load_vqgan(checkpoint)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise UsageError(f"cannot load a VQ-GAN from {checkpoint!r}: {e}") from e
    return vqgan.VQGAN(cfg), cfg, params


def read_image(path: str) -> np.ndarray:
    """A PNG/JPEG file -> uint8 [H, W, 1] grayscale."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise UsageError(f"--image {path!r} does not exist")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"))[..., None]
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # PIL's errors for broken files: OSError (truncated), SyntaxError and ValueError (bad
        # headers), DecompressionBombError (a header declaring billions of pixels).
        raise UsageError(f"--image {path!r} is not a readable image: {e}") from e


def encode(checkpoint: str, image_path: str, out: str) -> np.ndarray:
    import jax

    from mavilt_jax.models import vqgan

    model, cfg, params = _load(checkpoint)
    image = read_image(image_path)
    if image.shape[0] != image.shape[1]:
        raise UsageError(f"--image must be square, got {image.shape[1]}x{image.shape[0]}")
    x = vqgan.to_model_range(image[None], cfg.image_size)
    codes = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(params, x))
    codes = codes[0].astype(np.int32)
    np.save(out, codes)
    return codes


def decode(checkpoint: str, codes_path: str, out: str) -> np.ndarray:
    import jax
    from PIL import Image

    from mavilt_jax.models import vqgan

    model, cfg, params = _load(checkpoint)
    if not os.path.isfile(codes_path):
        raise UsageError(f"--codes {codes_path!r} does not exist")
    try:
        codes = np.load(codes_path)
    except (ValueError, OSError) as e:
        raise UsageError(f"--codes {codes_path!r} is not a .npy array: {e}") from e
    codes = codes.reshape(-1)
    if codes.size != cfg.codes_per_image or not np.issubdtype(codes.dtype, np.integer):
        raise UsageError(f"--codes must hold {cfg.codes_per_image} integer codes, got {codes.size} of {codes.dtype}")
    if codes.min() < 0 or codes.max() >= cfg.codebook_size:
        raise UsageError(f"--codes must lie in [0, {cfg.codebook_size}), got [{codes.min()}, {codes.max()}]")
    image = jax.jit(lambda p, c: model.apply({"params": p}, c, method=model.decode))(params, codes[None].astype(np.int32))
    pixels = vqgan.to_uint8(image)[0, :, :, 0]
    Image.fromarray(pixels).save(out)
    return pixels


def main(argv: list[str] | None = None) -> int:
    from mavilt_jax import cli

    parser = cli.ArgumentParser(prog="python -m mavilt_jax.vqgan_codes", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="image file -> codes .npy")
    enc.add_argument("--checkpoint", required=True, help="VQ-GAN training workdir (or its checkpoints/ folder)")
    enc.add_argument("--image", required=True, help="PNG/JPEG radiograph (square; colour becomes grayscale)")
    enc.add_argument("--out", required=True, help="codes .npy to write (int32 [h * w])")
    dec = sub.add_parser("decode", help="codes .npy -> PNG")
    dec.add_argument("--checkpoint", required=True, help="VQ-GAN training workdir (or its checkpoints/ folder)")
    dec.add_argument("--codes", required=True, help="codes .npy (int32 [h * w])")
    dec.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        out_dir = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(out_dir):
            raise UsageError(f"--out: folder {out_dir!r} does not exist")
        if args.command == "encode":
            codes = encode(args.checkpoint, args.image, args.out)
            print(f"wrote {codes.size} codes to {args.out}")
        else:
            pixels = decode(args.checkpoint, args.codes, args.out)
            print(f"wrote a {pixels.shape[1]}x{pixels.shape[0]} image to {args.out}")
    except UsageError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

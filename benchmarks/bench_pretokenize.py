"""Pre-tokenization throughput: images encoded per second by the frozen VQ-GAN encoder.

  python benchmarks/bench_pretokenize.py --tokenizer DIR [--data synthetic_cxr/r64 --split validation
      --batch_size 64 --build_dir /tmp/pretok]

Prints the encoder's steady-state images/s (jitted fixed-size batches, compile excluded), and
with ``--build_dir`` the end-to-end rate of building the `pretokenized` dataset of that split
(decode PNG + resize + encode + write array_record).
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from mavilt_jax.data import pipeline
from tfds_builders.pretokenized import BatchEncoder, Pretokenized, make_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer training workdir")
    parser.add_argument("--data", default="synthetic_cxr/r64")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build_dir", default=None, help="also build the pretokenized split here")
    args = parser.parse_args(argv)

    name, _, config_name = args.data.partition("/")
    source = pipeline.load_source(name, args.split, builder_config=config_name or None)
    images = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    encoder = BatchEncoder(args.tokenizer, args.batch_size)
    encoder(images[: args.batch_size])  # compile
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(encoder(images))
        rates.append(len(images) / (time.perf_counter() - start))
    cfg = encoder.config
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}; tokenizer {cfg.image_size}px, "
          f"{cfg.codes_per_image} codes/image, K={cfg.codebook_size}; batch {args.batch_size}")
    print(f"encoder: {np.median(rates):.1f} images/s (median of {args.repeats} passes over {len(images)} images)")

    if args.build_dir:
        config = make_config("bench", tokenizer_checkpoint=args.tokenizer, source_name=name,
                             source_config=config_name or None, splits=(args.split,), batch_size=args.batch_size)
        builder = Pretokenized(config=config, data_dir=args.build_dir)
        start = time.perf_counter()
        builder.download_and_prepare()
        seconds = time.perf_counter() - start
        n = builder.info.splits[args.split].num_examples
        print(f"build: {n} examples in {seconds:.1f} s = {n / seconds:.1f} images/s (incl. compile and writing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

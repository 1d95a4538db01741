"""A fixed-point ISP: integer operations only, from raw DN to the integer program's input codes.

Formats (all values held in int64 arrays):
  raw       unsigned N-bit DN, black level BL
  linear    unsigned Q16 linear light: 65535 = 1.0 = a white patch (after gain and white balance)
  gains     per CFA channel, multiplier M and shift S with gain ~ M / 2^S (intprog.arith's
            quantize_multiplier; round_shift half up)
  demosaic  bilinear kernels / 4 or Malvar-He-Cutler kernels / 16 (integer taps, one rounding shift)
  CCM       signed Q10 3x3 (each row sums to exactly 1024, so gray stays gray)
  gamma     LUT of 4096 entries indexed by the linear value's top 12 bits (round_shift by 4) -> 8-bit sRGB
  luma      Y = (77 R + 150 G + 29 B) / 256 on the 8-bit values (BT.601), for a 1-channel model
  resize    centre crop to the target's aspect, k x k box sums times a Q multiplier of 1/k^2, then
            separable bilinear with Q8 weights (one rounding shift by 16)
  codes     a 256-entry LUT from the 8-bit value to the program's input code
Every table and multiplier is computed once, in floating point, when the ISP is configured (like the
integer program's nonlinear tables); applying them is integer-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.sensor.scene import cfa_index, linear_to_srgb
from intprog.arith import quantize_multiplier, round_shift
from intprog.program import input_codes

LINEAR_MAX = (1 << 16) - 1
GAMMA_INDEX_BITS = 12
CCM_FRAC_BITS = 10
RESIZE_FRAC_BITS = 8
LUMA_Q8 = np.array([77, 150, 29], dtype=np.int64)
DEMOSAICS = ("mhc", "bilinear")

# Malvar-He-Cutler (2004) 5x5 kernels times 16: at R/B sites for G; at G sites for the colour whose
# neighbours sit in the same row; at R for B (and at B for R). The column variant is the transpose.
_MHC_G_AT_RB = np.array([[0, 0, -2, 0, 0], [0, 0, 4, 0, 0], [-2, 4, 8, 4, -2], [0, 0, 4, 0, 0], [0, 0, -2, 0, 0]])
_MHC_ROW = np.array([[0, 0, 1, 0, 0], [0, -2, 0, -2, 0], [-2, 8, 10, 8, -2], [0, -2, 0, -2, 0], [0, 0, 1, 0, 0]])
_MHC_RB_AT_BR = np.array([[0, 0, -3, 0, 0], [0, 4, 0, 4, 0], [-3, 0, 12, 0, -3], [0, 4, 0, 4, 0], [0, 0, -3, 0, 0]])
# Bilinear interpolation of a channel's masked plane, times 4.
_BIL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]])
_BIL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]])


@dataclass(frozen=True)
class IspParams:
    """One configured ISP: every constant is an integer (or an integer table)."""

    cfa: str  # "mono" or "rggb"
    black_level: int
    gain_multiplier: np.ndarray  # [3] per R, G, B filter (mono uses [1])
    gain_shift: np.ndarray
    ccm_q10: np.ndarray | None  # [3, 3] int64, rows summing to 1024
    gamma_lut: np.ndarray  # [4096] uint8
    demosaic: str = "mhc"
    out_shape: tuple[int, int] | None = None  # (H, W) of the model input; None keeps the sensor's
    gray: bool = False  # reduce RGB to luma for a 1-channel model

    @classmethod
    def build(cls, cfa: str, black_level: int, gains: np.ndarray, ccm: np.ndarray | None = None,
              demosaic: str = "mhc", out_shape: tuple[int, int] | None = None, gray: bool = False) -> IspParams:
        """Quantize float settings (gains: linear Q16 per DN above black, per channel) to integers."""
        if demosaic not in DEMOSAICS:
            raise ValueError(f"demosaic must be one of {DEMOSAICS}, got {demosaic!r}")
        m, s = quantize_multiplier(np.asarray(gains, dtype=np.float64))
        return cls(cfa=cfa, black_level=int(black_level), gain_multiplier=np.atleast_1d(m),
                   gain_shift=np.atleast_1d(s), ccm_q10=None if ccm is None else ccm_to_q10(ccm),
                   gamma_lut=gamma_lut(), demosaic=demosaic, out_shape=out_shape, gray=gray)


def ccm_to_q10(ccm: np.ndarray) -> np.ndarray:
    """A float 3x3 colour matrix in Q10, each row's rounding error put on its diagonal so it sums to 1024."""
    q = np.round(np.asarray(ccm, dtype=np.float64) * (1 << CCM_FRAC_BITS)).astype(np.int64)
    q[np.arange(3), np.arange(3)] += (1 << CCM_FRAC_BITS) - q.sum(axis=1)
    return q


def gamma_lut() -> np.ndarray:
    """sRGB encoding of the 12-bit linear index i / 4095, rounded to 8 bits."""
    top = (1 << GAMMA_INDEX_BITS) - 1
    return np.round(255 * linear_to_srgb(np.arange(top + 1) / top)).astype(np.uint8)


def black_level(raw: np.ndarray, level: int) -> np.ndarray:
    """DN above the black level, negatives (read noise below black) clamped to 0."""
    return np.maximum(np.asarray(raw, dtype=np.int64) - level, 0)


def gain(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, channel: np.ndarray | None = None) -> np.ndarray:
    """Digital gain and white balance to linear Q16: clamp(round_shift(x M_c, S_c), 0, 65535)."""
    m, s = (multiplier[0], shift[0]) if channel is None else (multiplier[channel], shift[channel])
    return np.clip(round_shift(x * m, s), 0, LINEAR_MAX)


def _correlate(padded: np.ndarray, kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Integer correlation of a reflect-padded [..., H + 2r, W + 2r] image with an odd square kernel."""
    h, w = shape
    out = np.zeros((*padded.shape[:-2], h, w), dtype=np.int64)
    for (i, j), c in np.ndenumerate(kernel):
        if c:
            out += int(c) * padded[..., i:i + h, j:j + w]
    return out


def demosaic(mosaic: np.ndarray, method: str = "mhc") -> np.ndarray:
    """RGGB linear mosaic [..., H, W] -> RGB [..., H, W, 3], integer kernels, edges reflected
    (reflection keeps the Bayer phase). H and W must be even."""
    h, w = mosaic.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"an RGGB mosaic needs even height and width, got {h}x{w}")
    idx = cfa_index((h, w))
    row_even = (np.arange(h) % 2 == 0)[:, None]
    if method == "bilinear":
        pad = [(0, 0)] * (mosaic.ndim - 2) + [(1, 1), (1, 1)]
        planes = [np.pad(np.where(idx == c, mosaic, 0), pad, mode="reflect") for c in range(3)]
        kernels = (_BIL_RB, _BIL_G, _BIL_RB)
        rgb = [round_shift(_correlate(p, k, (h, w)), 2) for p, k in zip(planes, kernels, strict=True)]
        return np.clip(np.stack(rgb, axis=-1), 0, LINEAR_MAX)
    if method != "mhc":
        raise ValueError(f"demosaic must be one of {DEMOSAICS}, got {method!r}")
    padded = np.pad(mosaic, [(0, 0)] * (mosaic.ndim - 2) + [(2, 2), (2, 2)], mode="reflect")
    g_at_rb = _correlate(padded, _MHC_G_AT_RB, (h, w))
    by_row = _correlate(padded, _MHC_ROW, (h, w))  # colour of the row's neighbours, at a G site
    by_col = _correlate(padded, _MHC_ROW.T, (h, w))  # colour of the column's neighbours, at a G site
    rb_at_br = _correlate(padded, _MHC_RB_AT_BR, (h, w))
    own = mosaic * 16
    is_r, is_b, is_g = idx == 0, idx == 2, idx == 1
    # G sites on R rows have R left/right and B above/below; on B rows the other way round.
    r = np.where(is_r, own, np.where(is_b, rb_at_br, np.where(row_even, by_row, by_col)))
    g = np.where(is_g, own, g_at_rb)
    b = np.where(is_b, own, np.where(is_r, rb_at_br, np.where(row_even, by_col, by_row)))
    return np.clip(round_shift(np.stack([r, g, b], axis=-1), 4), 0, LINEAR_MAX)


def color_correct(rgb: np.ndarray, ccm_q10: np.ndarray) -> np.ndarray:
    """out_c = clamp(round_shift(sum_k CCM[c, k] rgb_k, 10), 0, 65535)."""
    acc = np.asarray(rgb, dtype=np.int64) @ ccm_q10.T
    return np.clip(round_shift(acc, CCM_FRAC_BITS), 0, LINEAR_MAX)


def gamma(linear: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Linear Q16 -> 8-bit sRGB through the LUT, indexed by round_shift(x, 4) clamped to 4095."""
    index = np.minimum(round_shift(linear, 16 - GAMMA_INDEX_BITS), len(lut) - 1)
    return lut[index].astype(np.int64)


def luma(rgb8: np.ndarray) -> np.ndarray:
    """BT.601 luma of 8-bit R'G'B' [..., 3]: round_shift(77 R + 150 G + 29 B, 8)."""
    return round_shift(np.asarray(rgb8, dtype=np.int64) @ LUMA_Q8, 8)


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and Q8 weights of the second one, pixel centres aligned."""
    one = 1 << RESIZE_FRAC_BITS
    num = (2 * np.arange(n_out) + 1) * n_in - n_out  # 2 * n_out * (source position)
    pos = np.maximum(num * one // (2 * n_out), 0)
    i0 = np.minimum(pos >> RESIZE_FRAC_BITS, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), pos & (one - 1)


def resize(img: np.ndarray, out_shape: tuple[int, int], channel_axis: bool = False) -> np.ndarray:
    """Centre crop to the aspect of `out_shape`, box-average by the integer factor, bilinear to size.

    img: [..., H, W] (or [..., H, W, C] with channel_axis) of non-negative integers.
    """
    x = np.asarray(img, dtype=np.int64)
    if not channel_axis:
        x = x[..., None]
    h, w = x.shape[-3:-1]
    oh, ow = out_shape
    # Crop: the largest centred window with the output's aspect ratio (integer arithmetic).
    ch, cw = (h, max(1, h * ow // oh)) if h * ow <= w * oh else (max(1, w * oh // ow), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    x = x[..., top:top + ch, left:left + cw, :]
    k = min(ch // oh, cw // ow)
    if k >= 2:
        bh, bw = ch // k, cw // k
        x = x[..., :bh * k, :bw * k, :].reshape(*x.shape[:-3], bh, k, bw, k, x.shape[-1]).sum(axis=(-4, -2))
        m, s = quantize_multiplier(1.0 / (k * k))
        x = round_shift(x * m, s)
    if x.shape[-3:-1] != (oh, ow):
        one = 1 << RESIZE_FRAC_BITS
        r0, r1, fr = _bilinear_taps(x.shape[-3], oh)
        c0, c1, fc = _bilinear_taps(x.shape[-2], ow)
        rows = x[..., r0, :, :] * (one - fr)[:, None, None] + x[..., r1, :, :] * fr[:, None, None]
        both = rows[..., c0, :] * (one - fc)[:, None] + rows[..., c1, :] * fc[:, None]
        x = round_shift(both, 2 * RESIZE_FRAC_BITS)
    return x if channel_axis else x[..., 0]


def input_code_lut(spec: dict, mean: float, std: float) -> np.ndarray:
    """256-entry table: 8-bit pixel v -> the program's input code for the model input (v/255 - mean)/std.

    Float32 normalization as the model's preprocessing does it, then intprog's `input_codes`, so the
    sensor's codes equal the float path's bit for bit.
    """
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    x = (v - np.float32(mean)) / np.float32(std)
    return input_codes(spec, x)


def process(raw: np.ndarray, p: IspParams) -> np.ndarray:
    """Raw DN [..., H, W] -> 8-bit image [..., H', W'] (mono or gray) or [..., H', W', 3] (RGB)."""
    x = black_level(raw, p.black_level)
    if p.cfa == "mono":
        img = gamma(gain(x, p.gain_multiplier, p.gain_shift), p.gamma_lut)
        return img if p.out_shape is None else resize(img, p.out_shape)
    lin = gain(x, p.gain_multiplier, p.gain_shift, cfa_index(x.shape[-2:]))
    rgb = demosaic(lin, p.demosaic)
    if p.ccm_q10 is not None:
        rgb = color_correct(rgb, p.ccm_q10)
    img = gamma(rgb, p.gamma_lut)
    if p.out_shape is not None:
        img = resize(img, p.out_shape, channel_axis=True)
    return luma(img) if p.gray else img

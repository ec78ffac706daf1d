"""Baseline JPEG as PIL (libjpeg) writes and reads it, in torch integer arithmetic.

libjpeg's quality scaling of the ITU T.81 Annex K tables, its 16-bit fixed-point colour
conversion, 4:2:0 chroma subsampling (h2v2) and "fancy" triangular upsampling, and its
accurate integer DCT (JDCT_ISLOW): the same 8-bit output as PIL's save and load.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from snnl.corruptions.imageops import pad

# JPEG (ITU T.81 Annex K tables, libjpeg's quality scaling and rounding)
# fmt: off
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4
# fmt: on


def _jpeg_table(base: tuple[tuple[int, ...], ...], quality: int) -> Tensor:
    """libjpeg ``jpeg_set_quality(quality, force_baseline=TRUE)``."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    t = torch.tensor(base, dtype=torch.int64)
    return torch.clamp((t * scale + 50) // 100, 1, 255)


# libjpeg's accurate integer DCT (jfdctint.c / jidctint.c): 13-bit constants
_CONST_BITS, _PASS1_BITS = 13, 2
_F0298, _F0390, _F0541, _F0765 = 2446, 3196, 4433, 6270
_F0899, _F1175, _F1501, _F1847 = 7373, 9633, 12299, 15137
_F1961, _F2053, _F2562, _F3072 = 16069, 16819, 20995, 25172


def _fdct_sums(d: list[Tensor]) -> list[Tensor]:
    """``jpeg_fdct_islow``'s butterflies for one pass, before its DESCALE: eight integer
    linear combinations of d[0..7] (outputs 0 and 4 scaled by 2^13 so that every output
    takes the same shift: 11 in the row pass, 15 in the column pass)."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out: list[Tensor] = [tmp0] * 8
    out[0], out[4] = (tmp10 + tmp11) << _CONST_BITS, (tmp10 - tmp11) << _CONST_BITS
    z1 = (tmp12 + tmp13) * _F0541
    out[2], out[6] = z1 + tmp13 * _F0765, z1 - tmp12 * _F1847
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * _F0298, tmp5 * _F2053, tmp6 * _F3072, tmp7 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    out[7], out[5] = tmp4 + z1 + z3, tmp5 + z2 + z4
    out[3], out[1] = tmp6 + z2 + z3, tmp7 + z1 + z4
    return out


def _idct_sums(d: list[Tensor]) -> list[Tensor]:
    """``jpeg_idct_islow``'s butterflies for one pass, before its DESCALE (11 in the
    column pass, 18 in the row pass)."""
    z1 = (d[2] + d[6]) * _F0541
    tmp2 = z1 - d[6] * _F1847
    tmp3 = z1 + d[2] * _F0765
    tmp0 = (d[0] + d[4]) << _CONST_BITS
    tmp1 = (d[0] - d[4]) << _CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F1175
    t0, t1, t2, t3 = t0 * _F0298, t1 * _F2053, t2 * _F3072, t3 * _F1501
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
    return [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0,
            tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]  # fmt: skip


@functools.lru_cache(maxsize=1)
def _islow_matrices() -> tuple[Tensor, Tensor]:
    """The integer matrices of the two butterflies (applied to the unit vectors), float64.

    Within a pass libjpeg only adds and multiplies integers, so each pass is exactly
    DESCALE(C @ v); in float64 every product and sum here stays below 2^53 and is exact.
    """
    eye = list(torch.eye(8, dtype=torch.int64))
    forward = torch.stack(_fdct_sums(eye)).to(torch.float64)
    inverse = torch.stack(_idct_sums(eye)).to(torch.float64)
    return forward, inverse


def _descale(x: Tensor, n: int) -> Tensor:
    """libjpeg's DESCALE, (x + 2^(n-1)) >> n, on float64 integers."""
    return torch.floor((x + 2.0 ** (n - 1)) / 2.0**n)


def _jpeg_plane(plane: Tensor, table: Tensor) -> Tensor:
    """Encode and decode (N, H, W) integer samples in 0..255 (int64), H and W multiples
    of 8, as libjpeg does with JDCT_ISLOW: integer forward DCT (rows, then columns;
    scaled by 8), quantisation sign(t) * ((|t| + 4q) // 8q), dequantisation, integer
    inverse DCT (columns, then rows), + 128, clamp to 0..255."""
    n, h, w = plane.shape
    forward, inverse = (m.to(plane.device) for m in _islow_matrices())
    q = table.to(device=plane.device, dtype=torch.float64)
    # blocks as (n, h/8, 8, w/8, 8): a row transform acts on the last dim, a column
    # transform on dim 2; each is one (rows x 8) @ (8 x 8) product
    blocks = (plane - 128).to(torch.float64).reshape(n, h // 8, 8, w // 8, 8)

    def along_rows(t: Tensor, m: Tensor) -> Tensor:
        return t @ m.T

    def along_cols(t: Tensor, m: Tensor) -> Tensor:
        return (t.transpose(2, 4) @ m.T).transpose(2, 4)

    rows = _descale(along_rows(blocks, forward), _CONST_BITS - _PASS1_BITS)
    coef = _descale(along_cols(rows, forward), _CONST_BITS + _PASS1_BITS)
    q8 = q.view(1, 1, 8, 1, 8) * 8
    coef = torch.sign(coef) * torch.floor((coef.abs() + q8 / 2) / q8)
    dequantised = coef * q.view(1, 1, 8, 1, 8)
    cols = _descale(along_cols(dequantised, inverse), _CONST_BITS - _PASS1_BITS)
    out = _descale(along_rows(cols, inverse), _CONST_BITS + _PASS1_BITS + 3) + 128
    return out.clamp(0, 255).reshape(n, h, w).long()


def _fancy_upsample(plane: Tensor, h: int, w: int) -> Tensor:
    """libjpeg's h2v2 "fancy" (triangular) upsampling with its integer rounding."""
    p = torch.cat([plane[:, :1], plane, plane[:, -1:]], dim=1)  # edge rows repeated
    above = p[:, 1:-1] * 3 + p[:, :-2]  # output rows 2i: 3 * row i + row i - 1
    below = p[:, 1:-1] * 3 + p[:, 2:]  # output rows 2i + 1
    rows = torch.stack([above, below], dim=2).reshape(plane.shape[0], -1, plane.shape[2])
    c = torch.cat([rows[:, :, :1], rows, rows[:, :, -1:]], dim=2)
    left = (c[:, :, 1:-1] * 3 + c[:, :, :-2] + 8) >> 4
    right = (c[:, :, 1:-1] * 3 + c[:, :, 2:] + 7) >> 4
    out = torch.stack([left, right], dim=3).reshape(plane.shape[0], rows.shape[1], -1)
    return out[:, :h, :w]


_SCALE = 16  # libjpeg's colour conversion: 16-bit fixed point (jccolor.c, jdcolor.c)


def _fix(v: float) -> int:
    return int(v * (1 << _SCALE) + 0.5)


def jpeg_roundtrip(x: Tensor, quality: int) -> Tensor:
    """Baseline JPEG at ``quality``, as PIL (libjpeg) writes and reads it: 4:2:0 for colour,
    one component for grey; input rounded to 8 bits; integer arithmetic throughout."""
    n, c, h, w = x.shape
    work = x.to(torch.float64) if x.dtype != torch.float64 else x
    s = torch.floor(work.clamp(0, 1) * 255 + 0.5).long()
    luma = _jpeg_table(_JPEG_LUMA, quality)
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    if c == 1:
        plane = pad(s[:, 0], 0, ph - h, 0, pw - w, "nearest")
        out = _jpeg_plane(plane, luma)[:, :h, :w].unsqueeze(1)
        return (out.to(torch.float64) / 255).to(x.dtype)
    r, g, b = s[:, 0], s[:, 1], s[:, 2]
    half, offset = 1 << (_SCALE - 1), 128 << _SCALE
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> _SCALE
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> _SCALE
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> _SCALE
    y = _jpeg_plane(pad(y, 0, ph - h, 0, pw - w, "nearest"), luma)[:, :h, :w]
    # libjpeg: rows padded to the 2-row group and columns to the chroma blocks' width by
    # repeating the edge, averaged 2 x 2 (h2v2_downsample, bias 1, 2, 1, 2, ...), then the
    # last chroma row repeated down to a whole block
    ch, cw = -(-h // 2), -(-w // 2)
    bh, bw = -(-ch // 8) * 8, -(-cw // 8) * 8
    bias = torch.tensor([1, 2], device=s.device).repeat(bw // 2)
    chroma_table = _jpeg_table(_JPEG_CHROMA, quality)
    planes = []
    for t in (cb, cr):
        t = pad(t, 0, 2 * ch - h, 0, 2 * bw - w, "nearest")
        sums = t.reshape(n, ch, 2, bw, 2).sum(dim=(2, 4))
        small = pad((sums + bias) >> 2, 0, bh - ch, 0, 0, "nearest")
        small = _jpeg_plane(small, chroma_table)[:, :ch, :cw]
        planes.append(_fancy_upsample(small, h, w) - 128)
    cb, cr = planes
    red = y + ((_fix(1.402) * cr + half) >> _SCALE)
    green = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> _SCALE)
    blue = y + ((_fix(1.772) * cb + half) >> _SCALE)
    out = torch.stack([red, green, blue], dim=1).clamp(0, 255)
    return (out.to(torch.float64) / 255).to(x.dtype)

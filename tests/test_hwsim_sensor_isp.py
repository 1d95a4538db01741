"""The fixed-point ISP against hand-computed golden vectors, bit for bit (docs/sensor.md has the formats)."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim.sensor import isp
from intprog.arith import quantize_multiplier


def test_black_level_clamps_below_black():
    assert isp.black_level(np.array([60, 64, 65, 1023]), 64).tolist() == [0, 0, 1, 959]


def test_gain_rounds_half_up_and_clamps():
    m, s = quantize_multiplier(2.5)  # 0.625 * 2^31 / 2^29
    assert (int(m), int(s)) == (1342177280, 29)
    out = isp.gain(np.array([0, 1, 3, 5, 30000]), np.atleast_1d(m), np.atleast_1d(s))
    assert out.tolist() == [0, 3, 8, 13, 65535]  # 2.5 -> 3, 7.5 -> 8, 12.5 -> 13, 75000 -> clamp


def _mosaic() -> np.ndarray:
    return np.array([[10, 21, 30, 40],
                     [50, 60, 70, 80],
                     [90, 100, 110, 120],
                     [130, 140, 150, 160]])  # R G R G / G B G B


def test_bilinear_demosaic_golden():
    rgb = isp.demosaic(_mosaic(), "bilinear")
    assert rgb[1, 1].tolist() == [60, 60, 60]  # B site: R = (10+30+90+110)/4, G = (21+100+50+70)/4 = 60.25
    assert rgb[0, 0].tolist() == [10, 36, 60]  # R site: G = (50+50+21+21)/4 = 35.5 -> 36 (reflected edge)
    assert rgb[1, 2].tolist() == [70, 70, 70]  # G on a B row: R = (30+110)/2, B = (60+80)/2
    assert rgb[3, 3].tolist() == [110, 135, 160]  # corner: R reflected 4x110, G = (120+120+150+150)/4


def test_mhc_demosaic_impulse_response_golden():
    """A single R sample of 1601 at (2, 2): each output is 1601 x the published tap / 16, rounded half up."""
    mosaic = np.zeros((6, 6), dtype=np.int64)
    mosaic[2, 2] = 1601
    rgb = isp.demosaic(mosaic, "mhc")
    assert rgb[2, 2].tolist() == [1601, 801, 1201]  # own R; G tap 8/16 (800.5 -> 801); B tap 12/16 (1200.75)
    assert rgb[2, 3, 0] == 801  # R at G on an R row: row kernel tap 8/16
    assert rgb[1, 2, 0] == 801  # R at G on a B row: column kernel tap 8/16
    assert rgb[3, 3, 0] == 400  # R at B: diagonal tap 4/16 = 400.25
    assert rgb[2, 4, 1] == 0  # G at the next R: tap -2/16, clamped at 0
    assert rgb[2, 3, 2] == 0  # B at G on an R row has no tap on the R neighbour


@pytest.mark.parametrize("method", isp.DEMOSAICS)
def test_demosaic_is_exact_on_flat_and_ramps(method):
    flat = isp.demosaic(np.full((6, 8), 1000), method)
    assert (flat == 1000).all()
    ramp = np.tile(100 * np.arange(8), (6, 1)) + 5000
    rgb = isp.demosaic(ramp, method)
    assert (rgb[2:-2, 2:-2] == ramp[2:-2, 2:-2, None]).all()  # linear signals interpolate exactly inside


def test_demosaic_needs_even_size():
    with pytest.raises(ValueError, match="even"):
        isp.demosaic(np.zeros((5, 6), dtype=np.int64))


def test_ccm_golden_and_row_sums():
    ccm = isp.ccm_to_q10(np.array([[1.5, -0.25, -0.25], [-0.5, 2.0, -0.5], [0.0, -1.0, 2.0]]))
    assert ccm.tolist() == [[1536, -256, -256], [-512, 2048, -512], [0, -1024, 2048]]
    assert isp.color_correct(np.array([1000, 2000, 3000]), ccm).tolist() == [250, 2000, 4000]
    assert isp.color_correct(np.array([0, 4000, 0]), ccm).tolist() == [0, 8000, 0]  # R = -1000 clamps to 0
    third = isp.ccm_to_q10(np.full((3, 3), 1 / 3))
    assert third[0].tolist() == [342, 341, 341]  # 3 x 341 = 1023: the diagonal takes the missing code


def test_gamma_lut_golden():
    lut = isp.gamma_lut()
    assert len(lut) == 4096 and lut[0] == 0 and lut[-1] == 255
    # 160 and 167 -> index 10 -> 12.92 * 10/4095 * 255 = 8.05; 168 -> index 11 -> 8.85
    # 18 % gray: 11796 -> index 737 -> sRGB 0.4613 -> 117.6; 65535 -> index 4096 clamps to 4095.
    assert isp.gamma(np.array([0, 160, 167, 168, 11796, 65535]), lut).tolist() == [0, 8, 8, 9, 118, 255]


def test_luma_golden():
    assert isp.luma(np.array([[255, 255, 255], [255, 0, 0], [10, 20, 30]])).tolist() == [255, 77, 18]


def test_resize_crop_box_golden():
    img = 10 * np.arange(4)[:, None] + np.arange(6)[None, :]  # 4x6 -> centre 4x4 (cols 1..4) -> 2x2 boxes
    assert isp.resize(img, (2, 2)).tolist() == [[7, 9], [27, 29]]  # 6.5, 8.5, 26.5, 28.5 rounded half up


def test_resize_bilinear_golden():
    img = np.array([[0, 100], [0, 100]])
    assert isp.resize(img, (4, 4)).tolist() == [[0, 25, 75, 100]] * 4
    rgb = np.stack([img, 2 * img, 3 * img], axis=-1)
    assert isp.resize(rgb, (4, 4), channel_axis=True)[0, 1].tolist() == [25, 50, 75]


@pytest.mark.parametrize("spec", [
    {"scale": 0.01129552535712719, "zero_point": 73, "qmin": 0, "qmax": 255},  # the zoo ViT's W4A4 export
    {"scale": 0.0125, "zero_point": -10, "qmin": -128, "qmax": 127},  # signed, clipping both ends
])
def test_input_code_lut_matches_the_float_path(spec):
    """The ISP's last step gives the same codes as Program.input_codes on the normalized image."""
    from core.data import FMNIST_MEAN, FMNIST_STD, fmnist_to_tensor
    from intprog.program import Program

    program = Program(input={"name": "image", "shape": [1, 16, 16], **spec}, output={"name": "logits"})
    lut = isp.input_code_lut(program.input, FMNIST_MEAN, FMNIST_STD)
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    want = program.input_codes(fmnist_to_tensor(values))
    assert np.array_equal(lut[values][:, None], want)
    assert len(np.unique(want)) > 100  # the table is not trivially clamped

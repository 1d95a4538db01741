"""The simulated sensor: radiometry, noise chain, ADC, and the EMVA 1288 photon-transfer measurement
recovering what was configured (within 2 %)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import SuiteError
from hwsim.sensor import adc, camera, emva, isp, pixel, scene
from hwsim.sensor.config import PRESETS, SensorConfig, load_sensor


def test_camera_equation_by_hand():
    cfg = PRESETS["mono-3um"]
    # 1 lux on a white Lambertian patch, f/2, T = 0.9: 0.05625 lux on the sensor; a 3 um pixel, 1 s;
    # 1 lux at 555 nm and 683 lm/W is 1 / 683 W/m^2 = 4.09e15 photons / (s m^2).
    photon_j = 6.62607015e-34 * 299792458.0 / 555e-9
    want = 0.9 / (4 * 2.0**2) * (3e-6) ** 2 / (683 * photon_j)
    assert float(scene.mean_photons(1.0, 1.0, 1.0, cfg)) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(2071, rel=1e-3)


def test_srgb_round_trip_and_anchor_points():
    v = np.linspace(0, 1, 101)
    assert np.allclose(scene.linear_to_srgb(scene.srgb_to_linear(v)), v)
    assert scene.srgb_to_linear(np.array([0.0, 1.0])).tolist() == [0.0, 1.0]
    assert float(scene.srgb_to_linear(0.5)) == pytest.approx(0.2140, abs=1e-4)


def test_mean_and_variance_of_the_noise_chain():
    """Electrons: mean QE mu_p + D t; temporal variance of a frame difference = 2 (mean + read^2)."""
    cfg = SensorConfig(prnu=0.0, dsnu_e=0.0)
    fpn = pixel.FixedPattern.draw(cfg, (200, 200), seed=1)
    rng = np.random.default_rng(0)
    a, b = (pixel.expose(np.full((200, 200), 1000.0), 0.02, cfg, fpn, rng) for _ in range(2))
    mean_e = 0.6 * 1000 + 5.0 * 0.02
    assert a.mean() == pytest.approx(mean_e, rel=0.005)
    assert (a - b).var() / 2 == pytest.approx(mean_e + 2.5**2, rel=0.03)


def test_full_well_clips_and_adc_clamps():
    cfg = SensorConfig(read_noise_e=0.0, dsnu_e=0.0, prnu=0.0)
    fpn = pixel.FixedPattern.draw(cfg, (4, 4), seed=0)
    e = pixel.expose(np.full((4, 4), 1e9), 0.01, cfg, fpn, np.random.default_rng(0))
    assert (e == cfg.full_well_e).all()
    assert adc.digitize(np.array([-1e6, 0.0, 1e9]), cfg).tolist() == [0, cfg.black_level_dn, cfg.dn_max]
    assert (cfg.black_level_dn, cfg.dn_max) == (64, 1023)
    assert cfg.replace(adc_bits=6).black_level_dn == 4


def test_capture_is_seeded():
    cfg = PRESETS["mono-3um"]
    img = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    exp = camera.exposure_program(cfg, 5.0)
    assert np.array_equal(camera.capture(img, exp, cfg, seed=3), camera.capture(img, exp, cfg, seed=3))
    assert not np.array_equal(camera.capture(img, exp, cfg, seed=3), camera.capture(img, exp, cfg, seed=4))
    assert not np.array_equal(camera.capture(img, exp, cfg, 3, frame=0), camera.capture(img, exp, cfg, 3, frame=1))


def test_exposure_program_caps_and_targets():
    cfg = PRESETS["mono-3um"]
    bright, dim = camera.exposure_program(cfg, 1000.0), camera.exposure_program(cfg, 1.0)
    assert bright.white_e[0] == pytest.approx(camera.AE_TARGET * cfg.full_well_e)
    assert dim.exposure_s == cfg.max_exposure_s and dim.white_e[0] < 100


@pytest.mark.parametrize("preset", ["mono-3um", "rggb-1.4um"])
def test_noiseless_limit_reproduces_the_scene(preset):
    """A huge well, a 16-bit ADC and no fixed pattern make the noise negligible: the ISP gives the scene
    back within one code (gray flat 8x8 patches; compared 2 pixels away from the edges the demosaic blurs)."""
    cfg = PRESETS[preset].replace(full_well_e=1e9, conversion_gain_uv_per_e=5e-4, read_noise_e=0.0,
                                  dark_current_e_per_s=0.0, dsnu_e=0.0, prnu=0.0, adc_bits=16)
    patches = np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)
    gray = np.repeat(np.repeat(patches, 8, 0), 8, 1)
    img = np.repeat(gray[..., None], 3, -1) if cfg.cfa == "rggb" else gray
    exp = camera.exposure_program(cfg, 1e7)
    out = isp.process(camera.capture(img, exp, cfg, 0), camera.isp_for(cfg, exp))
    assert out.shape == img.shape
    inside = (np.arange(32) % 8 >= 2) & (np.arange(32) % 8 < 6)
    err = np.abs(out.astype(int) - img)[inside][:, inside]
    assert err.max() <= 1


CHARACTERIZED = SensorConfig(name="emva-test", full_well_e=4000.0, conversion_gain_uv_per_e=100.0, adc_bits=12)


@pytest.mark.parametrize("cfg", [CHARACTERIZED, PRESETS["mono-3um"].replace(adc_bits=12),
                                 PRESETS["rggb-1.4um"].replace(adc_bits=12)], ids=lambda c: c.name)
def test_photon_transfer_recovers_the_configuration(cfg):
    ptc = emva.photon_transfer(cfg, (160, 160), steps=60, seed=0)
    want = emva.expected(cfg, ptc.exposure_s[0])
    for key in ("system_gain", "quantum_efficiency", "dark_noise_e", "full_well_e"):
        assert getattr(ptc, key) == pytest.approx(want[key], rel=0.02), key
    assert ptc.dark_current_e_per_s == pytest.approx(want["dark_current_e_per_s"], rel=0.1)
    # EMVA's saturation capacity sits where the variance peaks: below the well, by a few shot-noise sigmas.
    assert 0.9 * cfg.full_well_e < ptc.saturation_e < cfg.full_well_e


def test_photon_transfer_notices_a_different_sensor():
    """The measurement is of the simulated sensor, not of the configuration: double the gain, K doubles."""
    ptc = emva.photon_transfer(CHARACTERIZED.replace(analog_gain=2.0), (96, 96), steps=30, seed=1)
    assert ptc.system_gain == pytest.approx(2 * CHARACTERIZED.system_gain, rel=0.02)


ADC_LIMITED = SensorConfig(name="adc-limited", conversion_gain_uv_per_e=4687.5)  # K = 8 DN/e-: ADC top 120 e-


def test_effective_saturation_is_the_smaller_limit():
    cfg = PRESETS["mono-3um"]
    assert emva.saturation(cfg) == (cfg.full_well_e, "full well")
    assert ADC_LIMITED.system_gain == pytest.approx(8.0)
    assert emva.saturation(ADC_LIMITED) == (pytest.approx((1023 - 64) / 8), "ADC")
    assert emva.expected(ADC_LIMITED, 0.01)["full_well_e"] == pytest.approx(119.875)


def test_photon_transfer_of_an_adc_limited_sensor():
    """The series runs up to 1.3x the ADC's top (not the well): unsaturated steps for the fits, and the
    plateau at the ADC's top."""
    ptc = emva.photon_transfer(ADC_LIMITED, (96, 96), steps=30, seed=0)
    assert ptc.fit_points >= 10
    assert ptc.system_gain == pytest.approx(8.0, rel=0.02)
    assert ptc.quantum_efficiency == pytest.approx(0.6, rel=0.02)
    assert ptc.full_well_e == pytest.approx(emva.adc_top_e(ADC_LIMITED), rel=0.01)


@pytest.mark.parametrize(("cfg", "shape", "steps", "match"), [
    (PRESETS["mono-3um"], (8, 8), 40, "--size 8"),
    (PRESETS["mono-3um"], (64, 64), 3, "--steps 3"),
    (PRESETS["mono-3um"].replace(adc_bits=4), (64, 64), 40, "saturates 13.3 DN above black"),
    (PRESETS["mono-3um"].replace(full_well_e=5.0, adc_bits=8), (64, 64), 40, "full well of 5 e-"),
    (PRESETS["mono-3um"].replace(adc_bits=6), (64, 64), 40, "temporal noise is only 0.45 DN"),
], ids=["size", "steps", "adc-4bit", "well-5e", "adc-6bit"])
def test_check_refuses_what_cannot_be_measured(cfg, shape, steps, match):
    with pytest.raises(SuiteError, match=match):
        emva.check(cfg, shape, steps)


def test_check_accepts_the_presets():
    for preset in PRESETS.values():
        for bits in (8, 10, 12):
            emva.check(preset.replace(adc_bits=bits), (256, 256), 80)


def test_caveats_name_the_biased_results():
    """Dark noise below 0.5 DN: gain, QE and well flagged too (8 bits: about +3 %); a black level of 0:
    the dark frames clip and every result is flagged with the fix; the 12-bit preset: none."""
    quantized = emva.photon_transfer(PRESETS["mono-3um"].replace(adc_bits=8), (64, 64), steps=24)
    notes = emva.caveats(PRESETS["mono-3um"].replace(adc_bits=8), quantized)
    assert set(notes) == {"system_gain", "quantum_efficiency", "full_well_e", "dark_noise_e", "dark_current_e_per_s"}
    assert all("quantization noise dominates" in v for v in notes.values())
    low_black = PRESETS["mono-3um"].replace(adc_bits=12, black_level_fraction=0.0)
    clipped = emva.photon_transfer(low_black, (64, 64), steps=24)
    assert clipped.dark_clipped_fraction > 0.5
    assert all("raise black_level_fraction" in v for v in emva.caveats(low_black, clipped).values())
    good = PRESETS["mono-3um"].replace(adc_bits=12)
    assert emva.caveats(good, emva.photon_transfer(good, (64, 64), steps=24)) == {}


def test_bad_sensor_configs_name_the_field(tmp_path):
    with pytest.raises(SuiteError, match="adc_bits 20"):
        SensorConfig(adc_bits=20)
    with pytest.raises(SuiteError, match="cfa 'rgbw'"):
        SensorConfig(cfa="rgbw")
    with pytest.raises(SuiteError, match=r"prnu 3.0 \(must be in \[0, 0.2\]"):
        SensorConfig(prnu=3.0)
    with pytest.raises(SuiteError, match="read_noise_e nan"):
        SensorConfig(read_noise_e=float("nan"))
    with pytest.raises(SuiteError, match=r"adc_bits 10\.5"):
        SensorConfig(adc_bits=10.5)
    with pytest.raises(SuiteError, match="adc_bits '10'"):
        SensorConfig(adc_bits="10")
    with pytest.raises(SuiteError, match=r"lens_transmittance 1\.5"):
        SensorConfig(lens_transmittance=1.5)
    bad = tmp_path / "mine.json"
    bad.write_text('{"full_wel_e": 3}')
    with pytest.raises(SuiteError, match="full_wel_e"):
        load_sensor(str(bad))
    with pytest.raises(SuiteError, match="neither a preset"):
        load_sensor("nope")
    good = tmp_path / "cam.json"
    good.write_text('{"adc_bits": 12, "crosstalk": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}')
    assert load_sensor(str(good)).adc_bits == 12 and load_sensor(str(good)).name == "cam"

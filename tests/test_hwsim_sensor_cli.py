"""`pfcr sensor emva | photo | sweep` end to end: records, images, resume, and user errors."""

from __future__ import annotations

import numpy as np

from cli.main import main
from core.records import read_records


def test_emva_command_writes_the_curve(results, capsys):
    assert main(["sensor", "emva", "--adc-bits", "12", "--size", "64", "--steps", "24", "--results", str(results)]) == 0
    (rec,) = read_records(results)
    assert rec["kind"] == "sensor" and rec["config"]["method"] == "emva1288" and rec["seed"] == 0
    assert abs(rec["metrics"]["rel_error_system_gain"]) < 0.05
    assert len(rec["photon_transfer"]["var_y"]) == 24
    assert "system_gain" in capsys.readouterr().out


def test_photo_command_writes_pngs(results, tmp_path):
    from PIL import Image

    src = tmp_path / "scene.png"
    yy, xx = np.mgrid[:33, :47]
    smooth = np.stack([4 * yy + 60, 3 * xx + 40, 200 - 2 * xx - yy], axis=-1)  # gradients a demosaic can follow
    Image.fromarray(smooth.astype(np.uint8)).save(src)
    assert main(["sensor", "photo", "--image", str(src), "--lux", "500", "--demosaic", "bilinear",
                 "--results", str(results)]) == 0
    (rec,) = read_records(results)
    for path in rec["images"].values():
        assert Image.open(results / path).size == (46, 32)  # cropped to even sides for the Bayer mosaic
    assert rec["metrics"]["psnr_db"] > 15 and rec["config"]["demosaic"] == "bilinear"


def test_user_errors_exit_2(results, tmp_path, capsys):
    assert main(["sensor", "photo", "--image", str(tmp_path / "missing.png"), "--results", str(results)]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["sensor", "emva", "--sensor", "nope", "--results", str(results)]) == 2
    assert main(["sensor", "sweep", "--fp", "vit_fmnist", "--sensor", "rggb-1.4um", "--results", str(results)]) == 2
    assert "monochrome" in capsys.readouterr().err
    assert main(["sensor", "sweep", "--results", str(results)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def _program_file(zoo_program, tmp_path):
    """The fixture's W4A4 program saved with the metadata `pfcr export` writes."""
    import copy

    program = copy.copy(zoo_program(4)[0])
    program.meta = {**program.meta, "model": "vit_fmnist", "w_bits": 4, "a_bits": 4}
    return program.save(tmp_path / "w4a4.intprog.safetensors")


def test_sweep_writes_one_record_per_point_and_resumes(zoo_program, results, tmp_path, capsys):
    path = _program_file(zoo_program, tmp_path)
    argv = ["sensor", "sweep", "--program", str(path), "--fp", "vit_fmnist", "--lux", "0.1", "1000",
            "--adc-bits", "8", "--limit", "24", "--results", str(results)]
    assert main(argv) == 0
    recs = read_records(results)
    assert len(recs) == 4 and {r["config"]["method"] for r in recs} == {"sensor-intprog", "sensor-fp32"}
    by = {(r["config"]["method"], r["config"]["lux"]): r["metrics"] for r in recs}
    for method in ("sensor-intprog", "sensor-fp32"):
        dark, bright = by[(method, 0.1)], by[(method, 1000)]
        assert bright["psnr_db"] > 30 > 10 > dark["psnr_db"]
        assert bright["top1"] >= dark["top1"] and bright["top1"] >= bright["clean_top1"] - 0.1
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("record exists, skipped") == 4

    from reports.load import records_frame
    from reports.sensor import sections

    _, accuracy, _ = sections(records_frame(results), tmp_path / "report")
    assert sorted(accuracy.table["model"]) == ["FP32", "W4A4 integer program"]
    assert {"0.1 lux", "1000 lux", "clean"} <= set(accuracy.table.columns)
    (fig,) = accuracy.figures
    assert fig.path.exists() and len(fig.records) == 4


def test_sweep_on_the_real_w4a4_program_tracks_illuminance(zoo_program, results, tmp_path):
    """More images: top-1 rises with illuminance and with ADC bits in dim light."""
    path = _program_file(zoo_program, tmp_path)
    assert main(["sensor", "sweep", "--program", str(path), "--lux", "1", "100", "--adc-bits", "6", "12",
                 "--limit", "300", "--results", str(results)]) == 0
    top1 = {(r["config"]["lux"], r["config"]["adc_bits"]): r["metrics"]["top1"] for r in read_records(results)}
    assert top1[(100, 12)] > top1[(1, 12)] > top1[(1, 6)]


def test_report_sections_from_sensor_records(results, tmp_path):
    """EMVA table + photon-transfer plot, photo table + figure; each figure names its records."""
    from PIL import Image

    from reports.load import records_frame
    from reports.sensor import sections

    src = tmp_path / "flat.png"
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(src)
    assert main(["sensor", "emva", "--size", "32", "--steps", "12", "--results", str(results)]) == 0
    assert main(["sensor", "photo", "--image", str(src), "--results", str(results)]) == 0
    emva, accuracy, photo = sections(records_frame(results), tmp_path / "report")
    assert len(emva.table) == 1 and "(" in emva.table["system_gain"].iloc[0]
    assert accuracy.table.empty and not accuracy.figures
    assert photo.table["lux"].tolist() == [100.0]
    for fig in emva.figures + photo.figures:
        assert fig.path.stat().st_size > 1000 and len(fig.records) == 1

"""Reports: every figure names its records, the HTML page is self-contained."""

import base64
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from cli.parts import report_modules
from core.records import make_record, write_record
from reports import figures
from reports.load import bits_label, record, records_frame
from reports.section import expand, matches, record_patterns
from reports.summary import build_sections, write_summary


def _quant_record(method, bits, seed, top1, kl):
    w, a = bits
    return make_record("quantize", model={"name": "m", "checkpoint_sha256": "b" * 64},
                       data={"name": "fashion-mnist", "split": "test", "size": 100},
                       config={"method": method, "w_bits": w, "a_bits": a, "tag": "study"},
                       metrics={"top1": top1, "top5": 1.0, "fp_top1": 0.9, "agreement": top1, "kl": kl,
                                "seconds": 1.0, "peak_rss_mb": 10.0}, seed=seed)


def test_report_tables_figures_and_html(tmp_path):
    results = tmp_path / "results"
    for seed in range(2):
        for method, top1, kl in (("rtn", 0.80, 0.10), ("pfcr", 0.88, 0.02)):
            write_record(_quant_record(method, (3, 3), seed, top1 + 0.01 * seed, kl), results)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    md = write_summary(results, tmp_path / "report", report_modules(), readme=readme)
    assert "| m | W3A3 | pfcr | study | 2 | 90.00 | 88.50 ± 0.71 |" in md
    assert "![ptq_m](ptq_m.png)" in md and f"_From 4 records:_ `{results}/quantize_m_fashion-mnist_test_*" in md
    assert "![ptq_m](report/ptq_m.png)" in readme.read_text()  # links relative to the README
    page = (tmp_path / "report" / "report.html").read_text()
    assert not re.search(r'src="(?!data:)', page)  # nothing to fetch: self-contained
    for href in re.findall(r'href="([^"]+)"', page):  # the contents: anchors and the CSVs beside the page
        assert f'id="{href[1:]}"' in page if href.startswith("#") else (tmp_path / "report" / href).is_file()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0]).startswith(b"\x89PNG")
    assert "<table" in page and "From 4 records" in page


def test_bits_label_and_whole_record_reader(tmp_path):
    """One bits label for every table (None without bits); a rewritten record file is read again."""
    assert bits_label(4, 4) == "W4A4" and bits_label(3, 2) == "W3A2" and bits_label(None, None) is None
    path = write_record(_quant_record("rtn", (4, 4), 0, 0.8, 0.1), tmp_path)
    assert records_frame(tmp_path)["bits"].tolist() == ["W4A4"]
    assert record(path)["metrics"]["top1"] == 0.8
    assert write_record(_quant_record("rtn", (4, 4), 0, 0.825, 0.1), tmp_path) == path
    assert record(path)["metrics"]["top1"] == 0.825


def _all_figures_match_their_records(sections):
    """Every caption's patterns match exactly the files the figure was drawn from, and no table repeats a row."""
    for s in sections:
        assert not s.table.astype(str).duplicated().any(), s.name
        for f in s.figures:
            assert set().union(*(matches(p) for p in f.patterns)) == set(f.records), f.caption


def _sim_record(model, names, tag="main"):
    """A `simulate` record whose per-layer table has the given (name, unit) layers, 10 cycles each."""
    layers = [{"name": n, "unit": u, "compute_cycles": 10, "stall_cycles": 1 if u == "array" else 0,
               "energy_pj": 1e6} for n, u in names]
    metrics = {"images": 4, "top1": 0.75, "bit_exact": True, "overflows": 0, "cycles": 10 * len(layers),
               "latency_ms": 0.1, "energy_uj": 1.0, "utilization": 0.5, "stall_cycles": 0, "dram_bytes": 1024,
               "peak_on_chip_bytes": 2048, "sim_macs_per_second": 1e9, "macs": 1e6, "sim_cpu_seconds": 1.0}
    return make_record("simulate", model={"name": model, "checkpoint_sha256": None},
                       data={"name": "fashion-mnist", "split": "test", "size": 4},
                       config={"method": "accel-edge-npu", "w_bits": 4, "a_bits": 4, "tag": tag},
                       metrics=metrics, seed=0, extra={"layers": layers})


BLOCK = [("ln1", "layernorm"), ("qkv", "array"), ("q", "layout"), ("attn.qk", "array"), ("attn.softmax", "softmax"),
         ("attn.av", "shift_av"), ("proj_in", "vector"), ("proj", "array"), ("stream_attn", "vector"),
         ("ln2", "layernorm"), ("fc1", "array"), ("gelu", "lut"), ("fc2", "array"), ("stream", "vector")]
VIT = [("patches", "layout"), ("embed", "array"), ("stream0", "vector"),
       *((f"b{b}.{n}", u) for b in range(3) for n, u in BLOCK), ("norm", "layernorm"), ("logits", "array")]
SWIN = [("embed", "array"), ("embed_norm", "layernorm"), *((f"s0.b{b}.{n}", u) for b in range(2) for n, u in BLOCK),
        ("s1.merge.gather", "layout"), ("s1.merge.norm", "layernorm"), ("s1.merge.reduction", "array"),
        *((f"s1.b{b}.{n}", u) for b in range(2) for n, u in BLOCK), ("norm", "layernorm"),
        ("pooled_sum", "vector"), ("pooled", "vector"), ("logits", "array")]
ROLES = ["embed", "layernorm", "qkv", "attn q·k", "attn softmax", "attn ·v", "proj", "requant + residual", "fc1",
         "gelu", "fc2"]


def test_per_layer_figure_sums_blocks_by_role_a_row_per_main_record(tmp_path, monkeypatch):
    """ViT ('b3.') and Swin ('s0.b1.', 's1.merge.') layers sum by role over blocks; the main job's ViT and
    Swin runs each get their panels, titled with the model and bits, with a dozen readable labels."""
    from reports import accelerator

    results = tmp_path / "results"
    vit = write_record(_sim_record("vit_m", VIT), results / "main")
    swin = write_record(_sim_record("swin_m", SWIN), results / "main")
    write_record(_sim_record("vit_m", VIT, tag="speed"), results / "accelerator")  # not a main run: not drawn
    drawn = []
    monkeypatch.setattr(accelerator, "_save", lambda fig, path: (drawn.append(fig), figures._save(fig, path)))
    main = accelerator.sections(records_frame(results), tmp_path / "report")[0]
    (fig,) = main.figures
    assert sorted(fig.records) == sorted(map(str, (vit, swin)))
    axes = drawn[0].axes  # a row per record, in the records' order: swin, vit
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 4 and all(t.startswith(m) for t, m in zip(titles, ["swin_m W4A4 on edge-npu: cycles",
                                                                          "swin_m W4A4: energy", "vit_m W4A4 on",
                                                                          "vit_m W4A4: energy"], strict=True))
    labels = [[x.get_text() for x in ax.get_yticklabels()] for ax in axes]
    assert labels[0] == labels[1] == [*ROLES, "patch merge", "head"]
    assert labels[2] == labels[3] == [*ROLES, "head"]
    roles = accelerator.layer_roles(str(swin))
    assert roles.loc["qkv", "compute_cycles"] == 40 and roles.loc["layernorm", "compute_cycles"] == 100
    assert roles.loc["patch merge", "compute_cycles"] == 20 and roles.loc["head", "stall_cycles"] == 1
    _all_figures_match_their_records([main])


def _emva_record(tag, metrics=None):
    keys = ("system_gain", "quantum_efficiency", "dark_noise_e", "dark_current_e_per_s", "full_well_e")
    ptc = {"exposure_s": [1e-3, 2e-3], "mu_p": [10.0, 20.0], "mu_y": [12.0, 20.0], "mu_y_dark": [2.0, 2.0],
           "var_y": [5.0, 8.0], "var_y_dark": [1.0, 1.0]}
    return make_record("sensor", model={"name": "sensor-mono-3um", "checkpoint_sha256": None},
                       data={"name": "flat-field", "split": "emva1288", "size": 48},
                       config={"method": "emva1288", "tag": tag},
                       metrics={**{k: 0.5 for k in keys}, **{f"rel_error_{k}": 0.001 for k in keys},
                                "saturation_e": 9000.0, "dark_noise_resolved": True, **(metrics or {})},
                       seed=0, extra={"photon_transfer": ptc})


def _photo_record(lux, psnr):
    return make_record("sensor", model={"name": "sensor-rggb-1.4um", "checkpoint_sha256": None},
                       data={"name": "astronaut", "split": "photo", "size": 1},
                       config={"method": "isp-photo", "tag": f"{lux}lux-adc10-mhc", "lux": lux},
                       metrics={"lux": lux, "exposure_s": 1 / 30, "white_electrons": 1052.0, "psnr_db": psnr},
                       seed=0, extra={"images": {k: f"photos/astronaut_{k}.png" for k in ("scene", "raw", "isp")}})


def test_sensor_tables_tell_copies_in_two_folders_apart_and_show_caveats(tmp_path):
    """The same EMVA or photo measurement in main/ and sensor/ is two rows told apart by their folder; the
    EMVA table says which results a sensor biases (the record's caveats) and keeps its other columns."""
    from reports import sensor

    results = tmp_path / "results"
    quantized = "the dark noise is 0.30 DN, below the 0.5 DN EMVA 1288 needs: quantization noise dominates; raise it"
    caveats = {**{k: f"not measurable: {quantized}" for k in ("dark_noise_e", "dark_current_e_per_s")},
               **{k: f"may be biased (up to about 5 %): {quantized}" for k in ("system_gain", "full_well_e")}}
    for folder in ("main", "sensor"):
        write_record(_emva_record("adc12", {"caveats": {}, "quantization_limited": False}), results / folder)
        write_record(_photo_record(100, 28.3), results / folder)
    write_record(_emva_record("adc8", {"caveats": caveats, "quantization_limited": True, "dark_noise_dn": 0.3,
                                       "dark_noise_resolved": False, "black_level_clips": False}),
                 results / "sensor")
    (results / "main" / "photos").mkdir()
    for key in ("scene", "raw", "isp"):  # only main/'s photo has its PNGs: the photo figure draws it alone
        mpimg.imsave(results / "main" / "photos" / f"astronaut_{key}.png", np.full((8, 8, 3), 0.5))
    # a JSON file beside the records that is no record: a caption's pattern must not match it
    (results / "main" / "sensor_sensor-mono-3um_flat-field_emva1288_emva1288_adc8_seed0.json").write_text("{}")
    emva, _, photo = sections = sensor.sections(records_frame(results), tmp_path / "report")
    table = emva.table.set_index(["tag", "folder"])
    assert sorted(table.index) == [("adc12", "main"), ("adc12", "sensor"), ("adc8", "sensor")]
    assert table.loc[("adc12", "main"), "system_gain"] == "0.5 (+0.10%)"
    assert table.loc[("adc8", "sensor"), "dark_noise_e"] == "0.5 (+0.10%) below 0.5 DN: not resolved"
    assert table.loc[("adc12", "main"), "caveats"] == "none"
    assert table.loc[("adc8", "sensor"), "caveats"] == (
        "quantization-limited (dark noise 0.30 DN): dark_noise_e, dark_current_e_per_s not measurable; "
        "system_gain, full_well_e may be biased (up to about 5 %)")
    assert list(emva.table.columns)[-3:] == ["caveats", "folder", "record"]
    assert sorted(photo.table["folder"]) == ["main", "sensor"] and photo.table["PSNR dB"].tolist() == [28.3, 28.3]
    assert len(emva.figures[0].records) == 3
    assert [Path(p).parent.name for p in photo.figures[0].records] == ["main"]
    _all_figures_match_their_records(sections)


def test_every_caption_matches_exactly_the_records_drawn(tmp_path):
    """The ablation figure draws 2 of the 6 records in its folder; the runs' figure draws records of two
    folders: each caption's patterns (glob with {a,b}) match those files and no other."""
    results = tmp_path / "results"
    for seed in range(2):
        for method in ("rtn", "pfcr"):
            write_record(_quant_record(method, (3, 3), seed, 0.8, 0.1), results / "study")
    for variant in ("no-merging", "pos-none"):
        rec = _quant_record("pfcr", (3, 3), 0, 0.85, 0.05)
        rec["config"]["tag"] = f"ablation-{variant}"
        write_record(rec, results / "study")
    sections = build_sections(results, tmp_path / "report", report_modules())
    figs = {f.path.stem: f for s in sections for f in s.figures}
    assert len(figs["ablation_m"].records) == 2 and len(figs["ptq_m"].records) == 4
    ablation = f"{results}/study/quantize_m_fashion-mnist_test_pfcr_w3a3_ablation-*_seed0.json"
    assert figs["ablation_m"].patterns == [ablation]
    _all_figures_match_their_records(sections)
    md = write_summary(results, tmp_path / "report", report_modules())
    assert f"_From 2 records:_ `{figs['ablation_m'].patterns[0]}`" in md


def test_record_patterns_across_folders(tmp_path):
    """One pattern over folders where a file-name pattern serves in each (root/{a,b}/...), else one per
    folder; names listed ({x,y}) where no wildcard is exact."""
    files = {"a": ["r_x_1.json", "r_y_1.json", "r_z_2.json"], "b": ["r_x_1.json", "r_w_1.json"], "": ["r_x_1.json"]}
    for folder, names in files.items():
        (tmp_path / folder).mkdir(exist_ok=True)
        for n in names:
            (tmp_path / folder / n).write_text("{}")
    cases = [([f"{tmp_path}/a/r_x_1.json", f"{tmp_path}/b/r_x_1.json"], [f"{tmp_path}/{{a,b}}/r_x_1.json"]),
             ([f"{tmp_path}/a/r_x_1.json", f"{tmp_path}/r_x_1.json"], [f"{tmp_path}/{{,a/}}r_x_1.json"]),
             ([f"{tmp_path}/a/r_x_1.json", f"{tmp_path}/a/r_z_2.json"], [f"{tmp_path}/a/r_{{x_1,z_2}}.json"]),
             ([f"{tmp_path}/a/r_x_1.json", f"{tmp_path}/a/r_y_1.json", f"{tmp_path}/b/r_x_1.json"],
              [f"{tmp_path}/a/r_*_1.json", f"{tmp_path}/b/r_x_1.json"])]
    for records, want in cases:
        assert record_patterns(records) == want
        assert set().union(*(matches(p) for p in want)) == set(records)
    assert expand("x/{a,b}/{,c/}y") == ["x/a/y", "x/a/c/y", "x/b/y", "x/b/c/y"]


def test_empty_sections_name_the_command_that_fills_them(tmp_path):
    """No records: every section says which command fills it, in the Markdown and in the HTML page."""
    sections = build_sections(tmp_path / "none", tmp_path / "report", report_modules())
    assert sections and all(s.table.empty and "`" in s.command for s in sections)
    md = write_summary(tmp_path / "none", tmp_path / "report", report_modules())
    page = (tmp_path / "report" / "report.html").read_text()
    for s in sections:
        assert f"_no records yet: {s.command}_" in md
    assert "_no records yet_" not in md and "no records yet</em>" not in page
    assert "<em>no records yet: run <code>pfcr eval MODEL</code> or <code>pfcr main</code></em>" in page
    assert "no records yet: run <code>python benchmarks/accel_study.py accuracy</code>" in page


def test_label_free_quantize_records_get_the_fidelity_table_not_the_accuracy_table():
    """A pretrained backbone quantized without labels: its feature fidelity is reported, and the
    accuracy table does not show it as a row of '-'."""
    import pandas as pd

    from reports.tables import fidelity_table, quant_table

    base = {"kind": "quantize", "model": "backbone", "bits": "W8A8", "method": "rtn", "tag": None, "n": 128,
            "m.seconds": 10.0, "m.peak_rss_mb": 100.0}
    frame = pd.DataFrame([
        {**base, "m.top1": float("nan"), "m.feature_cosine_mean": c, "m.feature_cosine_p5": c - 0.01,
         "m.feature_rel_error_mean": 0.1, "m.knn5_overlap": 0.9, "m.weight_bytes_packed": 2.5e6} for c in (0.98, 0.99)
    ] + [{**base, "model": "zoo", "m.top1": 0.8, "m.fp_top1": 0.81, "m.agreement": 0.9, "m.kl": 0.01}])
    fid = fidelity_table(frame)
    assert list(fid["model"]) == ["backbone"] and fid["seeds"].iloc[0] == 2
    assert fid["feature cosine"].iloc[0] == "0.9850 ± 0.0071"
    assert fid["weights MB"].iloc[0] == "2.50"  # the program's packed weights, where recorded
    assert list(quant_table(frame)["model"]) == ["zoo"]

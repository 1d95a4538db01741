"""Reports: every figure names its records, the HTML page is self-contained."""

import base64
import re

from cli.parts import report_modules
from core.records import make_record, write_record
from reports.load import bits_label, record, records_frame
from reports.summary import write_summary


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
    assert "![ptq_m](ptq_m.png)" in md and "From 4 records: " in md
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

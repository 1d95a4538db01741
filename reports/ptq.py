"""PFCR's report sections: FP32 accuracy (`eval`), post-training quantization (`quantize`) and
integer-only accuracy beside fake-quant (`run`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from reports import figures
from reports.section import Figure, Section
from reports.tables import accuracy_table, fidelity_table, integer_table, quant_table


def sections(frame: pd.DataFrame, out: Path) -> list[Section]:
    fp = Section("accuracy", "FP32 models (`pfcr eval`)", accuracy_table(frame),
                 command="run `pfcr eval MODEL` or `pfcr main`")
    ptq = Section("quantization", "Post-training quantization (`pfcr quantize`): mean ± std over calibration "
                  "seeds; agree = top-1 agreement with the FP32 model; KL = mean KL(FP32 || quantized) of the outputs",
                  quant_table(frame), command="run `pfcr quantize MODEL --bits W4A4`, `pfcr main` or "
                  "`python benchmarks/quant_study.py [--ablation]`")
    for model in sorted(set(frame["model"])) if not frame.empty else []:
        for name, draw in (("ptq", figures.accuracy_vs_bits), ("ablation", figures.ablation)):
            path = out / f"{name}_{model}.png"
            used = draw(frame, model, path)
            if used:
                ptq.figures.append(Figure(path, used))
    integer = Section("integer", "Integer-only accuracy (`pfcr run`, numpy reference executor) beside the "
                      "fake-quant model on the same images; agree = identical top-1 predictions", integer_table(frame),
                      command="run `pfcr run PROGRAM --quantized Q`, `pfcr main` or "
                      "`python benchmarks/integer_accuracy.py`")
    used = figures.integer_vs_fake(frame, out / "integer_vs_fake.png")
    if used:
        integer.figures.append(Figure(out / "integer_vs_fake.png", used))
    fidelity = Section("fidelity", "Label-free PTQ of a pretrained backbone: the quantized model's pre-head "
                       "features against FP32's on held-out images (mean ± std over calibration seeds; p5 = 5th "
                       "percentile over images; 5-NN overlap = shared nearest neighbours in the gallery)",
                       fidelity_table(frame),
                       command="run `pfcr real measure` or `pfcr main --real` (docs/real-model.md)")
    return [fp, ptq, fidelity, integer]

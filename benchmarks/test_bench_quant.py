"""pytest-benchmark: the cost of fake quantization and of one reconstruction step, each beside its
float baseline measured in the same run (compare the ratio, not the seconds, on a shared machine).

    ./suite bench            # or: pytest benchmarks --benchmark-only
"""

import pytest
import torch

from core.models import ZOO, build
from pfcr.quant.calibrate import calibrate, reparameterize
from pfcr.quant.model import QuantConfig, QuantModel
from pfcr.reconstruct.granules import schedule
from pfcr.reconstruct.loop import ReconConfig, Streams, reconstruct


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    entry = ZOO["vit_fmnist"]
    fp = build(entry.arch, **entry.kwargs).eval()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qm = QuantModel(fp, QuantConfig(4, 4))
    calibrate(qm, x)
    reparameterize(qm)
    return fp, qm, x


@pytest.mark.parametrize("which", ["fp32", "fake-quant W4A4"])
def test_inference_batch64(benchmark, vit, which):
    fp, qm, x = vit
    model = fp if which == "fp32" else qm
    benchmark.group = "inference, zoo ViT, batch 64"
    with torch.no_grad():
        benchmark(model, x)


@pytest.mark.parametrize("granule", ["s0.b0.attn", "s0.b0", "s0.b0-3"])
def test_reconstruction_10_iterations(benchmark, vit, granule):
    fp, qm, x = vit
    streams = Streams(qm, fp, x)
    g = next(g for g in schedule(qm) if g.name == granule)
    benchmark.group = "reconstruction, 10 iterations, batch 32"
    benchmark.pedantic(reconstruct, args=(qm, streams, g, ReconConfig(iters=10), torch.Generator().manual_seed(0)),
                       rounds=3, iterations=1)

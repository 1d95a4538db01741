"""PFCR's commands: `eval` (a float or fake-quant model), `quantize`, `export` (to the integer
program) and `run` (the program on the reference executor); and their stages of the main job."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core import arguments
from core.errors import SuiteError
from core.registry import MainJob, Stage


def _tag(*parts: str | None) -> str | None:
    """A record's tag from its parts (the user's --tag, a fixed label, the model's variant)."""
    return "-".join(p for p in parts if p) or None


def _writable_results(args: argparse.Namespace) -> None:
    """The results folder can be written: checked before anything is loaded or computed."""
    from core.files import ensure_writable
    from core.records import results_dir

    ensure_writable(results_dir(args.results), "--results (or $PFCR_RESULTS)")


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a float model, or a saved quantized one (--quantized), and write an `eval` record."""
    import torch

    from core.data import evaluation_set
    from core.evaluate import predict
    from core.models import load_model, sha256_file
    from core.records import make_record, write_record

    _writable_results(args)
    torch.manual_seed(args.seed)
    if args.quantized:
        loaded, module, meta = _quantized_model(args)
        config = {"method": meta.get("method", "quantized"), "w_bits": module.cfg.w_bits,
                  "a_bits": module.cfg.a_bits, "tag": _tag("reloaded", loaded.variant)}
        extra = {"artifact": str(args.quantized), "artifact_sha256": sha256_file(args.quantized)}
    else:
        loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
        module, config, extra = loaded.module, {"method": "fp32", "w_bits": None, "a_bits": None}, {}
        if loaded.variant:
            config["tag"] = loaded.variant
    ds, data_rec = evaluation_set(args.data, args.split, args.limit, loaded.module, args.model)
    t0 = time.perf_counter()
    metrics = predict(module, ds, batch_size=args.batch_size, desc=f"eval {args.model}").metrics()
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    record = make_record("eval", model=loaded.record(), data=data_rec, config=config,
                         metrics=metrics, seed=args.seed, extra=extra)
    path = write_record(record, args.results, distinct=True)
    print(f"{args.model} {config['method']}: top-1 {100 * metrics['top1']:.2f}%  "
          f"top-5 {100 * metrics['top5']:.2f}% on {data_rec['size']} images -> {path}")
    if args.confusion:
        print("per-class top-1 and confusion (rows: true class, columns: predicted)")
        for c, (acc, row) in enumerate(zip(metrics["per_class_top1"], metrics["confusion"], strict=True)):
            share = "   -  " if acc is None else f"{100 * acc:5.1f}%"
            print(f"{c:3d} {share} " + " ".join(f"{v:5d}" for v in row))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize, save, evaluate against the float model, and write a `quantize` record.

    Everything that can refuse the inputs runs first (results and output folders writable, the
    model, the data's fit and readability, the calibration draw), and the FP32 model is evaluated
    before the reconstruction, so no input error surfaces after the long computation."""
    import resource

    import torch
    from tqdm import tqdm

    from core import data
    from core.evaluate import agreement, predict
    from core.files import ensure_writable
    from core.models import load_model
    from core.records import make_record, results_dir, write_record
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize, save_qmodel
    from pfcr.reconstruct.config import ReconConfig

    arguments.check_bits_range("--bits", args.bits)
    _writable_results(args)
    if args.out:
        ensure_writable(Path(args.out).parent, "--out")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SuiteError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    w_bits, a_bits = args.bits
    cfg = QuantizeConfig(
        method=args.method,
        quant=QuantConfig(w_bits=w_bits, a_bits=a_bits, input_bits=args.input_bits,
                          first_last_w_bits=args.first_last_w_bits, log2_softmax=not args.uniform_softmax,
                          softmax_codes=args.softmax_codes, integer_eval=not args.float_eval,
                          act_range=args.act_range, smooth=args.smooth, gelu_range=args.gelu_range,
                          cls_clip=args.cls_clip, fc1_rotation=args.rotate_fc1,
                          **mixed_precision(args)),
        recon=ReconConfig(iters=args.iters, batch_size=args.recon_batch_size, round_lr=args.round_lr,
                          scale_lr=args.scale_lr, drop_prob=args.drop_prob, loss=args.recon_loss),
        pos=args.pos, finest=not args.no_finest, coarsest=args.coarsest, seed=args.seed, gptq=args.gptq,
        init_size=min(128, args.calib_size))
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
    fp = loaded.module.to(args.device)
    ds, data_rec = data.evaluation_set(args.data, args.split, args.limit, fp, args.model)
    images, manifest = data.calibration_images(args.data, args.calib_size, args.seed, fp, args.model)
    variant = f"_{loaded.variant}" if loaded.variant else ""
    default_out = (results_dir(args.results) / "quantized" /
                   f"{args.model}_{args.method}_w{w_bits}a{a_bits}_seed{args.seed}{variant}.safetensors")
    out = Path(args.out) if args.out else ensure_writable(default_out.parent, "--out or --results") / default_out.name
    # The FP32 reference first: it reads every evaluation image before the reconstruction. The
    # random state is kept as it was, so the quantization draws what it always drew.
    rng = torch.get_rng_state()
    fp_eval = predict(fp, ds, batch_size=args.batch_size, desc="eval fp32")
    torch.set_rng_state(rng)
    t0 = time.perf_counter()
    # A live bar on a terminal; one line per granule in logs (tqdm's disable=None: off without a tty).
    bar = tqdm(desc=f"{args.method} {w_bits}/{a_bits}", unit="granule", disable=None, leave=False)

    def show(stage: str, entry: dict) -> None:
        text = f"{stage} {entry['granule']} loss {entry['loss_before']:.4g} -> {entry['loss_after']:.4g}"
        if bar.disable:
            print(f"  {text}", flush=True)
        bar.update()
        bar.set_postfix_str(text, refresh=False)

    qm, log = quantize(fp, images.to(args.device), cfg, show)
    bar.close()
    seconds = time.perf_counter() - t0
    save_qmodel(qm, out, {"model": args.model, "method": args.method, "checkpoint_sha256": loaded.checkpoint_sha256,
                          "model_kwargs": args.model_kwargs, "calibration": json.loads(manifest.to_json())})
    q_eval = predict(qm, ds, batch_size=args.batch_size, desc=f"eval {args.method}")
    with qm.float_path():  # the fake-quant protocol's number, beside the integer program's
        float_top1 = predict(qm, ds, batch_size=args.batch_size, desc="eval float path").topk(1)
    metrics = {**q_eval.metrics(), **agreement(fp_eval, q_eval), "fp_top1": fp_eval.topk(1),
               "integer_eval": int(qm.replay() is not None), "float_path_top1": float_top1,
               "seconds": round(seconds, 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "granules": log}
    config = {**cfg.to_dict(), "w_bits": w_bits, "a_bits": a_bits, "calib_size": args.calib_size,
              "calib_sha256": manifest.sha256, "device": args.device, "tag": _tag(args.tag, loaded.variant)}
    record = make_record("quantize", model=loaded.record(), data=data_rec, config=config,
                         metrics=metrics, seed=args.seed, extra={"artifact": str(out)})
    path = write_record(record, args.results, distinct=True)
    how = "its integer program" if metrics["integer_eval"] else "float path"
    print(f"{args.model} {args.method} W{w_bits}A{a_bits}: top-1 {100 * metrics['top1']:.2f}% ({how}; float path "
          f"{100 * metrics['float_path_top1']:.2f}%, FP32 {100 * metrics['fp_top1']:.2f}%), "
          f"agreement {100 * metrics['agreement']:.2f}%, "
          f"KL {metrics['kl']:.4f}, {seconds:.0f} s -> {out}, {path}")
    return 0


def _quantized_model(args: argparse.Namespace):
    """(float LoadedModel, quantized model, its metadata) for --quantized, checked against the model
    name before anything is loaded, and against the float checkpoint it was made from."""
    from core.models import load_model
    from pfcr.quantize import load_qmodel, read_qmodel_meta

    _, meta = read_qmodel_meta(args.quantized)
    if meta.get("model") != args.model:
        raise SuiteError(f"{args.quantized} quantizes {meta.get('model')!r}, not {args.model!r}; "
                         f"pass {meta.get('model')} as the model")
    loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
    made_from = meta.get("checkpoint_sha256")
    if made_from and loaded.checkpoint_sha256 and made_from != loaded.checkpoint_sha256:
        raise SuiteError(f"{args.quantized} was quantized from a checkpoint of sha256 {made_from[:12]}..., not "
                         f"{loaded.checkpoint or args.model} ({loaded.checkpoint_sha256[:12]}...); pass the "
                         "--checkpoint it was made from")
    return loaded, load_qmodel(args.quantized, loaded.module), meta


def cmd_export(args: argparse.Namespace) -> int:
    """Quantized model -> integer program file, with an `export` record (sizes)."""
    import torch

    from core import data
    from core.files import ensure_writable
    from core.models import sha256_file
    from core.records import make_record, write_record
    from pfcr import fidelity
    from pfcr.export import export_program

    _writable_results(args)
    out = Path(args.out or Path(args.quantized).with_suffix(".intprog.safetensors"))
    ensure_writable(out.parent, "--out")
    torch.manual_seed(args.seed)
    loaded, qm, _ = _quantized_model(args)
    # A model quantized by this suite carries its program's scales: only the guard's images are
    # needed then (a folder smaller than the default --calib-size is fine).
    size = min(args.check_images, args.calib_size) if qm.fixed_scales() is not None else args.calib_size
    images, manifest = data.calibration_images(args.data, size, args.seed, loaded.module, args.model)
    program = export_program(qm, images)
    check = fidelity.measure(qm, program, images[:args.check_images], args.min_cosine)
    if check.logit_cosine < args.min_cosine:
        raise SuiteError(
            f"the exported program does not compute {args.quantized}: its logits have cosine "
            f"{check.logit_cosine:.3f} with the quantized model's on {check.images} calibration images (below "
            f"--min-cosine {args.min_cosine}); it departs first at {check.divergence}. Nothing was written; "
            "report the model and its timm options, or pass a lower --min-cosine to keep it anyway")
    program.meta.update({"model": args.model, "model_kwargs": args.model_kwargs,
                         "checkpoint": None if loaded.from_zoo else loaded.checkpoint,
                         "w_bits": qm.cfg.w_bits, "a_bits": qm.cfg.a_bits,
                         "quantized": str(args.quantized), "quantized_sha256": sha256_file(args.quantized)})
    program.save(out)
    sizes = program.weight_bytes()
    metrics = {**sizes, "program_bytes": out.stat().st_size, "ops": len(program.ops),
               "fp32_param_bytes": 4 * sum(p.numel() for p in loaded.module.parameters()), **check.metrics(),
               "fidelity_min_cosine": args.min_cosine}  # the threshold it passed: lowered ones show
    cfg = qm.cfg
    record = make_record("export", model=loaded.record(),
                         data={"name": args.data, "split": "calibration", "size": len(images)},
                         config={"method": "intprog", "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
                                 "calib_sha256": manifest.sha256, "tag": _tag(args.tag, loaded.variant)},
                         metrics=metrics, seed=args.seed,
                         extra={"artifact": str(out), "artifact_sha256": sha256_file(out)})
    write_record(record, args.results, distinct=True)
    print(f"{out}: {len(program.ops)} integer ops, weights {sizes['weight_bytes_packed'] / 1024:.0f} KiB packed "
          f"vs {sizes['weight_bytes_fp32'] / 1024:.0f} KiB FP32; fidelity to the quantized model on {check.images} "
          f"images: logit cosine {check.logit_cosine:.4f}, top-1 agreement {100 * check.top1_agreement:.1f}%")
    return 0


def _check_quantized_matches(program_path: str, meta: dict, quantized: str) -> None:
    """Refuse a --quantized file that is not the one the program was exported from: another model or
    other bit widths, or (when the program names its sha256) other content."""
    from core.files import sha256_file
    from pfcr.quantize import read_qmodel_meta

    qcfg, qmeta = read_qmodel_meta(quantized)
    problems = []
    if meta.get("model") is not None and qmeta.get("model") != meta["model"]:
        problems.append(f"it quantizes {qmeta.get('model')!r}, the program {meta['model']!r}")
    for key in ("w_bits", "a_bits"):
        if meta.get(key) is not None and getattr(qcfg, key) != meta[key]:
            problems.append(f"its {key} is {getattr(qcfg, key)}, the program's {meta[key]}")
    if not problems and meta.get("quantized_sha256"):
        sha = sha256_file(quantized)
        if sha != meta["quantized_sha256"]:
            problems.append(f"its sha256 is {sha[:12]}..., the program was exported from one of "
                            f"{meta['quantized_sha256'][:12]}...")
    if problems:
        named = f" ({meta['quantized']})" if meta.get("quantized") else ""
        raise SuiteError(f"--quantized {quantized} is not the quantized model {program_path} was exported from: "
                         f"{'; '.join(problems)}; pass the file it was exported from{named}, or leave --quantized out")


def cmd_run(args: argparse.Namespace) -> int:
    """Evaluate an integer program with the reference executor; a `run` record."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from core.data import check_source, program_set
    from core.evaluate import Evaluation, agreement, predict
    from core.models import load_program_model, sha256_file
    from core.records import make_record, write_record
    from intprog import reference
    from intprog.program import ProgramError, load

    _writable_results(args)
    check_source(args.data)
    program = load(args.program)
    meta = program.meta
    if not isinstance(meta.get("model"), str):
        raise ProgramError(f"{args.program} names no float model in its metadata (meta.model); `pfcr run` needs "
                           "one to read the data as it does: run programs written by `pfcr export`")
    if args.quantized:
        _check_quantized_matches(args.program, meta, args.quantized)
    fp = load_program_model(meta)
    ds, data_rec, _ = program_set(args.data, args.split, args.limit, meta, program.input["shape"], args.program,
                                  model=fp)
    logits, labels, stats = [], [], {}
    t0 = time.perf_counter()
    for x, y in tqdm(DataLoader(ds, batch_size=args.batch_size), desc="integer program", leave=False, disable=None):
        try:
            codes = reference.run(program, program.input_codes(x), stats)
        except (ValueError, OverflowError, IndexError, TypeError) as err:  # what load() cannot prove of values
            raise ProgramError(f"{args.program}: the reference executor stopped ({type(err).__name__}: {err}); "
                               "the program's constants do not fit its values: re-export it with `pfcr export`"
                               ) from None
        logits.append(torch.from_numpy(codes.astype(np.float64) * program.output["scale"]))  # in the model's units
        labels.append(torch.as_tensor(y))
    seconds = time.perf_counter() - t0
    integer = Evaluation(torch.cat(logits).float(), torch.cat(labels).long())
    metrics = {**integer.metrics(), **program.weight_bytes(), **stats, "seconds": round(seconds, 2),
               "images_per_second": round(len(integer.labels) / seconds, 2)}
    if args.quantized:
        from pfcr.export import export_program
        from pfcr.quantize import load_qmodel

        qm = load_qmodel(args.quantized, fp.module)
        # The quantized model's eval forward is the program it exports (pfcr.quant.replay): where
        # that is this file, op for op and constant for constant, the two agree on every input.
        # The float path is the fake-quant protocol of the PTQ literature, reported beside it.
        same = qm.fixed_scales() is not None and export_program(qm).same_computation(program)
        with qm.float_path():
            fake = predict(qm, ds, batch_size=args.batch_size, desc="float path")
        metrics.update({"quantized_program_identical": int(same), "fake_quant_top1": fake.topk(1),
                        **{f"vs_fake_quant_{k}": v for k, v in agreement(fake, integer).items()}})
    record = make_record("run", model=fp.record(), data=data_rec,
                         config={"method": "intprog-reference", "w_bits": meta.get("w_bits"),
                                 "a_bits": meta.get("a_bits"), "tag": _tag(args.tag, fp.variant)},
                         metrics=metrics, seed=args.seed,
                         extra={"artifact": str(args.program), "artifact_sha256": sha256_file(args.program)})
    path = write_record(record, args.results, distinct=True)
    fq = (f" (the quantized model's own program{'' if metrics['quantized_program_identical'] else ' NOT'}; "
          f"its float path {100 * metrics['fake_quant_top1']:.2f}%)") if args.quantized else ""
    print(f"{args.program}: integer-only top-1 {100 * metrics['top1']:.2f}%{fq} on {data_rec['size']} images, "
          f"peak activations {metrics['peak_activation_bytes'] / 1024:.1f} KiB per image -> {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from pfcr.reconstruct.config import ReconConfig

    sp = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion of a model")
    arguments.model(sp)
    sp.add_argument("--quantized", default=None, help="a quantized model saved by `pfcr quantize` to evaluate")
    sp.add_argument("--confusion", action="store_true", help="print per-class accuracy and the confusion matrix")
    arguments.data(sp)
    arguments.common(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("quantize", help="post-training quantization (pfcr, block, rtn), saved and evaluated")
    arguments.model(sp)
    sp.add_argument("--bits", type=arguments.bits, default=(4, 4), help="W<w>A<a>, e.g. W4A4, W3A3, W8A8, W4A8")
    sp.add_argument("--method", default="pfcr", choices=["pfcr", "block", "rtn"])
    sp.add_argument("--uniform-softmax", action="store_true",
                    help="uniform instead of log2 post-softmax quantizer (not exportable: the float path only)")
    program_code_options(sp)
    sp.add_argument("--act-range", choices=("auto", "mse", "minmax"), default="auto",
                    help="activation ranges: clipping search by MSE, the whole min..max, or auto (minmax at "
                         ">= 6 bits, mse below; default)")
    sp.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                    help="fold exact outlier migration into the float weights first: SmoothQuant at strength "
                         "ALPHA (0.5 is usual) on LayerNorm -> Linear and v -> proj, a per-head Hadamard on v -> "
                         "proj, q/k balancing (QuantConfig.smooth; the program is unchanged in kind)")
    mixed_precision_options(sp)
    sp.add_argument("--float-eval", action="store_true",
                    help="evaluate and feed reconstruction with the float fake-quant path instead of the "
                         "model's integer program (the PTQ literature's protocol; for ablations)")
    sp.add_argument("--input-bits", type=arguments.bit_width, default=8,
                    help="bits of the image entering the patch embedding")
    sp.add_argument("--first-last-w-bits", type=arguments.bit_width, default=None,
                    help="weight bits of the patch embedding and the head (default: the W bits)")
    sp.add_argument("--pos", default="sos", choices=["sos", "levelwise", "none"],
                    help="PFCR's progressive optimization strategy reading (see pfcr/quantize.py)")
    sp.add_argument("--coarsest", type=arguments.nonnegative_int, default=4,
                    help="PFCR's largest granule in blocks (0, 1, 2, 4, ...)")
    sp.add_argument("--no-finest", action="store_true", help="PFCR without the MHSA/MLP unit level")
    sp.add_argument("--calib-size", type=arguments.positive_int, default=1024, help="calibration images (seeded draw)")
    sp.add_argument("--iters", type=arguments.nonnegative_int, default=200,
                    help="reconstruction iterations per granule")
    sp.add_argument("--recon-batch-size", type=arguments.positive_int, default=32)
    sp.add_argument("--round-lr", type=arguments.positive_float, default=ReconConfig.round_lr,
                    help="Adam lr of AdaRound variables")
    sp.add_argument("--drop-prob", type=arguments.probability, default=ReconConfig.drop_prob, help="QDrop probability")
    recon_options(sp)
    sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sp.add_argument("--out", default=None, help="quantized model file (.safetensors; default <results>/quantized/"
                    "<model>_<method>_w<W>a<A>_seed<S>.safetensors)")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    arguments.data(sp)
    arguments.common(sp)
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("export", help="quantized ViT -> integer program file (intprog)")
    arguments.model(sp, "the model the quantized file was made from")
    sp.add_argument("--quantized", required=True, help="a quantized model saved by `pfcr quantize`")
    sp.add_argument("--calib-size", type=arguments.positive_int, default=256,
                    help="images that fix the stream/GELU/logit scales of a quantized file saved without them "
                         "(older files; current ones carry the scales quantize fixed)")
    sp.add_argument("--out", default=None, help="program file (default: beside the quantized file)")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    sp.add_argument("--data", default=arguments.FMNIST, help="calibration source: fashion-mnist or a folder")
    sp.add_argument("--check-images", type=arguments.positive_int, default=32,
                    help="calibration images on which the program is checked against the quantized model")
    sp.add_argument("--min-cosine", type=arguments.finite_float, default=0.9,
                    help="refuse a program whose logits have a lower mean (centred) cosine with the quantized "
                    "model's float path (default 0.9; right programs in the committed records: zoo 0.992-0.9995, "
                    "real ViT-S/14 W4A4 0.936; wrong ones near 0 to 0.8)")
    arguments.common(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("run", help="evaluate an integer program with the reference executor")
    sp.add_argument("program", help="an integer program file written by `pfcr export`")
    sp.add_argument("--quantized", default=None, help="also compare with this fake-quant model")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    arguments.data(sp)
    arguments.common(sp)
    sp.set_defaults(func=cmd_run)


def recon_options(sp: argparse.ArgumentParser) -> None:
    """--scale-lr and --recon-loss, ReconConfig.scale_lr and .loss, and --gptq, QuantizeConfig.gptq
    (`pfcr quantize`, `pfcr real measure`)."""
    from pfcr.reconstruct.config import LOSSES, ReconConfig

    sp.add_argument("--scale-lr", type=arguments.positive_float, default=ReconConfig.scale_lr,
                    help="Adam lr of the activation step sizes")
    sp.add_argument("--recon-loss", default="mse", choices=LOSSES,
                    help="reconstruction loss: plain squared error, or each token's relative to its FP32 mean "
                    "square (what the next LayerNorm sees; ReconConfig.loss)")
    gptq_option(sp)


def gptq_option(sp: argparse.ArgumentParser) -> None:
    """--gptq, QuantizeConfig.gptq (`pfcr quantize`, `pfcr real measure` and `ablate`)."""
    sp.add_argument("--gptq", action="store_true",
                    help="round the weights by GPTQ (each layer's output error on the calibration images) "
                         "instead of to nearest: rtn's codes, and block/pfcr's starting point (QuantizeConfig.gptq)")


def program_code_options(sp: argparse.ArgumentParser) -> None:
    """The codes of the program's nonlinear kernels: --softmax-codes P and its shorthand
    --sqrt2-softmax (P = 2), QuantConfig.softmax_codes; --gelu-range, QuantConfig.gelu_range;
    --cls-clip, QuantConfig.cls_clip; --rotate-fc1, QuantConfig.fc1_rotation."""
    from intprog.nonlinear import PER_OCTAVE

    sp.add_argument("--softmax-codes", type=int, choices=PER_OCTAVE, default=1, metavar="P",
                    help="codes per octave of the log post-softmax quantizer: 1 log2 (default), 2 log-sqrt2, "
                         "4, 8, 16 finer steps near 1 over 2^bits / P octaves; exported exactly (attention's "
                         "codes_per_octave)")
    sp.add_argument("--sqrt2-softmax", dest="softmax_codes", action="store_const", const=2,
                    help="log-sqrt2 post-softmax codes, the same as --softmax-codes 2")
    sp.add_argument("--gelu-range", choices=("block", "global"), default="block",
                    help="the program's int8 codes between fc1 and the activation table: each block's own "
                         "min..max (default), or one symmetric scale for all blocks (QuantConfig.gelu_range)")
    sp.add_argument("--cls-clip", action="store_true",
                    help="ViT/DeiT with a class token: the LayerNorm outputs and q, k, v take their ranges "
                         "without the class token, which is clamped on the same grid to its own MSE-clipped "
                         "range (per channel after the LayerNorms; QuantConfig.cls_clip); exported exactly. For "
                         "4-bit activations: at 6 and 8 bits the int8 window leaves it too little room")
    sp.add_argument("--rotate-fc1", action="store_true",
                    help="online Hadamard rotation of every MLP's fc1 input: the LayerNorm's output at 8 bits, "
                         "rotated by ±1 block Hadamard matrices (an exact integer GEMM of the program), then "
                         "quantized at the A bits, fc1's weight rotated to match (QuantConfig.fc1_rotation)")


def mixed_precision_options(sp: argparse.ArgumentParser) -> None:
    """The sensitive groups kept wider than --bits: --attn-bits, --fc2-a-bits, --proj-a-bits, --q-a-bits,
    --k-a-bits (inputs), --qkv-w-bits, --w8-blocks (weights); `mixed_precision` turns them into QuantConfig's fields."""
    sp.add_argument("--attn-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: bits of the post-softmax codes, attn·v's first operand (default the A bits)")
    sp.add_argument("--fc2-a-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: bits of every MLP's fc2 input (the GELU output; default the A bits)")
    sp.add_argument("--proj-a-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: bits of every attention's proj input (default the A bits)")
    sp.add_argument("--q-a-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: bits of every attention's queries, q·kᵀ's first operand "
                         "(default the A bits)")
    sp.add_argument("--k-a-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: bits of every attention's keys, q·kᵀ's second operand (default the A bits)")
    sp.add_argument("--qkv-w-bits", type=arguments.bit_width, default=None,
                    help="mixed precision: weight bits of every attention's qkv (default the W bits)")
    sp.add_argument("--w8-blocks", type=arguments.nonnegative_int, nargs="+", default=[], metavar="BLOCK",
                    help="mixed precision: blocks (from 0) whose every linear keeps 8-bit weights")


def mixed_precision(args: argparse.Namespace) -> dict:
    """QuantConfig's mixed-precision fields from `mixed_precision_options`."""
    return {"attn_bits": args.attn_bits, "fc2_a_bits": args.fc2_a_bits, "proj_a_bits": args.proj_a_bits,
            "q_a_bits": args.q_a_bits, "k_a_bits": args.k_a_bits, "qkv_w_bits": args.qkv_w_bits,
            "w8_blocks": tuple(args.w8_blocks)}


def main_stages(job: MainJob) -> list[Stage]:
    """The zoo in FP32; PFCR on the ViT at W4A4 and W3A3 and the Swin at W4A4, each exported and run
    by the reference executor (the programs go to `job.programs` for the other parts' stages)."""
    from core.models import ZOO

    common, limit, full, results = job.common, job.limit, job.full, job.results
    schedule = ["--calib-size", "1024", "--iters", "200"] if full else ["--calib-size", "256", "--iters", "20"]
    test = ["--limit", str(limit)] if limit else []
    # The numpy reference executor runs ~60 images/s on one core, and a quantized model evaluates
    # with it (its eval forward is its program): the short job evaluates on 2000 test images.
    int_test = test if (limit or full) else ["--limit", "2000"]
    out: list[Stage] = [(f"evaluate {name} (FP32)", ["eval", name, *common, *test])
                        for name, entry in ZOO.items() if entry.checkpoint.exists()]
    # ViT at both widths; the Swin (windows, token gathers, pooled head) at W4A4, checked on fewer images
    for model, bits in (("vit_fmnist", "W4A4"), ("vit_fmnist", "W3A3"), ("swin_fmnist", "W4A4")):
        q = results / "quantized" / f"{model}_pfcr_{bits.lower()}.safetensors"
        prog = job.programs[f"{model} {bits}"] = q.with_suffix(".intprog.safetensors")
        swin = model.startswith("swin") and not (limit or full)
        out += [
            (f"quantize {model} {bits} with PFCR",
             ["quantize", model, "--bits", bits, "--method", "pfcr", *schedule, "--tag", "main",
              "--out", str(q), *common, *int_test]),
            (f"export {model} {bits} to the integer program",
             ["export", model, "--quantized", str(q), "--out", str(prog), "--tag", "main", *common]),
            (f"integer-only accuracy of {model} {bits} (reference executor)",
             ["run", str(prog), "--quantized", str(q), "--tag", "main", *common,
              *(["--limit", "500"] if swin else int_test)]),
        ]
    return out

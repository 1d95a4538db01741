"""The suite's one command line: `pfcr <command> --help` explains each command."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from pathlib import Path

# OpenMP's default busy-waiting made 2-thread training ~30x slower on a shared 2-core machine;
# it must be set before torch loads OpenMP. Recorded in every result's host.env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pfcr.errors import SuiteError

FMNIST = "fashion-mnist"
# The other packages' commands: each module has `add_commands(sub, common)` (argparse subparsers and
# the --results/--seed helper) and `main_stages(results, programs, full)` (its stages of the main job).
# Importing one must stay light: heavy imports (tvm, torch) go inside the command functions.
COMMAND_MODULES: tuple[str, ...] = ("hwsim.sensor.commands", "hwsim.accelerator.commands", "tvm_backends.commands")


def _dataset(args: argparse.Namespace, module):
    """(dataset, data-record) for --data: the embedded Fashion-MNIST or a user's ImageFolder."""
    from pfcr import data

    if args.data == FMNIST:
        ds = data.fmnist(args.split, limit=args.limit)
        return ds, {"name": FMNIST, "split": args.split, "size": len(ds)}
    ds = data.image_folder(data.split_folder(args.data, "val"), module)
    if args.limit is not None:
        import torch.utils.data

        ds = torch.utils.data.Subset(ds, range(min(args.limit, len(ds))))
    return ds, {"name": str(args.data), "split": "folder", "size": len(ds)}


def _model_record(loaded) -> dict:
    return {"name": loaded.name, "checkpoint": loaded.checkpoint, "checkpoint_sha256": loaded.checkpoint_sha256}


def cmd_models(args: argparse.Namespace) -> int:
    from pfcr.models import ZOO

    print(f"{'model':<14} {'top-1':>7} {'params':>8}  {'trained':<20} description")
    for entry in ZOO.values():
        card = entry.card() or {}
        top1 = f"{100 * card['test_top1']:.2f}%" if "test_top1" in card else "-"
        params = f"{card['params'] / 1e6:.2f}M" if "params" in card else "-"
        trained = f"{card.get('epochs', '-')} ep, {card.get('device', '-')}" if card else "untrained"
        print(f"{entry.name:<14} {top1:>7} {params:>8}  {trained:<20} {entry.summary}")
    return 0


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}); e.g. '{{\"num_classes\": 100}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"num_classes\": 100}'")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a float model, or a saved quantized one (--quantized), and write an `eval` record."""
    import torch

    from pfcr.evaluate import predict
    from pfcr.models import load_model, sha256_file
    from pfcr.records import make_record, write_record

    torch.manual_seed(args.seed)
    if args.quantized:
        loaded, module, meta = _quantized_model(args)
        config = {"method": meta.get("method", "quantized"), "w_bits": module.cfg.w_bits,
                  "a_bits": module.cfg.a_bits, "tag": "reloaded"}
        extra = {"artifact": str(args.quantized), "artifact_sha256": sha256_file(args.quantized)}
    else:
        loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
        module, config, extra = loaded.module, {"method": "fp32", "w_bits": None, "a_bits": None}, {}
    ds, data_rec = _dataset(args, loaded.module)
    t0 = time.perf_counter()
    metrics = predict(module, ds, batch_size=args.batch_size, desc=f"eval {args.model}").metrics()
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    record = make_record("eval", model=_model_record(loaded), data=data_rec, config=config,
                         metrics=metrics, seed=args.seed, extra=extra)
    path = write_record(record, args.results)
    print(f"{args.model} {config['method']}: top-1 {100 * metrics['top1']:.2f}%  "
          f"top-5 {100 * metrics['top5']:.2f}% on {data_rec['size']} images -> {path}")
    if args.confusion:
        print("per-class top-1 and confusion (rows: true class, columns: predicted)")
        for c, (acc, row) in enumerate(zip(metrics["per_class_top1"], metrics["confusion"], strict=True)):
            share = "   -  " if acc is None else f"{100 * acc:5.1f}%"
            print(f"{c:3d} {share} " + " ".join(f"{v:5d}" for v in row))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from pfcr import data
    from pfcr.atomic import atomic_path, atomic_write
    from pfcr.evaluate import predict
    from pfcr.models import ZOO, build, sha256_file
    from pfcr.records import host, make_record, versions, write_record
    from pfcr.train import TrainConfig, train

    if args.model not in ZOO:
        raise SuiteError(f"`train` trains zoo models ({', '.join(ZOO)}), not {args.model!r}; "
                         "fine-tune other timm models with timm's own train script")
    entry = ZOO[args.model]
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    model = build(entry.arch, **entry.kwargs)
    images, labels = data.load_fmnist_arrays("train")
    x, y = data.fmnist_to_tensor(images), torch.from_numpy(labels.astype("int64"))
    run_dir = Path(args.run_dir or f"runs/{entry.name}")
    log = []

    def on_epoch(epoch: int, seconds: float) -> None:
        log.append(seconds)
        print(f"{entry.name}: epoch {epoch}/{cfg.epochs} done in {seconds:.0f} s", flush=True)

    t0 = time.perf_counter()
    train(model, x, y, cfg, run_dir, on_epoch)
    test = predict(model, data.fmnist("test"), desc="test").metrics()
    out = Path(args.out) if args.out else entry.checkpoint.parent
    weights = out / f"{entry.name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    card = {
        "name": entry.name, "arch": entry.arch, "kwargs": entry.kwargs, "summary": entry.summary,
        "params": sum(p.numel() for p in model.parameters()),
        "data": {"name": FMNIST, "train_size": len(x), "test_size": test["n"]},
        "train_config": cfg.__dict__, "epochs": cfg.epochs, "seed": cfg.seed,
        "test_top1": test["top1"], "test_top5": test["top5"],
        # Seconds of the epochs run in this invocation (a resumed run omits earlier ones).
        "train_seconds_this_run": round(time.perf_counter() - t0, 1), "epoch_seconds": [round(s, 1) for s in log],
        "device": "cpu", "threads": torch.get_num_threads(), "host": host(), "versions": versions(),
        "sha256": sha256_file(weights), "checkpoint": weights.name,
    }
    atomic_write(out / f"{entry.name}.json", json.dumps(card, indent=1, default=list) + "\n")
    write_record(make_record("train", model={"name": entry.name, "checkpoint_sha256": card["sha256"]},
                             data={"name": FMNIST, "split": "train", "size": len(x)},
                             config={"method": "fp32", **cfg.__dict__},
                             metrics={"top1": test["top1"], "top5": test["top5"]}, seed=cfg.seed),
                 args.results)
    print(f"{entry.name}: test top-1 {100 * test['top1']:.2f}% -> {weights}")
    return 0


def parse_bits(text: str) -> tuple[int, int]:
    """'W4A4' -> (4, 4); mixed settings such as 'W4A8' too."""
    import re

    m = re.fullmatch(r"[wW](\d+)[aA](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form W<bits>A<bits>, e.g. W4A4 or W3A3")
    return int(m.group(1)), int(m.group(2))


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize, save, evaluate against the float model, and write a `quantize` record."""
    import resource

    import torch
    from tqdm import tqdm

    from pfcr import data
    from pfcr.evaluate import agreement, predict
    from pfcr.models import load_model
    from pfcr.quant.model import QuantConfig
    from pfcr.quantize import QuantizeConfig, quantize, save_qmodel
    from pfcr.reconstruct.loop import ReconConfig
    from pfcr.records import make_record, write_record

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SuiteError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    w_bits, a_bits = args.bits
    cfg = QuantizeConfig(
        method=args.method,
        quant=QuantConfig(w_bits=w_bits, a_bits=a_bits, attn_bits=args.attn_bits, input_bits=args.input_bits,
                          first_last_w_bits=args.first_last_w_bits, log2_softmax=not args.uniform_softmax),
        recon=ReconConfig(iters=args.iters, batch_size=args.recon_batch_size, round_lr=args.round_lr,
                          scale_lr=args.scale_lr, drop_prob=args.drop_prob),
        pos=args.pos, finest=not args.no_finest, coarsest=args.coarsest, seed=args.seed,
        init_size=min(128, args.calib_size))
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
    fp = loaded.module.to(args.device)
    images, manifest = data.calibration_images(args.data, args.calib_size, args.seed, fp)
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
    default_out = f"results/quantized/{args.model}_{args.method}_w{w_bits}a{a_bits}_seed{args.seed}.safetensors"
    out = Path(args.out or default_out)
    save_qmodel(qm, out, {"model": args.model, "method": args.method, "checkpoint_sha256": loaded.checkpoint_sha256,
                          "model_kwargs": args.model_kwargs, "calibration": json.loads(manifest.to_json())})
    ds, data_rec = _dataset(args, fp)
    fp_eval = predict(fp, ds, batch_size=args.batch_size, desc="eval fp32")
    q_eval = predict(qm, ds, batch_size=args.batch_size, desc=f"eval {args.method}")
    metrics = {**q_eval.metrics(), **agreement(fp_eval, q_eval), "fp_top1": fp_eval.topk(1),
               "seconds": round(seconds, 2),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "granules": log}
    config = {**cfg.to_dict(), "w_bits": w_bits, "a_bits": a_bits, "calib_size": args.calib_size,
              "calib_sha256": manifest.sha256, "device": args.device, "tag": args.tag}
    record = make_record("quantize", model=_model_record(loaded), data=data_rec, config=config,
                         metrics=metrics, seed=args.seed, extra={"artifact": str(out)})
    path = write_record(record, args.results)
    print(f"{args.model} {args.method} W{w_bits}A{a_bits}: top-1 {100 * metrics['top1']:.2f}% "
          f"(FP32 {100 * metrics['fp_top1']:.2f}%), agreement {100 * metrics['agreement']:.2f}%, "
          f"KL {metrics['kl']:.4f}, {seconds:.0f} s -> {path}")
    return 0


def _quantized_model(args: argparse.Namespace):
    """(float LoadedModel, quantized model, its metadata) for --quantized, checked against the model
    name before anything is loaded."""
    from pfcr.models import load_model
    from pfcr.quantize import load_qmodel, read_qmodel_meta

    _, meta = read_qmodel_meta(args.quantized)
    if meta.get("model") != args.model:
        raise SuiteError(f"{args.quantized} quantizes {meta.get('model')!r}, not {args.model!r}; "
                         f"pass {meta.get('model')} as the model")
    loaded = load_model(args.model, args.checkpoint, **args.model_kwargs)
    return loaded, load_qmodel(args.quantized, loaded.module), meta


def cmd_export(args: argparse.Namespace) -> int:
    """Quantized model -> integer program file, with an `export` record (sizes)."""
    import torch

    from pfcr import data
    from pfcr.export import export_program
    from pfcr.models import sha256_file
    from pfcr.records import make_record, write_record

    torch.manual_seed(args.seed)
    loaded, qm, _ = _quantized_model(args)
    images, manifest = data.calibration_images(args.data, args.calib_size, args.seed, loaded.module)
    program = export_program(qm, images)
    program.meta.update({"model": args.model, "model_kwargs": args.model_kwargs, "checkpoint": loaded.checkpoint,
                         "w_bits": qm.cfg.w_bits, "a_bits": qm.cfg.a_bits,
                         "quantized": str(args.quantized), "quantized_sha256": sha256_file(args.quantized)})
    out = Path(args.out or Path(args.quantized).with_suffix(".intprog.safetensors"))
    program.save(out)
    sizes = program.weight_bytes()
    metrics = {**sizes, "program_bytes": out.stat().st_size, "ops": len(program.ops),
               "fp32_param_bytes": 4 * sum(p.numel() for p in loaded.module.parameters())}
    cfg = qm.cfg
    record = make_record("export", model=_model_record(loaded),
                         data={"name": args.data, "split": "calibration", "size": len(images)},
                         config={"method": "intprog", "w_bits": cfg.w_bits, "a_bits": cfg.a_bits,
                                 "calib_sha256": manifest.sha256, "tag": args.tag},
                         metrics=metrics, seed=args.seed,
                         extra={"artifact": str(out), "artifact_sha256": sha256_file(out)})
    write_record(record, args.results)
    print(f"{out}: {len(program.ops)} integer ops, weights {sizes['weight_bytes_packed'] / 1024:.0f} KiB packed "
          f"vs {sizes['weight_bytes_fp32'] / 1024:.0f} KiB FP32")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Evaluate an integer program with the reference executor; a `run` record."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from intprog import reference
    from intprog.program import ProgramError, load
    from pfcr.evaluate import Evaluation, agreement, predict
    from pfcr.export import quantize_images
    from pfcr.models import load_model, sha256_file
    from pfcr.records import make_record, write_record

    try:
        program = load(args.program)
    except ProgramError as err:
        raise SuiteError(str(err)) from None
    meta = program.meta
    fp = load_model(meta["model"], meta.get("checkpoint"), **meta.get("model_kwargs", {}))
    ds, data_rec = _dataset(args, fp.module)
    logits, labels, stats = [], [], {}
    t0 = time.perf_counter()
    for x, y in tqdm(DataLoader(ds, batch_size=args.batch_size), desc="integer program", leave=False, disable=None):
        logits.append(torch.from_numpy(reference.run(program, quantize_images(program, x), stats).astype(np.float64)))
        labels.append(torch.as_tensor(y))
    seconds = time.perf_counter() - t0
    integer = Evaluation(torch.cat(logits).float(), torch.cat(labels).long())
    metrics = {**integer.metrics(), **program.weight_bytes(), **stats, "seconds": round(seconds, 2),
               "images_per_second": round(len(integer.labels) / seconds, 2)}
    if args.quantized:
        from pfcr.quantize import load_qmodel

        fake = predict(load_qmodel(args.quantized, fp.module), ds, batch_size=args.batch_size, desc="fake-quant")
        metrics.update({"fake_quant_top1": fake.topk(1),
                        **{f"vs_fake_quant_{k}": v for k, v in agreement(fake, integer).items()}})
    record = make_record("run", model=_model_record(fp), data=data_rec,
                         config={"method": "intprog-reference", "w_bits": meta.get("w_bits"),
                                 "a_bits": meta.get("a_bits"), "tag": args.tag},
                         metrics=metrics, seed=args.seed,
                         extra={"artifact": str(args.program), "artifact_sha256": sha256_file(args.program)})
    path = write_record(record, args.results)
    fq = f" (fake-quant {100 * metrics['fake_quant_top1']:.2f}%)" if args.quantized else ""
    print(f"{args.program}: integer-only top-1 {100 * metrics['top1']:.2f}%{fq} on {data_rec['size']} images, "
          f"peak activations {metrics['peak_activation_bytes'] / 1024:.1f} KiB per image -> {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reports.summary import write_summary

    md = write_summary(args.results, args.out, readme=args.readme)
    print(md)
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    """The main job: every stage of the suite on the embedded default (pfcr/pipeline.py), then the report."""
    from pfcr.pipeline import run_main
    from reports.summary import write_summary

    def run_stage(argv: list[str]) -> None:
        sub = parser().parse_args(argv)
        sub.func(sub)

    run_main(args, run_stage)
    print("== report", flush=True)
    print(write_summary(args.results, args.out, readme=None))
    print(f"\nreport: {Path(args.out) / 'report.html'}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcr", description="Low-bit vision transformers from PTQ to edge hardware.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--results", default=None,
                        help="result records folder (default $PFCR_RESULTS or ./results)")
        sp.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")

    def model_args(sp: argparse.ArgumentParser, what: str = "a zoo model (see `pfcr models`) or any timm model name"
                   ) -> None:
        sp.add_argument("model", help=what)
        sp.add_argument("--checkpoint", default=None, help="local .safetensors or torch state_dict file")
        sp.add_argument("--model-kwargs", type=_json_object, default={},
                        help="timm options of your model as JSON, e.g. '{\"num_classes\": 100}'")

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data", default=FMNIST,
                        help=f"'{FMNIST}' (embedded default) or an ImageNet-layout folder of your own "
                        "(its val/ and train/ subfolders when present)")
        sp.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
        sp.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
        sp.add_argument("--batch-size", type=int, default=256)

    sp = sub.add_parser("models", help="list the embedded model zoo and its cards")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("eval", help="top-1, top-5, per-class accuracy and confusion of a model")
    model_args(sp)
    sp.add_argument("--quantized", default=None, help="a quantized model saved by `pfcr quantize` to evaluate")
    sp.add_argument("--confusion", action="store_true", help="print per-class accuracy and the confusion matrix")
    data_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("train", help="train a zoo model on Fashion-MNIST (resumes from runs/<model>)")
    sp.add_argument("model", help="zoo model name")
    sp.add_argument("--epochs", type=int, default=20)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--lr", type=float, default=2e-3)
    sp.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    sp.add_argument("--run-dir", default=None, help="epoch checkpoints (default runs/<model>)")
    sp.add_argument("--out", default=None, help="where the weights and card go (default: the zoo)")
    common(sp)
    sp.set_defaults(func=cmd_train)

    from pfcr.reconstruct.loop import ReconConfig

    sp = sub.add_parser("quantize", help="post-training quantization (pfcr, block, rtn), saved and evaluated")
    model_args(sp)
    sp.add_argument("--bits", type=parse_bits, default=(4, 4), help="W<w>A<a>, e.g. W4A4, W3A3, W8A8, W4A8")
    sp.add_argument("--method", default="pfcr", choices=["pfcr", "block", "rtn"])
    sp.add_argument("--attn-bits", type=int, default=None, help="post-softmax bits (default: the A bits)")
    sp.add_argument("--uniform-softmax", action="store_true", help="uniform instead of log2 post-softmax quantizer")
    sp.add_argument("--input-bits", type=int, default=8, help="bits of the image entering the patch embedding")
    sp.add_argument("--first-last-w-bits", type=int, default=None,
                    help="weight bits of the patch embedding and the head (default: the W bits)")
    sp.add_argument("--pos", default="sos", choices=["sos", "levelwise", "none"],
                    help="PFCR's progressive optimization strategy reading (see pfcr/quantize.py)")
    sp.add_argument("--coarsest", type=int, default=4, help="PFCR's largest granule in blocks (0, 1, 2, 4, ...)")
    sp.add_argument("--no-finest", action="store_true", help="PFCR without the MHSA/MLP unit level")
    sp.add_argument("--calib-size", type=int, default=1024, help="calibration images (seeded draw)")
    sp.add_argument("--iters", type=int, default=200, help="reconstruction iterations per granule")
    sp.add_argument("--recon-batch-size", type=int, default=32)
    sp.add_argument("--round-lr", type=float, default=ReconConfig.round_lr, help="Adam lr of AdaRound variables")
    sp.add_argument("--scale-lr", type=float, default=ReconConfig.scale_lr, help="Adam lr of activation steps")
    sp.add_argument("--drop-prob", type=float, default=ReconConfig.drop_prob, help="QDrop probability")
    sp.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    sp.add_argument("--out", default=None, help="quantized model file (.safetensors)")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    data_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_quantize)

    sp = sub.add_parser("export", help="quantized ViT -> integer program file (intprog)")
    model_args(sp, "the model the quantized file was made from")
    sp.add_argument("--quantized", required=True, help="a quantized model saved by `pfcr quantize`")
    sp.add_argument("--calib-size", type=int, default=256, help="images that fix the stream/GELU/logit scales")
    sp.add_argument("--out", default=None, help="program file (default: beside the quantized file)")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    sp.add_argument("--data", default=FMNIST, help="calibration source: fashion-mnist or a folder")
    common(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("run", help="evaluate an integer program with the reference executor")
    sp.add_argument("program", help="an integer program file written by `pfcr export`")
    sp.add_argument("--quantized", default=None, help="also compare with this fake-quant model")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    data_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_run)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub, common)

    sp = sub.add_parser("report", help="summarize result records as Markdown and CSV")
    sp.add_argument("--out", default="results/report", help="report folder (default results/report)")
    sp.add_argument("--readme", default=None, help="also rewrite this README's results table")
    sp.add_argument("--results", default=None, help="result records folder")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("main", help="run the whole pipeline on the embedded default and report")
    sp.add_argument("--out", default="results/report", help="report folder (default results/report)")
    sp.add_argument("--full", action="store_true",
                    help="full schedule: PTQ on 1024 images x 200 iterations, integer accuracy on all test images")
    sp.add_argument("--rerun", action="store_true", help="run every stage even if its record is up to date")
    sp.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    sp.add_argument("--results", default=None, help="result records folder (default $PFCR_RESULTS or ./results)")
    sp.set_defaults(func=cmd_main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except SuiteError as err:
        print(f"pfcr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pfcr {args.command}: interrupted; finished results were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

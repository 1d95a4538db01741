"""`pfcr simulate`: an integer program on the accelerator model, values and time, as a result record.

Light to import (numpy-only modules load inside the command).
"""

from __future__ import annotations

import argparse

from core import arguments
from core.registry import MainJob, Stage

MAIN_IMAGES = 300  # the main job's simulate stage: a few hundred test images (about a minute)


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from core import data
    from core.errors import SuiteError
    from core.files import ensure_writable
    from core.records import results_dir, write_record
    from hwsim.accelerator.config import MAX_ACC_BITS, load_config
    from hwsim.accelerator.simulate import make_simulate_record, simulate
    from intprog.program import load

    # Checked first, in the command (exit 2 through SuiteError, as tests/test_hwsim_accel_timing.py
    # expects), before the program, the data or the results folder is touched.
    for option, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise SuiteError(f"{option} {value} leaves no images to simulate; give a number of at least 1")
    if args.acc_bits is not None and not 8 <= args.acc_bits <= MAX_ACC_BITS:
        raise SuiteError(f"--acc-bits {args.acc_bits}: accumulator.bits = {args.acc_bits} is outside "
                         f"8..{MAX_ACC_BITS}; give a width in that range")
    ensure_writable(results_dir(args.results), "--results (or $PFCR_RESULTS)")
    data.check_source(args.data)
    program = load(args.program)
    changes = {k: v for k, v in (("acc_bits", args.acc_bits), ("overflow", args.overflow),
                                 ("rounding", args.rounding)) if v is not None}
    cfg = load_config(args.config)
    cfg = cfg.replace(**changes) if changes else cfg
    # --data's images, preprocessed as the program's model expects (a folder) and checked to fit it
    images, data_rec, _ = data.program_set(args.data, args.split, args.limit, program.meta, program.input["shape"],
                                           args.program)
    steps = -(-len(images) // args.batch_size)
    batches = ((program.input_codes(x), y) for x, y in tqdm(data.batches(images, args.batch_size), total=steps,
                                                           desc=f"simulate on {cfg.name}", leave=False, disable=None))
    metrics, rows = simulate(program, batches, cfg, compare=not args.no_compare)
    record = make_simulate_record(args.program, program, cfg, metrics, rows, data_rec, args.seed, args.tag)
    path = write_record(record, args.results, distinct=True)
    print(f"{'layer':<18} {'unit':<9} {'MACs':>9} {'cycles':>9} {'stall':>7} {'util':>5} {'DRAM B':>8} "
          f"{'energy nJ':>9} {'overflows':>9}")
    for r in rows:
        if r["unit"] == "layout":
            continue
        print(f"{r['name']:<18} {r['unit']:<9} {r['macs']:>9} {r['cycles']:>9} {r['stall_cycles']:>7} "
              f"{r['utilization']:>5.2f} {r['dram_bytes']:>8.0f} {r['energy_pj'] / 1e3:>9.1f} {r['overflows']:>9}")
    exact = {True: ", bit-exact vs reference", False: f", {metrics.get('mismatched_images')} images differ from "
             "the reference", None: ""}[metrics.get("bit_exact")]
    print(f"{args.program} on {cfg.name} ({cfg.rows}x{cfg.cols} {cfg.dataflow}, {cfg.acc_bits}-bit {cfg.overflow}): "
          f"top-1 {100 * metrics['top1']:.2f}% on {metrics['images']} images{exact}; {metrics['overflows']} "
          f"accumulator overflows; per image {metrics['cycles']} cycles = {metrics['latency_ms']:.3f} ms at "
          f"{cfg.clock_mhz:g} MHz, {metrics['energy_uj']:.1f} uJ, utilization {100 * metrics['utilization']:.1f}%; "
          f"simulated {metrics['sim_macs_per_second'] / 1e9:.2f} GMAC/s -> {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from hwsim.accelerator.config import MAX_ACC_BITS, OVERFLOW_MODES, ROUNDING_MODES

    sp = sub.add_parser("simulate", help="run an integer program on the accelerator model (values, cycles, energy)")
    sp.add_argument("program", help="an integer program file written by `pfcr export`")
    sp.add_argument("--config", default="edge-npu",
                    help="accelerator: a preset (edge-npu, mcu) or a TOML file (see docs/accelerator.md)")
    sp.add_argument("--acc-bits", type=int, default=None, help=f"override the accumulator width (8..{MAX_ACC_BITS})")
    sp.add_argument("--overflow", choices=OVERFLOW_MODES, default=None, help="override the overflow mode")
    sp.add_argument("--rounding", choices=ROUNDING_MODES, default=None, help="override the requantization rounding")
    arguments.data_source(sp, "the images simulated")
    sp.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
    sp.add_argument("--limit", type=int, default=None, help="simulate only the first N images (N >= 1)")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--no-compare", action="store_true", help="skip the bit-for-bit comparison with the reference")
    sp.add_argument("--tag", default=None, help="a label kept in the record and its file name")
    arguments.common(sp)
    sp.set_defaults(func=cmd_simulate)


def main_stages(job: MainJob) -> list[Stage]:
    """The W4A4 ViT on the edge NPU over a few hundred test images (all of them with --full), and the
    W4A4 Swin over a hundred (its windows, bias and mask on the array)."""
    common = ["--config", "edge-npu", "--tag", "main", *job.common]
    return [(f"simulate {name} on the edge-NPU accelerator model",
             ["simulate", str(job.programs[name]), *common, *([] if job.full else ["--limit", str(images)])])
            for name, images in (("vit_fmnist W4A4", MAIN_IMAGES), ("swin_fmnist W4A4", 100))]

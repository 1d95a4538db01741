"""Time, memory and energy: closed-form cycles, SRAM/DRAM traffic and energy per layer, one image.

The array (R rows x C columns) runs a GEMM [M, K] x [K, N] in folds:
- weight-stationary: K on the rows, N on the columns; ceil(K/R) * ceil(N/C) folds of
  2R + C + M - 2 cycles each (R to preload the weights, M rows streamed through, R + C - 2 to fill
  and drain the skewed pipeline);
- output-stationary: M on the rows, N on the columns; ceil(M/R) * ceil(N/C) folds of
  2R + C + K - 2 cycles (K products streamed, R + C - 2 of skew, R to shift the outputs out).
Units (LUT, LayerNorm, softmax, shift-add attention x V, vector) process `lanes` elements per
cycle per pass after `latency` cycles. DRAM transfers overlap compute (double-buffered); a layer
takes max(compute, DRAM bytes / bandwidth) cycles and the excess is its stall. Layers run one
after another. docs/accelerator.md gives the traffic formulas and what they leave out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hwsim.accelerator.config import AccelConfig
from hwsim.accelerator.workload import Layer


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def gemm_folds(m: int, k: int, n: int, cfg: AccelConfig) -> int:
    if cfg.dataflow == "weight_stationary":
        return _ceil(k, cfg.rows) * _ceil(n, cfg.cols)
    return _ceil(m, cfg.rows) * _ceil(n, cfg.cols)


def gemm_cycles(m: int, k: int, n: int, cfg: AccelConfig) -> int:
    """Compute cycles of one [m, k] x [k, n] GEMM on the array (no stalls)."""
    r, c = cfg.rows, cfg.cols
    stream = m if cfg.dataflow == "weight_stationary" else k
    return gemm_folds(m, k, n, cfg) * (2 * r + c + stream - 2)


@dataclass
class LayerCost:
    name: str
    unit: str
    macs: int
    compute_cycles: int
    stall_cycles: int
    cycles: int
    utilization: float  # MACs / (R * C * cycles) for array layers, else 0
    sram_bytes: float
    dram_bytes: float
    on_chip_bytes: float
    energy_pj: float

    def to_dict(self) -> dict:
        return asdict(self)


def _array_traffic(layer: Layer, cfg: AccelConfig) -> tuple[float, float, float]:
    """(SRAM bytes, DRAM bytes, bytes held on chip) of a GEMM layer."""
    m, k, n, cnt = layer.m, layer.k, layer.n, layer.count
    ws = cfg.dataflow == "weight_stationary"
    act = cnt * m * k * layer.in_bits / 8
    wgt = cnt * k * n * (layer.w_bits if layer.op == "linear" else layer.in_bits) / 8
    out = cnt * m * n * layer.out_bits / 8
    acc = cnt * m * n * cfg.acc_bits / 8
    n_folds, k_folds, m_folds = _ceil(n, cfg.cols), _ceil(k, cfg.rows), _ceil(m, cfg.rows)
    if ws:  # weights read once; inputs once per column fold; partial sums written per K fold, read back
        sram = wgt + act * n_folds + acc * (2 * k_folds - 1) + out
        held_out = min(acc, cfg.ofmap_sram_bytes)
        spill = 2 * (k_folds - 1) * acc if cnt * m * min(n, cfg.cols) * cfg.acc_bits / 8 > cfg.ofmap_sram_bytes else 0
    else:  # accumulators stay in the PEs; inputs once per column fold, weights once per row fold
        sram = act * n_folds + wgt * m_folds + out
        held_out, spill = min(out, cfg.ofmap_sram_bytes), 0
    dram = spill
    if layer.op == "linear":  # weights live in DRAM; re-fetched per row fold if OS cannot hold them
        dram += wgt * (m_folds if not ws and wgt > cfg.filter_sram_bytes else 1)
    if act > cfg.ifmap_sram_bytes:  # activations that do not fit come from DRAM once per column fold
        dram += act * n_folds
    if out > cfg.ofmap_sram_bytes:
        dram += out
    on_chip = min(act, cfg.ifmap_sram_bytes) + min(wgt, cfg.filter_sram_bytes) + held_out
    return sram, dram, on_chip


def layer_cost(layer: Layer, cfg: AccelConfig) -> LayerCost:
    if layer.unit == "array":
        compute = layer.count * gemm_cycles(layer.m, layer.k, layer.n, cfg)
        sram, dram, on_chip = _array_traffic(layer, cfg)
        energy = layer.macs * cfg.mac_energy(max(layer.w_width, layer.a_width))
    elif layer.unit == "layout":
        compute, sram, dram, on_chip, energy = 0, 0.0, 0.0, 0.0, 0.0
    else:
        unit = cfg.units[layer.unit]
        compute = layer.passes * _ceil(layer.elements, unit.lanes) + unit.latency
        if layer.unit == "shift_av":  # holds a head's V, streams its log2 codes, writes its outputs
            sram = layer.count * (layer.m * layer.k * layer.w_bits + layer.k * layer.n * layer.in_bits
                                  + layer.m * layer.n * layer.out_bits) / 8
            on_chip = sram
        else:  # streams its input `passes` times, writes its output once
            sram = layer.elements * (layer.passes * layer.in_bits + layer.out_bits) / 8
            on_chip = layer.elements * (layer.in_bits + layer.out_bits) / 8
        total_sram = cfg.ifmap_sram_bytes + cfg.filter_sram_bytes + cfg.ofmap_sram_bytes
        # operands that do not fit the SRAMs stream from and to DRAM once
        dram = on_chip if on_chip > total_sram else 0.0
        on_chip = min(on_chip, total_sram)
        energy = layer.elements * layer.passes * unit.pj_per_element
    energy += sram * cfg.sram_pj_per_byte + dram * cfg.dram_pj_per_byte
    cycles = max(compute, math.ceil(dram / cfg.dram_bytes_per_cycle))
    util = layer.macs / (cfg.rows * cfg.cols * cycles) if layer.unit == "array" and cycles else 0.0
    return LayerCost(layer.name, layer.unit, layer.macs if layer.unit == "array" else 0, compute, cycles - compute,
                     cycles, util, sram, dram, on_chip, energy)


def costs(layers: list[Layer], cfg: AccelConfig, input_bytes: float = 0.0, output_bytes: float = 0.0
          ) -> tuple[list[LayerCost], dict]:
    """Per-layer costs and totals of one image; the program's input and output cross DRAM once."""
    per = [layer_cost(layer, cfg) for layer in layers]
    cycles = sum(c.cycles for c in per)
    macs = sum(c.macs for c in per)
    io_cycles = math.ceil((input_bytes + output_bytes) / cfg.dram_bytes_per_cycle)
    total_cycles = cycles + io_cycles
    dram = sum(c.dram_bytes for c in per) + input_bytes + output_bytes
    energy = sum(c.energy_pj for c in per) + (input_bytes + output_bytes) * cfg.dram_pj_per_byte
    totals = {
        "cycles": total_cycles,
        "compute_cycles": sum(c.compute_cycles for c in per),
        "stall_cycles": sum(c.stall_cycles for c in per) + io_cycles,
        "array_cycles": sum(c.cycles for c in per if c.unit == "array"),
        "macs": macs,
        "utilization": macs / (cfg.rows * cfg.cols * total_cycles) if total_cycles else 0.0,
        "latency_ms": total_cycles / (cfg.clock_mhz * 1e3),
        "sram_bytes": sum(c.sram_bytes for c in per),
        "dram_bytes": dram,
        "energy_uj": energy * 1e-6,
        "peak_on_chip_bytes": max((c.on_chip_bytes for c in per), default=0.0),
    }
    return per, totals

"""Granules: which units are reconstructed together, and in what order.

PFCR's reading (the paper's body is unavailable; these are our documented choices):
- the finest granules are the MHSA and the MLP units, each with its shortcut;
- once both units of a block are done, the block is reconstructed; once two neighbouring blocks
  are done, the pair is; then four, ... up to `coarsest` blocks. Granules never cross a Swin
  stage; a Swin patch merging joins the first block of its stage;
- the order is post-order (depth first): a coarse granule is reconstructed as soon as its
  parts are, so later units see inputs from an already refined prefix;
- the stem (patch embedding) and the tail (norm + head) are granules of their own.

`levelwise` gives the breadth-first alternative: all finest units first, then all blocks, ...
"""

from __future__ import annotations

from dataclasses import dataclass

from pfcr.quant.model import QuantModel


@dataclass(frozen=True)
class Granule:
    units: tuple[int, ...]  # contiguous unit indices
    level: int  # 0 = MHSA/MLP (or stem/tail), 1 = block, 2 = 2 blocks, 3 = 4 blocks, ...
    name: str

    @property
    def first(self) -> int:
        return self.units[0]

    @property
    def end(self) -> int:
        return self.units[-1] + 1


def _blocks(qmodel: QuantModel) -> list[list[list[int]]]:
    """Unit indices grouped per block, per stage (a merge unit belongs to its stage's first block)."""
    stages: dict[int, dict[int, list[int]]] = {}
    for i, u in enumerate(qmodel.units):
        if u.block is not None:
            stage, block = u.block
            stages.setdefault(stage, {}).setdefault(block, []).append(i)
    return [[blocks[b] for b in sorted(blocks)] for _, blocks in sorted(stages.items())]


def _unit_name(qmodel: QuantModel, i: int) -> str:
    u = qmodel.units[i]
    return u.kind if u.block is None else f"s{u.block[0]}.b{u.block[1]}.{u.kind}"


def schedule(qmodel: QuantModel, finest: bool = True, coarsest: int = 4, levelwise: bool = False) -> list[Granule]:
    """The reconstruction order.

    finest: reconstruct MHSA and MLP units on their own first.
    coarsest: largest granule in blocks (0: never merge units into blocks; 1: blocks; 2, 4, ...).
    levelwise: all granules of one level across the model before the next level.
    """
    if not finest and coarsest < 1:
        raise ValueError("a schedule needs the finest units or at least block granules")
    n = len(qmodel.units)
    out: list[Granule] = [Granule((0,), 0, "stem")]
    for stage in _blocks(qmodel):
        for bi, units in enumerate(stage):
            if finest:
                out += [Granule((i,), 0, _unit_name(qmodel, i)) for i in units]
            if coarsest >= 1:
                out.append(Granule(tuple(units), 1, _unit_name(qmodel, units[0]).rsplit(".", 1)[0]))
            size, level = 2, 2
            while size <= coarsest and (bi + 1) % size == 0:
                group = tuple(i for b in stage[bi + 1 - size:bi + 1] for i in b)
                first = qmodel.units[group[0]].block
                out.append(Granule(group, level, f"s{first[0]}.b{first[1]}-{first[1] + size - 1}"))
                size, level = size * 2, level + 1
    if levelwise:
        out.sort(key=lambda g: (g.level, g.first))
    return [*out, Granule((n - 1,), 0, "tail")]

"""Command-line arguments that several parts' commands share, so each reads the same everywhere.

The type functions below (`positive_int`, `nonnegative_int`, `probability`, `positive_float`,
`finite_float`, `int_in`, `bits`) check a number when the command line is parsed, before anything
is loaded: a bad value is an argparse error (exit 2) naming the option, the value and the range.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable

FMNIST = "fashion-mnist"
# Bit widths the fake-quant model and the integer program support (pfcr.quant.quantizers.check_bits).
MIN_BITS, MAX_BITS = 2, 8


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    """A count that must be at least 1 (images, batch sizes, calibration size, epochs)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a whole number of at least 1")
    return value


def nonnegative_int(text: str) -> int:
    """A count that may be 0 (iterations, seeds, threads)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a whole number of at least 0")
    return value


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """A whole number in lo..hi, e.g. `int_in(8, 48)` for an accumulator width."""
    def check(text: str) -> int:
        value = _int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    check.__name__ = f"int_in_{lo}_{hi}"
    return check


bit_width = int_in(MIN_BITS, MAX_BITS)  # --attn-bits, --input-bits, --first-last-w-bits


def probability(text: str) -> float:
    """A probability: 0 <= p <= 1."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not a probability: give a number from 0 to 1")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be above 0")
    return value


def finite_float(text: str) -> float:
    """Any finite number (not nan or inf)."""
    return _float(text)


def common(sp: argparse.ArgumentParser) -> None:
    """--results and --seed, which every command that writes a record takes."""
    sp.add_argument("--results", default=None, help="result records folder (default $PFCR_RESULTS or ./results)")
    sp.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every random draw (default 0)")


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err}); e.g. '{{\"num_classes\": 100}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"num_classes\": 100}'")
    return value


def model(sp: argparse.ArgumentParser, what: str = "a zoo model (see `pfcr models`) or any timm model name") -> None:
    """The model by name, with an optional local checkpoint and timm options."""
    sp.add_argument("model", help=what)
    sp.add_argument("--checkpoint", default=None, help="local .safetensors or torch state_dict file")
    sp.add_argument("--model-kwargs", type=json_object, default={},
                    help="timm options of your model as JSON, e.g. '{\"num_classes\": 100}'")


DATA_HELP = (f"'{FMNIST}' (embedded default) or an ImageNet-layout folder of your own (one subfolder of "
             "images per class; with val/ and train/ subfolders, images come from val/ and calibration from "
             "train/), preprocessed as the model expects (timm's eval transform for its config)")


def data_source(sp: argparse.ArgumentParser, what: str = "") -> None:
    """--data alone: the images a command feeds (Fashion-MNIST or a user's folder), for commands with
    their own --limit/--split (`pfcr bench`, `simulate`, `sensor sweep`); `what` says what they feed."""
    sp.add_argument("--data", default=FMNIST, help=f"{what}{': ' if what else ''}{DATA_HELP}")


def data(sp: argparse.ArgumentParser) -> None:
    """The images a command evaluates: the embedded Fashion-MNIST or a user's folder."""
    data_source(sp)
    sp.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
    sp.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images (N >= 1)")
    sp.add_argument("--batch-size", type=positive_int, default=256)


def bits(text: str) -> tuple[int, int]:
    """'W4A4' -> (4, 4); mixed settings such as 'W4A8' too."""
    m = re.fullmatch(r"[wW](\d+)[aA](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form W<bits>A<bits>, e.g. W4A4 or W3A3")
    return int(m.group(1)), int(m.group(2))


def check_bits_range(option: str, bits: tuple[int, int]) -> None:
    """A SuiteError unless both widths of a W<w>A<a> setting are in MIN_BITS..MAX_BITS (checked by the
    command before anything loads, so that its message can say which width is wrong)."""
    from core.errors import SuiteError

    for what, b in zip(("weight", "activation"), bits, strict=True):
        if not MIN_BITS <= b <= MAX_BITS:
            raise SuiteError(f"{option} W{bits[0]}A{bits[1]}: {what} bits {b} is outside the supported "
                             f"{MIN_BITS}..{MAX_BITS} bits; pick e.g. W4A4, W3A3 or W8A8")

"""Command-line arguments that several parts' commands share, so each reads the same everywhere."""

from __future__ import annotations

import argparse
import json
import re

FMNIST = "fashion-mnist"


def common(sp: argparse.ArgumentParser) -> None:
    """--results and --seed, which every command that writes a record takes."""
    sp.add_argument("--results", default=None, help="result records folder (default $PFCR_RESULTS or ./results)")
    sp.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")


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


def data(sp: argparse.ArgumentParser) -> None:
    """The images a command evaluates: the embedded Fashion-MNIST or a user's folder."""
    sp.add_argument("--data", default=FMNIST,
                    help=f"'{FMNIST}' (embedded default) or an ImageNet-layout folder of your own "
                    "(its val/ and train/ subfolders when present)")
    sp.add_argument("--split", default="test", choices=["train", "test"], help="Fashion-MNIST split")
    sp.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    sp.add_argument("--batch-size", type=int, default=256)


def bits(text: str) -> tuple[int, int]:
    """'W4A4' -> (4, 4); mixed settings such as 'W4A8' too."""
    m = re.fullmatch(r"[wW](\d+)[aA](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form W<bits>A<bits>, e.g. W4A4 or W3A3")
    return int(m.group(1)), int(m.group(2))

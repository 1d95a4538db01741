"""The core's commands: `pfcr models` (the zoo and its cards) and `pfcr train` (retrain a zoo model)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core import arguments
from core.errors import SuiteError


def cmd_models(args: argparse.Namespace) -> int:
    from core.models import ZOO

    print(f"{'model':<14} {'top-1':>7} {'params':>8}  {'trained':<20} description")
    for entry in ZOO.values():
        card = entry.card() or {}
        top1 = f"{100 * card['test_top1']:.2f}%" if "test_top1" in card else "-"
        params = f"{card['params'] / 1e6:.2f}M" if "params" in card else "-"
        trained = f"{card.get('epochs', '-')} ep, {card.get('device', '-')}" if card else "untrained"
        print(f"{entry.name:<14} {top1:>7} {params:>8}  {trained:<20} {entry.summary}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file

    from core import data
    from core.evaluate import predict
    from core.files import atomic_path, atomic_write, ensure_writable
    from core.models import ZOO, build, sha256_file
    from core.records import host, make_record, results_dir, versions, write_record
    from core.train import TrainConfig, train

    if args.model not in ZOO:
        raise SuiteError(f"`train` trains zoo models ({', '.join(ZOO)}), not {args.model!r}; "
                         "fine-tune other timm models with timm's own train script")
    entry = ZOO[args.model]
    # Never over the committed zoo unless --out says so: by default the weights and card go to
    # <results>/zoo/. Every folder it writes is checked before the first epoch.
    results = ensure_writable(results_dir(args.results), "--results (or $PFCR_RESULTS)")
    out = ensure_writable(Path(args.out) if args.out else results / "zoo", "--out")
    run_dir = ensure_writable(Path(args.run_dir or f"runs/{entry.name}"), "--run-dir")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.seed)
    model = build(entry.arch, **entry.kwargs)
    images, labels = data.load_fmnist_arrays("train")
    x, y = data.fmnist_to_tensor(images), torch.from_numpy(labels.astype("int64"))
    log = []

    def on_epoch(epoch: int, seconds: float) -> None:
        log.append(seconds)
        print(f"{entry.name}: epoch {epoch}/{cfg.epochs} done in {seconds:.0f} s", flush=True)

    t0 = time.perf_counter()
    train(model, x, y, cfg, run_dir, on_epoch)
    test = predict(model, data.fmnist("test"), desc="test").metrics()
    weights = out / f"{entry.name}.safetensors"
    with atomic_path(weights) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    card = {
        "name": entry.name, "arch": entry.arch, "kwargs": entry.kwargs, "summary": entry.summary,
        "params": sum(p.numel() for p in model.parameters()),
        "data": {"name": arguments.FMNIST, "train_size": len(x), "test_size": test["n"]},
        "train_config": cfg.__dict__, "epochs": cfg.epochs, "seed": cfg.seed,
        "test_top1": test["top1"], "test_top5": test["top5"],
        # Seconds of the epochs run in this invocation (a resumed run omits earlier ones).
        "train_seconds_this_run": round(time.perf_counter() - t0, 1), "epoch_seconds": [round(s, 1) for s in log],
        "device": "cpu", "threads": torch.get_num_threads(), "host": host(), "versions": versions(),
        "sha256": sha256_file(weights), "checkpoint": weights.name,
    }
    atomic_write(out / f"{entry.name}.json", json.dumps(card, indent=1, default=list) + "\n")
    write_record(make_record("train", model={"name": entry.name, "checkpoint_sha256": card["sha256"]},
                             data={"name": arguments.FMNIST, "split": "train", "size": len(x)},
                             config={"method": "fp32", **cfg.__dict__},
                             metrics={"top1": test["top1"], "top5": test["top5"]}, seed=cfg.seed),
                 args.results)
    print(f"{entry.name}: test top-1 {100 * test['top1']:.2f}% -> {weights}")
    if out.resolve() != entry.checkpoint.parent.resolve():
        print(f"(the zoo's own weights are unchanged; to make these the zoo's, copy {weights.name} and "
              f"{entry.name}.json into {entry.checkpoint.parent}, or train with --out {entry.checkpoint.parent})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("models", help="list the embedded model zoo and its cards")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("train", help="train a zoo model on Fashion-MNIST (resumes from runs/<model>)")
    sp.add_argument("model", help="zoo model name")
    sp.add_argument("--epochs", type=arguments.positive_int, default=20)
    sp.add_argument("--batch-size", type=arguments.positive_int, default=128)
    sp.add_argument("--lr", type=arguments.positive_float, default=2e-3)
    sp.add_argument("--threads", type=arguments.nonnegative_int, default=0,
                    help="torch threads (default: torch's choice)")
    sp.add_argument("--run-dir", default=None, help="epoch checkpoints (default runs/<model>)")
    sp.add_argument("--out", default=None,
                    help="where the weights and card go (default <results>/zoo/; the committed zoo, core/zoo/, "
                    "only when named here)")
    arguments.common(sp)
    sp.set_defaults(func=cmd_train)

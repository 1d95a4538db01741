"""Classification metrics: top-1, top-5, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from core.errors import DataError


@dataclass
class Evaluation:
    logits: torch.Tensor  # [N, C] float32
    labels: torch.Tensor  # [N] int64

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]

    def topk(self, k: int) -> float:
        """Fraction of samples whose label is among the k largest logits (k capped at C)."""
        k = min(k, self.num_classes)
        hits = (self.logits.topk(k, dim=1).indices == self.labels[:, None]).any(dim=1)
        return hits.float().mean().item()

    def confusion(self) -> torch.Tensor:
        """[C, C] counts; row = true class, column = predicted class."""
        c = self.num_classes
        top = int(self.labels.max()) if self.labels.numel() else -1
        if top >= c or (self.labels.numel() and int(self.labels.min()) < 0):
            raise DataError(f"the data has labels up to {top} but the model gives {c} class scores; evaluate it on "
                            f"data of at most {c} classes, or a model whose head has as many classes as the data")
        pred = self.logits.argmax(dim=1)
        return torch.bincount(self.labels * c + pred, minlength=c * c).reshape(c, c)

    def metrics(self) -> dict:
        conf = self.confusion()
        support = conf.sum(dim=1)
        per_class = torch.where(support > 0, conf.diag() / support.clamp(min=1), torch.nan)
        return {
            "top1": self.topk(1),
            "top5": self.topk(5),
            "n": int(self.labels.numel()),
            "per_class_top1": [None if v != v else round(float(v), 6) for v in per_class],
            "confusion": conf.tolist(),
        }


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 256, desc: str = "eval") -> Evaluation:
    """Run `model` over `data` in eval mode and keep its logits."""
    if batch_size < 1:
        raise DataError(f"batch size {batch_size} must be at least 1")
    if len(data) == 0:
        raise DataError("no images to evaluate: the data set is empty (check --data and --limit)")
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # a parameter-free model runs on the CPU
    logits, labels = [], []
    for x, y in tqdm(DataLoader(data, batch_size=batch_size), desc=desc, leave=False, mininterval=2, disable=None):
        logits.append(model(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return Evaluation(torch.cat(logits), torch.cat(labels).long())


def centred_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row cosine of mean-centred logits (a correlation): blind to a common offset, which
    softmax and argmax ignore too; 1 where either row is constant."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(dim=1) / norm.clamp(min=1e-300), torch.ones_like(norm))


def agreement(reference: Evaluation, other: Evaluation) -> dict:
    """How closely `other` follows `reference` on the same samples: less noisy than top-1 alone.

    agreement: fraction of identical top-1 predictions; kl: mean KL(reference || other) of the
    softmax outputs, in nats (both must be logits in the same units: dequantize integer codes
    first); cosine: mean centred cosine of the logits.
    """
    if not torch.equal(reference.labels, other.labels):
        raise ValueError("agreement needs evaluations of the same samples")
    p_log = reference.logits.log_softmax(dim=1)
    q_log = other.logits.log_softmax(dim=1)
    kl = (p_log.exp() * (p_log - q_log)).sum(dim=1).mean().item()
    same = (reference.logits.argmax(1) == other.logits.argmax(1)).float().mean().item()
    return {"agreement": same, "kl": kl, "cosine": centred_cosine(reference.logits, other.logits).mean().item()}

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.evaluate import Evaluation, predict

# Six samples, six classes; hand-checked answers below.
LOGITS = torch.tensor([
    [9, 1, 0, 0, 0, 0],  # label 0: top-1 hit
    [9, 8, 0, 0, 0, 0],  # label 1: top-1 miss (pred 0), top-5 hit
    [0, 0, 9, 0, 0, 0],  # label 2: hit
    [0, 0, 9, 1, 0, 0],  # label 3: miss (pred 2), top-5 hit
    [-1, 0, 1, 2, 3, 4],  # label 0: miss (pred 5); class 0 is the lowest logit -> top-5 miss
    [0, 0, 0, 0, 0, 9],  # label 5: hit
], dtype=torch.float32)
LABELS = torch.tensor([0, 1, 2, 3, 0, 5])


class Lookup(nn.Module):
    """Returns the stored logits of the sample whose index is the input's value."""

    def forward(self, x):
        return LOGITS[x.long()]


def test_metrics_by_hand():
    m = Evaluation(LOGITS, LABELS).metrics()
    assert m["top1"] == pytest.approx(3 / 6)
    assert m["top5"] == pytest.approx(5 / 6)
    assert m["n"] == 6
    assert m["per_class_top1"] == [0.5, 0.0, 1.0, 0.0, None, 1.0]  # class 4 has no samples
    conf = m["confusion"]
    assert conf[0] == [1, 0, 0, 0, 0, 1] and conf[1][0] == 1 and conf[3][2] == 1
    assert sum(map(sum, conf)) == 6


def test_topk_capped_at_classes():
    ev = Evaluation(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]))
    assert ev.topk(5) == 1.0


def test_predict_runs_the_model_in_batches():
    data = TensorDataset(torch.arange(6), LABELS)
    ev = predict(Lookup(), data, batch_size=4)
    assert torch.equal(ev.logits, LOGITS) and torch.equal(ev.labels, LABELS)
    assert ev.metrics()["top1"] == pytest.approx(0.5)


def test_labels_beyond_the_logits_are_named_not_a_reshape_error():
    from core.errors import DataError

    with pytest.raises(DataError, match="labels up to 7 but the model gives 6 class scores"):
        Evaluation(LOGITS, torch.tensor([0, 1, 2, 3, 0, 7])).metrics()


def test_predict_refuses_an_empty_set_or_batch_size():
    from core.errors import DataError

    with pytest.raises(DataError, match="no images to evaluate"):
        predict(Lookup(), TensorDataset(torch.arange(0), torch.arange(0)))
    with pytest.raises(DataError, match="batch size 0"):
        predict(Lookup(), TensorDataset(torch.arange(6), LABELS), batch_size=0)

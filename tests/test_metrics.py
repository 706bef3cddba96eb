"""Ranking metrics: hand-computed values, the pessimistic tie rule, the random expectation,
the torchmetrics Metric (streaming and de-duplicating) and its sync across two processes."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from reccocktail.evaluation.metrics import (
    RankingMetrics,
    metric_names,
    random_expectation,
    ranking_metrics,
    target_ranks,
)


def test_hand_computed_single_sample():
    scores = torch.tensor([[0.1, 0.5, 0.3, -2.0]])
    m = ranking_metrics(scores, [2], ks=(1, 3))  # positive is second best
    assert m["ndcg@1"] == 0.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert m["hr@1"] == 0.0 and m["hr@3"] == 1.0
    assert m["mrr"] == pytest.approx(0.5)
    best = ranking_metrics(scores, [1], ks=(1, 3))
    assert best == {"ndcg@1": 1.0, "ndcg@3": 1.0, "hr@1": 1.0, "hr@3": 1.0, "mrr": 1.0}
    worst = ranking_metrics(scores, [3], ks=(1, 3))
    assert worst["ndcg@3"] == 0.0 and worst["hr@3"] == 0.0 and worst["mrr"] == pytest.approx(0.25)


def test_batch_mean_and_keys():
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    m = ranking_metrics(scores, torch.tensor([0, 2]), ks=(1, 3))
    assert list(m) == metric_names((1, 3))
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_ties_count_against_the_positive():
    # all equal: the positive is last whatever its column
    for t in range(4):
        assert target_ranks(torch.zeros(1, 4), [t]).item() == 4
    # one candidate above, one tied: rank 3, not 2
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    assert target_ranks(scores, [0]).item() == 3
    assert target_ranks(scores, [2]).item() == 3
    assert ranking_metrics(scores, [0], ks=(1, 3))["ndcg@3"] == pytest.approx(0.5)
    # independent of the candidates' order
    perm = torch.tensor([3, 2, 1, 0])
    assert target_ranks(scores[:, perm], [1]).item() == 3


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics(torch.tensor([[0.0, float("nan")]]), [0])
    with pytest.raises(ValueError, match="out of range"):
        ranking_metrics(torch.zeros(1, 3), [3])
    with pytest.raises(ValueError, match="shape"):
        ranking_metrics(torch.zeros(2, 3), [0])
    with pytest.raises(ValueError, match=r"\[n, num_candidates\]"):
        ranking_metrics(torch.zeros(3), [0])


def test_random_expectation_exact():
    r = random_expectation(30)
    assert r["ndcg@1"] == pytest.approx(1 / 30)
    assert round(r["ndcg@3"], 4) == 0.0710  # the random NDCG@3 of docs/design.md §4
    assert r["hr@10"] == pytest.approx(10 / 30)
    # equals the mean over every rank the positive can take
    c = 7
    scores = torch.arange(c, 0, -1, dtype=torch.float32).repeat(c, 1)  # column j has rank j+1
    exhaustive = ranking_metrics(scores, torch.arange(c))
    for k, v in random_expectation(c).items():
        assert exhaustive[k] == pytest.approx(v)


def _random_batch(n=23, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n, c), generator=g).float()  # many ties on purpose
    target = torch.randint(0, c, (n,), generator=g)
    return scores, target


def test_metric_streaming_matches_function():
    scores, target = _random_batch()
    ref = ranking_metrics(scores, target)
    m = RankingMetrics(num_candidates=6)
    for lo in range(0, 23, 5):
        m.update(scores[lo : lo + 5], target[lo : lo + 5])
    out = m.compute()
    assert out["count"].item() == 23
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v)


def test_metric_dedupes_by_sample_index_on_merge():
    scores, target = _random_batch()
    ref = ranking_metrics(scores, target)
    idx = torch.arange(23)
    # rank 0 sees 0..11, rank 1 sees 12..22 plus 0 again (DistributedSampler-style padding)
    a, b = RankingMetrics(6, num_samples=23), RankingMetrics(6, num_samples=23)
    a.update(scores[:12], target[:12], idx[:12])
    b.update(torch.cat([scores[12:], scores[:1]]), torch.cat([target[12:], target[:1]]),
             torch.cat([idx[12:], idx[:1]]))
    a.merge_state(b)
    out = a.compute()
    assert out["count"].item() == 23
    for k, v in ref.items():
        assert out[k].item() == pytest.approx(v)
    with pytest.raises(ValueError, match="sample_index"):
        a.update(scores[:2], target[:2])


def _ddp_worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        scores, target = _random_batch()
        n = scores.shape[0]
        padded = list(range(n)) + list(range((-n) % world))  # DistributedSampler pads by wrapping
        mine = torch.tensor(padded[rank::world])
        dedup = RankingMetrics(6, num_samples=n)
        dedup.update(scores[mine], target[mine], mine)
        stream = RankingMetrics(6)
        stream.update(scores[mine], target[mine])
        result = {"dedup": {k: v.item() for k, v in dedup.compute().items()},
                  "stream_count": stream.compute()["count"].item()}
        if rank == 0:
            with open(out_path, "w") as fh:
                json.dump(result, fh)
    finally:
        dist.destroy_process_group()


def test_metric_synced_across_two_processes_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.json"
    # spawn, not fork: forking a process whose OpenMP pool earlier tests started can deadlock
    mp.start_processes(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    result = json.loads(out.read_text())
    scores, target = _random_batch()
    ref = ranking_metrics(scores, target)
    assert result["dedup"]["count"] == 23  # the padded duplicate is counted once
    for k, v in ref.items():
        assert result["dedup"][k] == pytest.approx(v)
    assert result["stream_count"] == 24  # the streaming mode counts every row it is given

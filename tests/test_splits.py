"""Warm/cold splits, caps, candidate sampling and the general pool on synthetic sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reccocktail.data.candidates import attach_candidates, popularity_weights
from reccocktail.data.filtering import Sequences
from reccocktail.data.general import build_general_pool
from reccocktail.data.readers import SourceTable
from reccocktail.data.splits import cap_rows, cap_users, cold_split, warm_split

C = 30


def make_seqs(n_users=60, n_items=200, min_len=5, max_len=40, seed=0, name="toy"):
    rng = np.random.default_rng(seed)
    seqs = [rng.choice(n_items, size=rng.integers(min_len, max_len + 1), replace=False)
            for _ in range(n_users)]
    lengths = np.array([len(s) for s in seqs])
    off = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=off[1:])
    return Sequences(name, [f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(n_items)],
                     [f"title {i}" for i in range(n_items)], off, np.concatenate(seqs).astype(np.int64))


def rows_as_tuples(seqs, rows, h=10):
    out = []
    for r in range(len(rows)):
        out.append((int(rows.user[r]), rows.history(r, h).tolist(), int(rows.targets[r])))
    return out


def test_warm_leave_one_out_and_prefixes():
    s = make_seqs()
    sp = warm_split(s)
    for u in range(s.num_users):
        seq = s.seq(u).tolist()
        t = sp.rows["test"]
        r = int(np.flatnonzero(t.user == u)[0])
        assert t.targets[r] == seq[-1] and t.history(r, 10).tolist() == seq[:-1][-10:]
        v = sp.rows["valid"]
        r = int(np.flatnonzero(v.user == u)[0])
        assert v.targets[r] == seq[-2] and v.history(r, 10).tolist() == seq[:-2][-10:]
        tr = sp.rows["train"]
        mine = np.flatnonzero(tr.user == u)
        assert tr.targets[mine].tolist() == seq[1:-2]  # every prefix j >= 1 of the training part
        assert sp.train_flat[sp.train_offsets[u]:sp.train_offsets[u + 1]].tolist() == seq[:-2]


def test_train_cap_per_user_keeps_latest_prefixes():
    s = make_seqs()
    sp = warm_split(s, max_train_per_user=3)
    tr = sp.rows["train"]
    for u in range(s.num_users):
        seq = s.seq(u).tolist()
        assert tr.targets[tr.user == u].tolist() == seq[1:-2][-3:]


def test_cold_split_keeps_new_items_out_of_training():
    s = make_seqs(n_users=200, seed=1)
    sp = cold_split(s, 0.1, seed=7)
    new = ~sp.allowed_train
    assert new.sum() == 20
    for name in ("train", "valid"):
        rows = sp.rows[name]
        for _u, hist, tgt in rows_as_tuples(s, rows):
            assert not new[tgt] and not new[hist].any()
    assert not new[sp.train_flat].any()
    test = sp.rows["test"]
    assert len(test) == sp.stats["users_with_a_new_item"] - sp.stats["users_whose_first_item_is_new"]
    for u, hist, tgt in rows_as_tuples(s, test, h=10_000):
        seq = s.seq(u).tolist()
        first_new = next(j for j, i in enumerate(seq) if new[i])
        assert tgt == seq[first_new] and hist == seq[:first_new] and len(hist) >= 1
    # the new items are a seeded choice
    assert (cold_split(s, 0.1, seed=7).allowed_train == sp.allowed_train).all()
    assert not (cold_split(s, 0.1, seed=8).allowed_train == sp.allowed_train).all()


def test_cold_fraction_is_validated():
    with pytest.raises(ValueError, match="new_item_fraction"):
        cold_split(make_seqs(), 1.5, seed=0)


def test_caps_are_seeded_subsets():
    s = make_seqs(n_users=100)
    sp = warm_split(s)
    t = cap_users(sp.rows["test"], 10, seed=3, salt=1)
    assert len(np.unique(t.user)) == 10
    assert (cap_users(sp.rows["test"], 10, seed=3, salt=1).user == t.user).all()
    tr = cap_rows(sp.rows["train"], 50, seed=3, salt=2)
    assert len(tr) == 50 and (np.diff(tr.user) >= 0).all()
    assert cap_rows(sp.rows["train"], None, 3, 2) is sp.rows["train"]


def check_candidates(s, rows, allowed=None):
    cand = rows.candidates
    assert cand.shape == (len(rows), C)
    for r in range(len(rows)):
        c = cand[r]
        assert len(set(c.tolist())) == C
        assert rows.targets[r] in c
        touched = set(s.seq(int(rows.user[r])).tolist())
        negs = [i for i in c.tolist() if i != rows.targets[r]]
        assert not touched.intersection(negs)
        if allowed is not None:
            assert allowed[negs].all()


def test_candidates_invariants_and_determinism():
    s = make_seqs(n_users=80, n_items=150, max_len=100, seed=2)  # some users touch 2/3 of items
    sp = warm_split(s)
    rows = [sp.rows["train"], sp.rows["valid"], sp.rows["test"]]
    attach_candidates(s, rows, C, seed=5)
    for r in rows:
        check_candidates(s, r)
    # the target's position is spread over the list (shuffled)
    assert len(set(np.argmax(sp.rows["train"].candidates == sp.rows["train"].targets[:, None],
                             axis=1).tolist())) > 20
    # same seed -> same candidates, independent of which other users are kept
    test_all = sp.rows["test"].candidates.copy()
    few = cap_users(warm_split(s).rows["test"], 7, seed=1, salt=0)
    attach_candidates(s, [few], C, seed=5)
    for r in range(len(few)):
        assert (few.candidates[r] == test_all[few.user[r]]).all()
    attach_candidates(s, [few], C, seed=6)
    assert not all((few.candidates[r] == test_all[few.user[r]]).all() for r in range(len(few)))


def test_cold_candidates_keep_new_items_out_of_train_and_valid():
    s = make_seqs(n_users=100, seed=4)
    sp = cold_split(s, 0.2, seed=1)
    allowed = {"train": sp.allowed_train, "valid": sp.allowed_train, "test": None}
    rows = [sp.rows["train"], sp.rows["valid"], sp.rows["test"]]
    attach_candidates(s, rows, C, seed=0, allowed=allowed)
    check_candidates(s, sp.rows["train"], sp.allowed_train)
    check_candidates(s, sp.rows["valid"], sp.allowed_train)
    check_candidates(s, sp.rows["test"])
    assert (~sp.allowed_train[sp.rows["test"].candidates]).sum() > len(sp.rows["test"])


def test_popularity_negatives_favour_popular_items():
    s = make_seqs(n_users=200, n_items=300, seed=3)
    sp = warm_split(s)
    w = np.ones(s.num_items)
    w[:30] = 50.0  # thirty very popular items
    attach_candidates(s, [sp.rows["train"]], C, seed=0, weights=w)
    popular = (sp.rows["train"].candidates < 30).mean()
    attach_candidates(s, [sp.rows["train"]], C, seed=0)
    uniform = (sp.rows["train"].candidates < 30).mean()
    assert popular > 3 * uniform
    check_candidates(s, sp.rows["train"])
    pw = popularity_weights(np.array([0, 0, 2]), 4)
    assert pw.tolist() == [3.0, 1.0, 2.0, 1.0]


def test_too_few_untouched_items_is_a_clear_error():
    s = make_seqs(n_users=10, n_items=40, min_len=20, max_len=20)
    sp = warm_split(s)
    with pytest.raises(ValueError, match="num_candidates"):
        attach_candidates(s, [sp.rows["test"]], C, seed=0)


def _table(users, items, titles):
    df = pd.DataFrame({"user": users, "item": items, "time": np.arange(len(users), dtype=float)})
    return SourceTable(df, titles)


def test_general_pool_removes_overlap_and_namespaces():
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 80
    users, items = [], []
    for u in range(n_users):
        for i in rng.choice(n_items, size=8, replace=False):
            users.append(f"U{u}")
            items.append(f"g{i}")
    titles = {f"g{i}": f"Game {i}" for i in range(n_items)}
    target_titles = {"game 0", "game 1"}
    target_users = {"U0", "U1"}
    pool = build_general_pool({"games": ({"name": "games", "user_space": "amazon2014", "user_subset": None},
                                         _table(users, items, titles))},
                              target_titles, target_users, "amazon2014", ["items", "users"],
                              min_core=2, num_candidates=C, seed=0)
    (seqs, split), = pool.parts
    assert "U0" not in seqs.users and "U1" not in seqs.users
    assert "g0" not in seqs.items and "g1" not in seqs.items
    assert pool.stats["games"]["overlap_items_removed"] == 2
    assert set(split.rows) == {"train", "valid"}
    # a private user space: the same ids are different people, nothing is removed
    pool2 = build_general_pool({"games": ({"name": "games", "user_space": "games", "user_subset": None},
                                          _table(users, items, titles))},
                               set(), target_users, "amazon2014", ["items", "users"],
                               min_core=2, num_candidates=C, seed=0)
    assert "U0" in pool2.parts[0][0].users
    with pytest.raises(ValueError, match="general pool is empty"):
        build_general_pool({"games": ({"name": "games", "user_space": None, "user_subset": None},
                                     _table(users, items, titles))},
                           {f"game {i}" for i in range(n_items)}, set(), None, ["items"],
                           min_core=2, num_candidates=C, seed=0)
    with pytest.raises(ValueError, match="remove_overlap"):
        build_general_pool({}, set(), set(), None, ["titles"], 2, C, 0)

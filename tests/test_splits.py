"""Warm/cold splits, caps, candidate sampling and the general pool on synthetic sequences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reccocktail.data.candidates import attach_candidates, popularity_weights
from reccocktail.data.filtering import Sequences
from reccocktail.data.general import build_general_pool, check_no_new_items
from reccocktail.data.readers import SourceTable
from reccocktail.data.splits import (
    candidate_pools,
    cap_rows,
    cap_users,
    choose_new_items,
    choose_valid_new_items,
    cold_split,
    warm_split,
)

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
    assert sp.new_test.sum() == 20 and sp.new_valid.sum() == 10  # 0.05 of the items
    assert not (sp.new_test & sp.new_valid).any() and (new == sp.new_test | sp.new_valid).all()
    for _u, hist, tgt in rows_as_tuples(s, sp.rows["train"]):
        assert not new[tgt] and not new[hist].any()
    assert not new[sp.train_flat].any()
    test = sp.rows["test"]
    assert len(test) == sp.stats["users_with_a_new_item"] - sp.stats["users_whose_first_item_is_new"]
    for u, hist, tgt in rows_as_tuples(s, test, h=10_000):
        seq = s.seq(u).tolist()
        first_new = next(j for j, i in enumerate(seq) if sp.new_test[i])
        assert tgt == seq[first_new] and len(hist) >= 1
        assert hist == [i for i in seq[:first_new] if not new[i]]  # validation-new ones dropped
    # the new items are a seeded choice
    assert (cold_split(s, 0.1, seed=7).allowed_train == sp.allowed_train).all()
    assert not (cold_split(s, 0.1, seed=8).allowed_train == sp.allowed_train).all()


def _planted(train_part):
    """`a b N c V d e` (N test-new, V validation-new) and `a V b N c`, in a catalogue whose new
    items are the seeded choice of `cold_split`."""
    n_items, seed = 200, 3
    new_test = choose_new_items(n_items, 0.1, seed)
    new_valid = choose_valid_new_items(new_test, 0.05, seed)
    warm = np.flatnonzero(~(new_test | new_valid))
    a, b, c, d, e = warm[:5].tolist()
    N, V = int(np.flatnonzero(new_test)[0]), int(np.flatnonzero(new_valid)[0])
    rows = [[a, b, N, c, V, d, e], [a, V, b, N, c]]
    rest = make_seqs(n_users=40, n_items=n_items, seed=9)
    seqs = [*rows, *[rest.seq(u).tolist() for u in range(rest.num_users)]]
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in seqs], out=off[1:])
    s = Sequences("toy", [f"u{u}" for u in range(len(seqs))], rest.items, rest.titles, off,
                  np.concatenate(seqs).astype(np.int64))
    sp = cold_split(s, 0.1, seed, train_part=train_part)
    assert (sp.new_test == new_test).all() and (sp.new_valid == new_valid).all()
    return sp, (a, b, c, d, e, N, V)


def _sample(rows, user):
    r = np.flatnonzero(rows.user == user)
    return None if not len(r) else (rows.history(int(r[0]), 100).tolist(), int(rows.targets[r[0]]))


def test_cold_training_part_ends_before_the_test_event():
    sp, (a, b, c, d, e, N, V) = _planted("before_test")
    assert sp.stats["cold_train_part"] == "before_test"
    part = lambda u: sp.train_flat[sp.train_offsets[u]:sp.train_offsets[u + 1]].tolist()  # noqa: E731
    tr = sp.rows["train"]
    # user 0, `a b N c V d e`: test `a b -> N`; trains on `a b` only; validation after the test
    assert _sample(sp.rows["test"], 0) == ([a, b], N)
    assert part(0) == [a, b] and tr.targets[tr.user == 0].tolist() == [b]
    assert _sample(sp.rows["valid"], 0) == ([a, b, c], V)
    # user 1, `a V b N c`: V comes before the training part ends, so it is no validation sample
    assert _sample(sp.rows["test"], 1) == ([a, b], N) and part(1) == [a, b]
    assert _sample(sp.rows["valid"], 1) is None
    # every user: the training part is the non-new items before the test event
    for r in range(len(sp.rows["test"])):
        u = int(sp.rows["test"].user[r])
        assert part(u) == sp.rows["test"].history(r, 10_000).tolist()


def test_cold_train_part_all_non_new_restores_the_old_rule():
    sp, (a, b, c, d, e, N, V) = _planted("all_non_new")
    part = lambda u: sp.train_flat[sp.train_offsets[u]:sp.train_offsets[u + 1]].tolist()  # noqa: E731
    assert _sample(sp.rows["test"], 0) == ([a, b], N)
    assert part(0) == [a, b, c, d, e]              # also what came after the test event
    assert sp.rows["train"].targets[sp.rows["train"].user == 0].tolist() == [b, c, d, e]
    assert _sample(sp.rows["valid"], 0) == ([a, b, c], V)
    assert _sample(sp.rows["valid"], 1) == ([a], V)   # the first one, anywhere
    with pytest.raises(ValueError, match="scenario.cold_train_part"):
        cold_split(make_seqs(), 0.1, seed=0, train_part="everything")


def test_cold_fraction_is_validated():
    with pytest.raises(ValueError, match="new_item_fraction"):
        cold_split(make_seqs(), 1.5, seed=0)
    with pytest.raises(ValueError, match="valid_new_item_fraction"):
        cold_split(make_seqs(), 0.1, seed=0, valid_new_item_fraction=0.0)


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


@pytest.mark.parametrize("cold_negatives", ["mixed", "new"])
@pytest.mark.parametrize("train_part", ["before_test", "all_non_new"])
def test_cold_validation_split_shares_no_item_with_test_new_items_or_training(cold_negatives,
                                                                             train_part):
    s = make_seqs(n_users=150, n_items=600, seed=4)
    sp = cold_split(s, 0.1, seed=1, valid_new_item_fraction=0.1, train_part=train_part)
    pools = candidate_pools(sp, cold_negatives)
    rows = [sp.rows["train"], sp.rows["valid"], sp.rows["test"]]
    attach_candidates(s, rows, C, seed=0, allowed=pools)
    for name in ("train", "valid", "test"):
        check_candidates(s, sp.rows[name], pools[name])
    valid, test, train = sp.rows["valid"], sp.rows["test"], sp.rows["train"]
    assert len(valid) > 20
    assert sp.new_valid[valid.targets].all()
    # nothing of the validation split is a test-new item; nothing of the test a validation-new
    assert not sp.new_test[valid.candidates].any()
    assert not any(sp.new_test[h].any() for _, h, _ in rows_as_tuples(s, valid))
    assert not sp.new_valid[test.candidates].any()
    assert not any(sp.new_valid[h].any() for _, h, _ in rows_as_tuples(s, test))
    # no validation or test target is in any training sequence, prompt or candidate list
    new = sp.new_test | sp.new_valid
    assert not new[sp.train_flat].any() and not new[train.candidates].any()
    assert not any(new[h].any() for _, h, _ in rows_as_tuples(s, train))
    if cold_negatives == "new":
        assert sp.new_valid[valid.candidates].all() and sp.new_test[test.candidates].all()
    else:  # mostly warm negatives, as in the test
        assert (~new[valid.candidates]).mean() > 0.7


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


def test_general_pool_drops_new_items_whatever_remove_overlap_says():
    rng = np.random.default_rng(1)
    users, items = [], []
    for u in range(60):
        for i in rng.choice(80, size=8, replace=False):
            users.append(f"U{u}")
            items.append(f"g{i}")
    titles = {f"g{i}": f"Game {i}" for i in range(80)}
    titles["g5"] = "GAME  5!"  # the same normalised title as the target's new item "Game 5"
    source = {"games": ({"name": "games", "user_space": None, "user_subset": None},
                        _table(users, items, titles))}
    new_titles = {"game 3", "game 5"}
    pool = build_general_pool(source, set(), set(), None, ["users"], min_core=2,
                              num_candidates=C, seed=0, new_titles=new_titles)
    (seqs, _), = pool.parts
    assert "g3" not in seqs.items and "g5" not in seqs.items and "g4" in seqs.items
    assert pool.stats["games"]["new_items_removed"] == 2
    assert pool.stats["games"]["interactions_with_new_items_removed"] == sum(
        i in ("g3", "g5") for i in items)
    check_no_new_items(pool, new_titles)
    # the data stage's check: a pool built without the drop holds them, and fails naming them
    leaky = build_general_pool(source, set(), set(), None, ["users"], min_core=2,
                               num_candidates=C, seed=0)
    with pytest.raises(ValueError, match="general source games: 2 item.*new item"):
        check_no_new_items(leaky, new_titles)

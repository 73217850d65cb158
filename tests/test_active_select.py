"""Selection (#15 item 2): ranking by rho and by force spread against scores computed
independently (each member called on its own through SchNetPack's converter), stratified
quotas, the random fraction, thresholds, every bad-input error before any scoring, output
metadata and source indices that lead back to the source frames, and atomic writes."""

import json
import os

import numpy as np
import pytest
from ase import Atoms
from ase.db import connect

import spk_meta.active.selection as select_module
from spk_meta.active import MANIFEST, SelectionError, load_ensemble, select
from spk_meta.active.ranking import proportional_quotas, random_from_rest, rank, top_k
from spk_meta.cli.main import main
from spk_meta.data.store import LabelSet, PackedStore, StoreWriter
from spk_meta.experiment.record import sha256
from test_active_ensemble import ensemble_dir, frames, hand_committee, member_files  # noqa: F401 (fixtures)

#: pool layout: ethanol (9 atoms, H C O), a CH3 cut of it (4 atoms, H C), an OH cut (2, H O)
GROUPS = {"ethanol": (slice(0, 9), 20), "ch3": ([0, 3, 4, 5], 10), "oh": ([2, 8], 10)}


def write_pool(path, source_frames, extra=None, nan_every=None):
    """A store of 40 frames: 20 ethanol, 10 CH3 and 10 OH cuts of other ethanol frames,
    jittered; label sets "dft" (energy, forces) and "cc" (energy only, NaN every
    ``nan_every``-th frame). ``extra``: more Atoms appended."""
    rng = np.random.default_rng(0)
    atoms = []
    k = 0
    for name, (cut, count) in GROUPS.items():
        for _ in range(count):
            a = source_frames[k % len(source_frames)][cut]
            a.positions += rng.normal(scale=0.15, size=a.positions.shape)
            atoms.append(a)
            k += 1
    atoms += list(extra or [])
    sets = [LabelSet("dft", "wB97X/6-31g*"), LabelSet("cc", "CCSD(T)/CBS", has_forces=False, forces_unit=None)]
    with StoreWriter(path, sets) as w:
        for i, a in enumerate(atoms):
            cc = np.nan if nan_every and i % nan_every == 0 else -100.0 - i
            w.add_frame(a.numbers, a.positions, {"dft": (-10.0 * i, rng.normal(size=(len(a), 3))), "cc": (cc, None)},
                        source_index=1000 + i)
    return path, atoms


@pytest.fixture(scope="module")
def pool(tmp_path_factory, ethanol):
    import ase.io

    source = ase.io.read(ethanol["pretrain_wb97x_631gs_300K"].extxyz, ":40")
    return write_pool(tmp_path_factory.mktemp("pool") / "pool.spkstore", source)


@pytest.fixture(scope="module")
def hand(pool, member_files):  # noqa: F811
    return hand_committee(member_files, pool[1])


@pytest.fixture(scope="module")
def ensemble(ensemble_dir):  # noqa: F811
    return load_ensemble(ensemble_dir)


def group_of(i):
    return "ethanol" if i < 20 else "ch3" if i < 30 else "oh"


def expected_top(scores, k, candidates=None):
    """The k best by numpy argsort, checked to be clear of ties at the cut."""
    candidates = np.arange(len(scores)) if candidates is None else np.asarray(candidates)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if k < len(order):
        # the two paths agree to ~4e-8 (float32 models); a gap far above that decides the cut
        assert scores[order[k - 1]] - scores[order[k]] > 1e-6, "a near-tie at the cut: the test would be fragile"
    return set(order[:k].tolist())


# -- ranking and criteria ----------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["rho", "force_spread"])
def test_selection_ranks_by_the_criterion(pool, hand, ensemble, tmp_path, criterion):
    result = select(ensemble, pool[0], tmp_path / "sel.spkstore", n=6, criterion=criterion, batch_size=7)
    np.testing.assert_allclose(result.scores, hand[criterion], rtol=1e-5, atol=1e-6)
    assert set(result.source_index.tolist()) == expected_top(hand[criterion], 6)
    assert result.metadata["criterion"] == criterion and result.metadata["n_committee"] == 6


def test_threshold_takes_every_frame_above_it(pool, hand, ensemble, tmp_path):
    cut = float(np.sort(hand["rho"])[-9] + np.sort(hand["rho"])[-8]) / 2  # 8 frames above
    result = select(ensemble, pool[0], tmp_path / "t.spkstore", threshold=cut)
    assert result.source_index.tolist() == np.flatnonzero(hand["rho"] > cut).tolist()
    with pytest.raises(SelectionError, match="no frame .* scores above --threshold .*nothing written"):
        select(ensemble, pool[0], tmp_path / "none.spkstore", threshold=1e6)
    assert not (tmp_path / "none.spkstore").exists()


@pytest.mark.parametrize("stratify", ["elements", "size"])
def test_stratification_shares_frames_by_the_pool(pool, hand, ensemble, tmp_path, stratify):
    """Groups of 20/10/10 frames: 8 frames go 4/2/2, each the group's top scores (without
    stratification the small fragments, with few atoms, would take what they score)."""
    result = select(ensemble, pool[0], tmp_path / "s.spkstore", n=8, stratify=stratify)
    chosen = result.source_index.tolist()
    assert [sum(group_of(i) == g for i in chosen) for g in GROUPS] == [4, 2, 2]
    for g, (lo, hi), k in (("ethanol", (0, 20), 4), ("ch3", (20, 30), 2), ("oh", (30, 40), 2)):
        assert {i for i in chosen if group_of(i) == g} == expected_top(hand["rho"], k, np.arange(lo, hi))
    assert result.metadata["stratify"] == stratify


def test_random_fraction_is_drawn_from_the_rest(pool, hand, ensemble, tmp_path):
    runs = [select(ensemble, pool[0], tmp_path / f"r{k}.spkstore", n=10, random_fraction=0.3, seed=s)
            for k, s in enumerate((1, 1, 2))]
    r = runs[0]
    assert (len(r.ranking.committee), len(r.ranking.random)) == (7, 3)
    assert set(r.ranking.committee.tolist()) == expected_top(hand["rho"], 7)
    assert not set(r.ranking.random.tolist()) & set(r.ranking.committee.tolist())
    assert r.metadata["random_source_index"] == r.ranking.random.tolist()
    assert r.source_index.tolist() == sorted(r.ranking.committee.tolist() + r.ranking.random.tolist())
    assert runs[1].ranking.random.tolist() == r.ranking.random.tolist()  # same seed, same draw
    assert runs[2].ranking.random.tolist() != r.ranking.random.tolist()
    # threshold: random frames make up the fraction of the output
    cut = float(np.sort(hand["rho"])[-7] + np.sort(hand["rho"])[-6]) / 2  # 6 frames above
    t = select(ensemble, pool[0], tmp_path / "rt.spkstore", threshold=cut, random_fraction=0.25)
    assert (len(t.ranking.committee), len(t.ranking.random)) == (6, 2)


def test_top_k_and_quotas_by_hand():
    scores = np.array([0.5, 0.9, np.nan, 0.9, 0.1, 0.7])
    assert top_k(scores, 3).tolist() == [1, 3, 5]  # tie broken by position
    assert top_k(scores, 6).tolist() == [1, 3, 5, 0, 4, 2]  # NaN last
    assert top_k(scores, 2, np.array([0, 4, 5])).tolist() == [5, 0]
    assert proportional_quotas(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert proportional_quotas(np.array([7, 3]), 5).tolist() == [4, 1]  # remainders .5/.5: larger group
    assert proportional_quotas(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]
    assert proportional_quotas(np.array([2, 5]), 7).tolist() == [2, 5]
    q = proportional_quotas(np.array([997, 2, 1]), 100)
    assert q.sum() == 100 and q.tolist() == [100, 0, 0]


def test_random_from_rest_equals_drawing_from_the_complement():
    taken = np.array([0, 3, 4, 9, 15])
    for seed in range(5):
        got = random_from_rest(20, taken, 6, np.random.default_rng(seed))
        ranks = np.sort(np.random.default_rng(seed).choice(15, size=6, replace=False))
        assert got.tolist() == np.setdiff1d(np.arange(20), taken)[ranks].tolist()
    everything = random_from_rest(20, taken, 15, np.random.default_rng(0))
    assert everything.tolist() == np.setdiff1d(np.arange(20), taken).tolist()
    with pytest.raises(ValueError):
        rank(np.zeros(4), n=2, threshold=0.1)


# -- labels, metadata, databases ----------------------------------------------------------------


def test_output_store_leads_back_to_the_source_frames(pool, ensemble, ensemble_dir, tmp_path):  # noqa: F811
    result = select(ensemble, pool[0], tmp_path / "sel.spkstore", n=5, seed=3)
    src, out = PackedStore(pool[0]), PackedStore(tmp_path / "sel.spkstore")
    assert len(out) == 5 and list(out.label_sets) == ["dft", "cc"]
    assert out.source_index.tolist() == result.source_index.tolist()
    for k, i in enumerate(out.source_index):
        a, b = out.frame(k, "dft"), src.frame(int(i), "dft")
        for key in ("numbers", "positions", "forces", "energy"):
            np.testing.assert_array_equal(a[key], b[key])
        assert out.frame(k, "cc")["energy"] == src.frame(int(i), "cc")["energy"]
    record = json.loads((tmp_path / "sel.spkstore" / "store.json").read_text())["source"]["selection"]
    assert record["source"] == str(pool[0]) and record["criterion"] == "rho" and record["n"] == 5
    assert record["seed"] == 3 and record["n_pool"] == 40 and record["threshold"] is None
    assert record["ensemble"]["sha256"] == sha256(ensemble_dir / MANIFEST)


def test_labels_restrict_the_pool_and_the_output(ensemble, tmp_path, frames):  # noqa: F811
    path, atoms = write_pool(tmp_path / "gaps.spkstore", frames, nan_every=4)  # 10 of 40 unlabelled in "cc"
    result = select(ensemble, path, tmp_path / "cc.spkstore", n=30, labels="cc")
    out = PackedStore(tmp_path / "cc.spkstore")
    assert list(out.label_sets) == ["cc"] and result.n_pool == 30
    assert result.source_index.tolist() == [i for i in range(40) if i % 4]
    with pytest.raises(SelectionError, match=r"--n 31 is larger than the pool: 30 frames in .* labelled in 'cc'"):
        select(ensemble, path, tmp_path / "x.spkstore", n=31, labels="cc")
    with pytest.raises(SelectionError, match="no label set 'ccsd'; it has: dft, cc"):
        select(ensemble, path, tmp_path / "x.spkstore", n=3, labels="ccsd")


def test_database_pool_gives_a_database(ensemble, tiny_db, tmp_path):
    result = select(ensemble, tiny_db, tmp_path / "sel.db", n=4, random_fraction=0.5)
    with connect(tiny_db) as src, connect(tmp_path / "sel.db") as out:
        md = out.metadata
        rows = list(out.select())
        assert len(rows) == 4 and md["n_frames"] == 4
        assert md["level_of_theory"] == src.metadata["level_of_theory"]
        assert md["selection"]["source_rows"] == result.source_index.tolist()
        assert md["selection"]["n_random"] == 2
        for row, i in zip(rows, md["selection"]["source_rows"]):
            ref = src.get(id=i + 1)
            np.testing.assert_array_equal(row.positions, ref.positions)
            np.testing.assert_array_equal(row.data["forces"], ref.data["forces"])
            assert row.data["energy"] == pytest.approx(ref.data["energy"])


# -- bad input: refused before any frame is scored ------------------------------------------------


@pytest.fixture
def no_scoring(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("scored although the input was bad")

    monkeypatch.setattr(select_module, "score_pool", refuse)


def test_bad_input_is_refused_before_scoring(pool, ensemble, tiny_db, tmp_path, frames, no_scoring):  # noqa: F811
    store = pool[0]
    cases = [
        (dict(n=41), r"--n 41 is larger than the pool: 40 frames in"),
        (dict(n=0), "--n must be >= 1"),
        (dict(n=3, threshold=0.1), "exactly one of --n and --threshold"),
        (dict(threshold=0.1, stratify="size"), "use it with --n, not --threshold"),
        (dict(n=3, random_fraction=1.5), "--random-fraction must lie in"),
        (dict(n=3, criterion="energy"), "--criterion 'energy'"),
        (dict(n=3, batch_size=0), "--batch-size must be >= 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SelectionError, match=message):
            select(ensemble, store, tmp_path / "out.spkstore", **kwargs)
    with pytest.raises(SelectionError, match="the pool is a packed store"):
        select(ensemble, store, tmp_path / "out.db", n=3)
    with pytest.raises(SelectionError, match="the pool is an ASE database, so the selection is one: name it"):
        select(ensemble, tiny_db, tmp_path / "out.spkstore", n=3)
    with pytest.raises(SelectionError, match="--labels is for packed stores"):
        select(ensemble, tiny_db, tmp_path / "out.db", n=3, labels="labels")
    with pytest.raises(SelectionError, match="no such store or database"):
        select(ensemble, tmp_path / "nope.db", tmp_path / "out.db", n=3)
    sulfur = Atoms("SH2", positions=[[0, 0, 0], [1.3, 0, 0], [0, 1.3, 0]])
    bad, _ = write_pool(tmp_path / "s.spkstore", frames, extra=[sulfur])
    no_networks = r"the pool holds S, for which the ensemble has no networks \(it has H C N O\)"
    with pytest.raises(SelectionError, match=no_networks):
        select(ensemble, bad, tmp_path / "out.spkstore", n=3)
    (tmp_path / "taken.spkstore").mkdir()
    with pytest.raises(SelectionError, match="already exists \\(pass --overwrite"):
        select(ensemble, store, tmp_path / "taken.spkstore", n=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.spkstore", "taken.spkstore"]


def test_overwrite_replaces_an_existing_selection(pool, ensemble, tmp_path):
    select(ensemble, pool[0], tmp_path / "sel.spkstore", n=3)
    select(ensemble, pool[0], tmp_path / "sel.spkstore", n=5, overwrite=True)
    assert len(PackedStore(tmp_path / "sel.spkstore")) == 5


# -- atomic writes ---------------------------------------------------------------------------------


def _fail_after(monkeypatch, cls, method, calls):
    original = getattr(cls, method)
    count = {"n": 0}

    def failing(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise RuntimeError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, failing)


def test_a_failure_while_writing_leaves_no_output(pool, ensemble, tiny_db, tmp_path, monkeypatch):
    from spk_meta.data.writer import DatabaseWriter

    out = tmp_path / "out"
    out.mkdir()
    _fail_after(monkeypatch, StoreWriter, "add_frame", 2)
    with pytest.raises(RuntimeError, match="disk full"):
        select(ensemble, pool[0], out / "sel.spkstore", n=5)
    _fail_after(monkeypatch, DatabaseWriter, "add", 2)
    with pytest.raises(RuntimeError, match="disk full"):
        select(ensemble, tiny_db, out / "sel.db", n=5)
    assert os.listdir(out) == []  # neither the outputs nor their temporaries


# -- the command -----------------------------------------------------------------------------------


def test_cli_select(pool, ensemble_dir, tmp_path, capsys):  # noqa: F811
    args = ["select", str(ensemble_dir), "--from", str(pool[0]), "--out", str(tmp_path / "sel.spkstore")]
    assert main([*args, "--n", "4", "--stratify", "elements", "--random-fraction", "0.25"]) == 0
    assert "wrote 4 of 40 frames" in capsys.readouterr().out
    assert main([*args, "--n", "4"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--n", "400", "--overwrite"]) == 2
    assert "--n 400 is larger than the pool" in capsys.readouterr().err
    assert main(["select", str(tmp_path), "--from", str(pool[0]), "--n", "4", "--out", str(tmp_path / "x")]) == 2
    assert "no ensemble manifest" in capsys.readouterr().err

"""`spkmeta experiment`: tables from known numbers, k chosen on validation only, and a
small end-to-end comparison on the embedded data that resumes instead of retraining."""

import numpy as np
import pytest

from conftest import run_cli
from spk_meta.experiment import FinetuneRun, choose_k, expand, markdown, rows_from_runs, summarise
from spk_meta.experiment.plan import PRESETS
from spk_meta.experiment.results import error_vs_k_figure, learning_curves_figure, plot


def fake_eval(val, test):
    return {"val": {"forces_rmse": val}, "test": {str(t): {"energy_rmse": test, "energy_mae": test,
                                                          "forces_rmse": test, "forces_mae": test}
                                                  for t in (300, 600, 900)}}


def test_k_is_chosen_on_validation_never_on_test():
    evaluated = []
    for seed in (0, 1):
        # k=10 is better on validation, k=30 on the test frames: k=10 must be chosen
        evaluated.append((FinetuneRun("ani", 10, 25, seed), fake_eval(0.10, 0.50)))
        evaluated.append((FinetuneRun("ani", 30, 25, seed), fake_eval(0.20, 0.30)))
        evaluated.append((FinetuneRun("ani", 1, 25, seed), fake_eval(0.05, 0.40)))  # k=1 is not Reptile
        evaluated.append((FinetuneRun("ani", None, 25, seed), fake_eval(0.9, 0.9 + seed)))
    rows = rows_from_runs(evaluated)
    assert choose_k(rows) == {("ani", 25): 10}
    summary = summarise(rows)
    none300 = next(s for s in summary if s["k"] is None and s["T"] == 300)
    assert none300["forces_rmse"] == pytest.approx(1.4) and none300["forces_rmse_std"] == pytest.approx(0.5)
    assert [s["selected"] for s in summary if s["k"] == 10] == [True] * 3
    table = markdown(summary)
    assert "| ani | Reptile k=10 ← k chosen on validation | 25 | 300 | 0.5000 ± 0.0000" in table
    assert "| ani | none | 25 | 300 | 1.4000 ± 0.5000" in table


def _evaluated(ks, seeds, n=(25,)):
    """Fake evaluations whose errors grow with k, so every variant has a distinct curve."""
    return [(FinetuneRun("ani", k, nn, seed), fake_eval(0.1 + (k or 0) / 1000, 0.2 + (k or 0) / 1000 + seed / 100))
            for k in ks for nn in n for seed in seeds]


def test_legends_order_k_numerically(tmp_path):
    import matplotlib.pyplot as plt

    summary = summarise(rows_from_runs(_evaluated([300, 10, None, 100, 1, 30], seeds=(0, 1), n=(25, 100))))
    fig = learning_curves_figure(summary)
    labels = fig.axes[0].get_legend().get_texts()
    assert [t.get_text() for t in labels] == ["none", "k=1 (joint)", "Reptile k=10", "Reptile k=30",
                                              "Reptile k=100", "Reptile k=300"]
    # each legend entry labels its own variant's line (the 300 K force RMSE at N = 25)
    for line, k in zip(fig.axes[0].get_legend_handles_labels()[0], [None, 1, 10, 30, 100, 300]):
        assert line[0].get_ydata()[0] == pytest.approx(0.2 + (k or 0) / 1000 + 0.005)
    plt.close(fig)
    fig = error_vs_k_figure(summary)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["300 K", "600 K", "900 K"]
    assert list(fig.axes[0].get_lines()[0].get_xdata()) == [1, 10, 30, 100, 300]
    plt.close(fig)
    paths = plot(summary, tmp_path)
    assert [p.name for p in paths] == ["learning_curves.png", "error_vs_k.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error_vs_k.png", "learning_curves.png"]  # no temp files


def test_table_with_one_seed_shows_no_spread():
    one = markdown(summarise(rows_from_runs(_evaluated([None, 1, 10], seeds=(0,)))))
    assert "±" not in one
    assert "| ani | Reptile k=10 ← k chosen on validation | 25 | 300 | 0.2100 | 0.2100 | 0.2100 | 0.2100 |" in one
    two = markdown(summarise(rows_from_runs(_evaluated([None, 1, 10], seeds=(0, 1)))))
    assert "| ani | none | 25 | 300 | 0.2050 ± 0.0050 |" in two


def test_presets_expand_to_every_combination():
    pre, ft = expand(PRESETS["full"])
    # joint, Reptile x 4 k, multi-head, FOMAML x 2 k, transfer
    variants = ["k1", "k10", "k30", "k100", "k300", "multihead", "fomaml_k3", "fomaml_k10", "transfer"]
    assert len(pre) == 2 * len(variants) * 3  # architectures x variants x seeds
    assert len(ft) == 2 * (1 + len(variants)) * 3 * 3  # x (none + variants) x N x seeds
    assert [v.tag for v in PRESETS["full"].variants()] == ["none", *variants]
    assert len({r.name for r in pre}) == len(pre) and len({r.name for r in ft}) == len(ft)
    quick = [v.tag for v in PRESETS["quick"].variants()]
    assert quick == ["none", "k1", "k10", "multihead", "fomaml_k3", "transfer"]


def test_methods_are_validated_and_old_spellings_still_mean_the_same():
    from spk_meta.experiment import Preset, PretrainRun, Variant

    assert FinetuneRun("ani", None, 25, 0).name == "ft_ani_none_n25_s0"
    assert FinetuneRun("ani", 1, 25, 0).variant == Variant("joint")
    assert PretrainRun("ani", 10, 0).name == "pre_ani_k10_s0"
    assert PretrainRun("ani", Variant("fomaml", 3), 1).name == "pre_ani_fomaml_k3_s1"
    with pytest.raises(ValueError, match=r"unknown method\(s\) maml; choose from none, joint"):
        Preset(methods=("none", "maml"))
    with pytest.raises(ValueError, match="'multihead' has no k"):
        Variant("multihead", 5)
    with pytest.raises(ValueError, match="no pre-training run"):
        PretrainRun("ani", None, 0)
    # a k of 1 among Reptile's is the joint method, never a Reptile run with k = 1
    assert [v.tag for v in Preset(methods=("reptile",), ks=(1, 30, 10)).variants()] == ["k10", "k30"]


def test_every_method_and_its_k_choice_in_the_table():
    """FOMAML's k is chosen on validation like Reptile's, separately; methods without k
    are never marked; rows are in method order."""
    from spk_meta.experiment import Variant

    evaluated = []
    for seed in (0, 1):
        for v, val, test in [(Variant("none"), 0.9, 0.9), (Variant("joint"), 0.5, 0.5),
                             (Variant("reptile", 10), 0.3, 0.4), (Variant("reptile", 30), 0.4, 0.3),
                             (Variant("multihead"), 0.2, 0.2), (Variant("fomaml", 3), 0.6, 0.6),
                             (Variant("fomaml", 10), 0.7, 0.55), (Variant("transfer"), 0.8, 0.8)]:
            evaluated.append((FinetuneRun("ani", v, 25, seed), fake_eval(val, test)))
    rows = rows_from_runs(evaluated)
    from spk_meta.experiment import choose_ks

    assert choose_ks(rows) == {("ani", 25, "reptile"): 10, ("ani", 25, "fomaml"): 3}
    summary = [s for s in summarise(rows) if s["T"] == 300]
    assert [(s["pretraining"], s["selected"]) for s in summary] == [
        ("none", False), ("k=1 (joint)", False), ("Reptile k=10", True), ("Reptile k=30", False),
        ("multi-head", False), ("FOMAML k=3", True), ("FOMAML k=10", False), ("transfer (one dataset)", False)]
    assert "| ani | FOMAML k=3 ← k chosen on validation | 25 | 300 | 0.6000 ± 0.0000" in markdown(summary)


@pytest.mark.slow
def test_small_comparison_end_to_end_and_resume(tmp_path, cache_root):
    args = ["spkmeta", "experiment", "--methods", "none,joint,reptile", "--k", "3", "--n", "10", "--seeds", "0", "--pretrain-epochs", "1",
            "--finetune-epochs", "2", "--out", str(tmp_path / "exp")]
    first = run_cli(args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "exp"
    for name in ("results.csv", "results_runs.csv", "results.md", "learning_curves.png", "error_vs_k.png"):
        assert (out / name).exists(), name
    table = (out / "results.md").read_text()
    assert table.count("| ani |") == 9  # none, k=1, k=3 at 300/600/900 K
    assert "Reptile k=3 ← k chosen on validation" in table and table in first.stdout + "\n"
    model = out / "runs" / "ft_ani_k3_n10_s0" / "best_model"
    stamp = model.stat().st_mtime
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0
    assert model.stat().st_mtime == stamp  # reused, not retrained
    assert "redoing" not in second.stdout and "resuming" not in second.stdout
    assert not any((out / "runs").glob("*/.*.tmp*"))
    assert (out / "results.md").read_text() == table
    assert np.all(np.isfinite(_table_numbers(table))) and len(_table_numbers(table)) == 9 * 4


def _table_numbers(table: str):
    """The error cells (4 per row, after model, pre-training, N, T) of a results table."""
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ani |")]
    return [float(cell.split("±")[0]) for row in rows for cell in row[4:8]]


@pytest.mark.slow
def test_organic_case_quick_preset_end_to_end(tmp_path, cache_root):
    """#13: `spkmeta experiment --case organic --preset quick`: every method, fine-tuned to
    ethylamine at MP2, errors per temperature and scores on the three MP2 scans."""
    args = ["spkmeta", "experiment", "--case", "organic", "--preset", "quick", "--out", str(tmp_path / "org")]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "org"
    table = (out / "results.md").read_text()
    methods = ["none", "k=1 (joint)", "Reptile k=10", "multi-head", "FOMAML k=3", "transfer (one dataset)"]
    for method in methods:
        assert table.count(f"| ani | {method}") == 3 + 3, method  # 3 temperatures + 3 scans
    numbers = _table_numbers(table.split("\n\n")[0])
    assert len(numbers) == 6 * 3 * 4 and np.all(np.isfinite(numbers))
    for scan in ("torsion_CCNH", "stretch_NH", "stretch_CH"):
        assert (out / f"scan_mp2_631gs_{scan}.png").read_bytes().startswith(b"\x89PNG")
    import csv

    scans = list(csv.DictReader((out / "results_scans_runs.csv").open()))
    assert len(scans) == 6 * 3
    assert all(float(r["aligned_rmse"]) > 0 for r in scans)
    assert all(r["plateau_error"] == "nan" for r in scans if "torsion" in r["scan"])


def test_scan_table_and_figures_from_evaluations(tmp_path):
    """Scan scores are averaged over seeds per variant; each scan gets one figure whose
    curves are the seed means, each shifted to zero mean, with the reference dashed, and
    only the k chosen on validation among Reptile's."""
    from types import SimpleNamespace

    from spk_meta.evaluate.scan_scores import SCAN_METRICS
    from spk_meta.experiment import Variant, write_results
    from spk_meta.experiment.results import SCAN_COLUMNS, scan_comparison_figure, choose_ks

    assert SCAN_COLUMNS == SCAN_METRICS
    x = np.linspace(0.8, 2.0, 7)
    ref = (1 - np.exp(-2 * (x - 1.0))) ** 2
    scan = SimpleNamespace(coordinate=x, reference=ref, kind="stretch", unit="Ang")
    evaluated = []
    for seed in (0, 1):
        for v, val, shift in [(Variant("none"), 0.9, 0.3), (Variant("reptile", 10), 0.1, 0.1),
                              (Variant("reptile", 30), 0.2, 0.2)]:
            ev = fake_eval(val, 0.5)
            e = ref + shift * x + seed  # a seed-dependent constant must not matter
            ev["scans"] = {"scan_x": {"aligned_rmse": shift + seed, "roughness_ratio": 1.0, "spurious_barriers": seed,
                                      "plateau_error": -shift, "energies": list(e)}}
            evaluated.append((FinetuneRun("ani", v, 25, seed), ev))
    rows = rows_from_runs(evaluated)
    paths = write_results(rows, tmp_path, evaluated=evaluated, scans={"scan_x": scan})
    table = paths["markdown"].read_text()
    assert "| ani | Reptile k=10 ← k chosen on validation | 25 | scan_x | 0.6000 ± 0.5000 | 1.00 ± 0.00 " \
           "| 0.50 ± 0.50 | -0.1000 ± 0.0000 |" in table
    assert paths["scan_x"].read_bytes().startswith(b"\x89PNG")
    fig = scan_comparison_figure(scan, "scan_x", evaluated, choose_ks(rows))
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"none", "Reptile k=10", "reference (MP2)"}
    assert lines["reference (MP2)"].get_linestyle() == "--"
    expected = ref + 0.1 * x
    np.testing.assert_allclose(lines["Reptile k=10"].get_ydata(), expected - expected.mean(), atol=1e-12)

"""Scan scores against hand-made curves (Morse, cosines, alternating noise), reading the
shipped labelled scans, the figure, and `spkmeta evaluate --scans` end to end."""

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from schnetpack.transform import AddOffsets, CastTo64

import spk_meta.datasets
from conftest import ani_potential
from spk_meta.cli.main import main as spkmeta
from spk_meta.evaluate.scan_scores import (
    BARRIER_TOLERANCE,
    SCAN_METRICS,
    LabelledScan,
    aligned_rmse,
    barrier_count,
    extra_barriers,
    plateau_error,
    read_scan,
    roughness_ratio,
    scan_figure,
    score_scan,
)

SHIPPED = Path(spk_meta.datasets.__file__).parent / "organic_multilevel"
SCANS = {"scan_mp2_631gs_torsion_CCNH": ("torsion", "deg", (0, 1, 2, 8), 37),
         "scan_mp2_631gs_stretch_NH": ("stretch", "Ang", (2, 8), 19),
         "scan_mp2_631gs_stretch_CH": ("stretch", "Ang", (0, 3), 19)}


def morse(r, d=4.0, a=2.0, r0=1.0):
    """Morse curve (eV), minimum -d at r0, 0 at infinity."""
    return d * (1 - np.exp(-a * (r - r0))) ** 2 - d


def curve_scan(x, reference, kind="stretch", unit="Ang") -> LabelledScan:
    """A LabelledScan of hand-made arrays (frames are unused by the scores)."""
    return LabelledScan("hand", kind, unit, (0, 1), np.asarray(x, float), np.asarray(reference, float), [])


R = np.round(np.arange(0.7, 6.0001, 0.1), 10)  # includes r0 = 1.0, so min E = -d on the grid
PHI = np.arange(0.0, 360.0001, 10.0)  # 0..360 deg: the last point repeats the first


# -- each score on hand-made curves ------------------------------------------------------------


def test_aligned_rmse_ignores_offsets_and_measures_the_shape():
    ref = morse(R)
    assert aligned_rmse(ref + 123.4, ref) == pytest.approx(0.0, abs=1e-12)
    wiggle = 0.01 * (-1.0) ** np.arange(R.size)  # even length: mean 0, RMS 0.01 eV
    assert R.size % 2 == 0
    assert aligned_rmse(ref - 7.0 + wiggle, ref) == pytest.approx(0.01, rel=1e-12)
    # a constant-plus-step difference: RMS of the centred step by hand
    step = np.where(R > 3.0, 0.2, 0.0)
    centred = step - step.mean()
    assert aligned_rmse(ref + step, ref) == pytest.approx(np.sqrt(np.mean(centred**2)))


def test_roughness_ratio_of_scaled_and_hand_computed_curves():
    ref = morse(R) + np.random.default_rng(1).normal(0, 0.02, R.size)
    # scaling by k scales every second difference by k; a straight line adds none
    assert roughness_ratio(2.5 * ref + 0.3 * R - 1.0, ref, R) == pytest.approx(2.5, rel=1e-10)
    # alternating +-e has second differences of +-4e: roughness 4e, so the ratio is 3e*4/(e*4)
    alt = (-1.0) ** np.arange(R.size)
    assert roughness_ratio(0.3 * R + 0.03 * alt, 0.01 * alt, R) == pytest.approx(3.0, rel=1e-10)
    line = np.arange(10.0)  # integers: second differences exactly 0
    assert roughness_ratio(line, 2 * line) == 1.0 and roughness_ratio(alt[:10], 2 * line) == float("inf")
    uneven = R.copy()
    uneven[5] += 0.01
    with pytest.raises(ValueError, match="not uniform"):
        roughness_ratio(ref, ref, uneven)


def test_spurious_barriers_on_a_stretch():
    ref = morse(R)
    bump = 0.3 * np.exp(-(((R - 2.0) / 0.1) ** 2))
    assert extra_barriers(ref, ref, "stretch", R) == 0
    assert extra_barriers(ref + bump, ref, "stretch", R) == 1
    two = ref + bump + 0.3 * np.exp(-(((R - 4.0) / 0.1) ** 2))
    assert extra_barriers(two, ref, "stretch", R) == 2
    # a barrier the reference has too is not the model's fault, nor is the model's lack of it
    assert extra_barriers(ref + bump, ref + bump, "stretch", R) == 0
    assert extra_barriers(ref, ref + bump, "stretch", R) == 0
    # a bump before the minimum (the repulsive wall) is not "past the minimum"
    wall = ref + 2.0 * (R == 0.8)  # a maximum on the repulsive wall (-1.0 eV > -1.3 eV at 0.7 Ang)
    assert wall[1] > wall[0] and extra_barriers(wall, ref, "stretch", R) == 0


def test_barrier_tolerance_ignores_rounding_sized_wiggles():
    """5 meV: a 2 meV zig-zag on the plateau (a few float32 steps of a ~-4000 eV total
    energy) is no barrier; a 20 meV one is one per zig."""
    assert BARRIER_TOLERANCE == pytest.approx(5e-3)
    plateau = morse(R, a=4.0)  # flat (within 1e-6 eV) from ~4 Ang on
    zig = (-1.0) ** np.arange(R.size) * (R > 4.0)
    assert extra_barriers(plateau + 0.001 * zig, plateau, "stretch", R) == 0
    n_zigs = int(np.sum((zig[1:-1] > 0) & (R[1:-1] > 4.0)))
    assert extra_barriers(plateau + 0.01 * zig, plateau, "stretch", R) == n_zigs


def test_spurious_barriers_on_a_periodic_torsion():
    ref = 0.1 * np.cos(np.radians(3 * PHI))  # maxima at 0 (= 360), 120, 240 deg
    assert barrier_count(ref[:-1], periodic=True) == 3  # the maximum on the seam counts once
    # rotated so the seam is at a minimum, and started elsewhere: still three
    assert barrier_count(0.1 * np.cos(np.radians(3 * PHI[:-1] + 180)), periodic=True) == 3
    assert barrier_count(np.roll(ref[:-1], 7), periodic=True) == 3
    assert extra_barriers(ref, ref, "torsion", PHI, "deg") == 0
    spiked = ref + 0.05 * (PHI == 180.0)  # splits the minimum at 180 deg in two: one barrier
    assert extra_barriers(spiked, ref, "torsion", PHI, "deg") == 1
    # a spike on the seam (0 and 360 are one point; the model spikes both)
    seam = 0.1 * np.cos(np.radians(3 * PHI + 180)) + 0.05 * ((PHI == 0) | (PHI == 360))
    assert extra_barriers(seam, seam - 0.05 * ((PHI == 0) | (PHI == 360)), "torsion", PHI, "deg") == 1
    # half a turn is not periodic: the maxima inside it on both sides of the minimum
    half = PHI[PHI <= 180]
    assert barrier_count(0.1 * np.cos(np.radians(3 * half))) == 1  # 120 deg (0 is an end point)


def test_plateau_error_is_the_well_depth_difference():
    deep, shallow = morse(R, d=4.5), morse(R, d=4.0)
    far = (1 - np.exp(-2.0 * (R[-1] - 1.0))) ** 2  # the Morse shape factor at the last point
    assert plateau_error(deep, shallow) == pytest.approx(0.5 * far, rel=1e-12)
    assert plateau_error(deep, shallow) == pytest.approx(0.5, abs=1e-4)
    assert plateau_error(shallow + 3.0, shallow) == pytest.approx(0.0, abs=1e-12)


def test_score_scan_combines_them():
    ref = morse(R)
    bump = 0.3 * np.exp(-(((R - 2.0) / 0.1) ** 2))
    row = score_scan(curve_scan(R, ref), ref + bump - 2.0)
    assert set(SCAN_METRICS) <= set(row) and row["n_points"] == R.size
    assert row["spurious_barriers"] == 1
    assert row["aligned_rmse"] == pytest.approx(np.sqrt(np.mean((bump - bump.mean()) ** 2)))
    assert row["plateau_error"] == pytest.approx(bump[-1], abs=1e-12)  # both minima at r0
    torsion = score_scan(curve_scan(PHI, np.cos(np.radians(3 * PHI)), "torsion", "deg"), np.cos(np.radians(3 * PHI)))
    assert torsion["plateau_error"] is None and torsion["spurious_barriers"] == 0
    with pytest.raises(ValueError, match="hand: 3 energies for"):
        score_scan(curve_scan(R, ref), ref[:3])


# -- reading labelled scans --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCANS))
def test_read_shipped_scans(name):
    kind, unit, atoms, n = SCANS[name]
    path = SHIPPED / f"{name}.extxyz"
    scan = read_scan(path)
    assert (scan.name, scan.kind, scan.unit, scan.atoms_indices, len(scan)) == (name, kind, unit, atoms, n)
    assert np.all(np.diff(scan.coordinate) > 0) and len(scan.frames) == n
    frames = ase.io.read(path, ":")
    by_x = {a.info["scan_coordinate"]: a for a in frames}
    for x, e, frame in zip(scan.coordinate, scan.reference, scan.frames):
        assert e == by_x[x].get_potential_energy() and frame.calc is None
        np.testing.assert_array_equal(frame.positions, by_x[x].positions)
    measured = [f.get_dihedral(*atoms) if kind == "torsion" else f.get_distance(*atoms) for f in scan.frames]
    if kind == "torsion":  # on the circle: 360 is 0
        assert np.allclose((np.array(measured) - scan.coordinate + 180) % 360 - 180, 0, atol=1e-3)
    else:
        np.testing.assert_allclose(measured, scan.coordinate, atol=1e-6)


def test_shipped_scans_score_zero_against_themselves():
    for name in SCANS:
        scan = read_scan(SHIPPED / f"{name}.extxyz")
        row = score_scan(scan, scan.reference)
        assert row["aligned_rmse"] == 0 and row["roughness_ratio"] == 1 and row["spurious_barriers"] == 0


def test_read_scan_sorts_and_refuses_bad_files(tmp_path):
    frames = ase.io.read(SHIPPED / "scan_mp2_631gs_stretch_NH.extxyz", ":")
    shuffled = tmp_path / "shuffled.extxyz"
    order = np.random.default_rng(0).permutation(len(frames))
    ase.io.write(shuffled, [frames[i] for i in order])
    scan = read_scan(shuffled)
    assert np.all(np.diff(scan.coordinate) > 0)
    assert scan.reference[0] == frames[0].get_potential_energy()  # 0.7 Ang, first in the file

    def write(name, frames):
        path = tmp_path / f"{name}.extxyz"
        ase.io.write(path, frames)
        return path

    no_coord = [a.copy() for a in frames]
    for a, src in zip(no_coord, frames):
        a.calc = src.calc
    del no_coord[4].info["scan_coordinate"]
    with pytest.raises(ValueError, match=r"no_coord.extxyz: frame 4 has no scan_coordinate"):
        read_scan(write("no_coord", no_coord))
    mixed = ase.io.read(shuffled, ":")
    mixed[2].info["scan_kind"] = "torsion"
    with pytest.raises(ValueError, match=r"mixed.extxyz: mixed scan_kind"):
        read_scan(write("mixed", mixed))
    with pytest.raises(ValueError, match=r"short.extxyz: a scan needs at least 3 points"):
        read_scan(write("short", frames[:2]))
    bare = [a.copy() for a in frames]  # no calculator: no energies
    with pytest.raises(ValueError, match=r"bare.extxyz: frame 0 has no energy"):
        read_scan(write("bare", bare))


# -- figure ------------------------------------------------------------------------------------


def test_scan_figure():
    scan = read_scan(SHIPPED / "scan_mp2_631gs_torsion_CCNH.extxyz")
    model = scan.reference + 5.0 + 0.01 * np.sin(np.radians(scan.coordinate))
    fig = scan_figure(scan, {"A": model, "B": (model, np.full(len(scan), 0.02))})
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    ref = lines["MP2"]
    assert ref.get_linestyle() == "--" and ref.get_color() == "black"
    np.testing.assert_allclose(ref.get_ydata(), scan.reference - scan.reference.min())
    # each model curve shifted to the reference's mean
    assert np.mean(lines["A"].get_ydata()) == pytest.approx(np.mean(ref.get_ydata()))
    assert len(ax.collections) == 1  # B's spread band
    assert "(deg)" in ax.get_xlabel() and "C0-C1-N2-H8" in ax.get_xlabel() and "mean" in ax.get_ylabel()


# -- spkmeta evaluate --scans ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained ANI NNP saved like SchNetPack's best_model (H C N: ethylamine)."""
    offsets = AddOffsets("energy", add_mean=True, property_mean=torch.tensor(-364.0))
    model = ani_potential(postprocessors=[CastTo64(), offsets], seed=0)
    path = tmp_path_factory.mktemp("model") / "best_model"
    torch.save(model, path)
    return path


def test_cli_evaluate_scans(model_file, tmp_path, capsys):
    from spk_meta.evaluate import calculator

    torsion, stretch = (str(SHIPPED / f"scan_mp2_631gs_{n}.extxyz") for n in ("torsion_CCNH", "stretch_NH"))
    bad = tmp_path / "bad.extxyz"
    frames = ase.io.read(stretch, ":")
    for a in frames:
        del a.info["scan_coordinate"]
    ase.io.write(bad, frames)
    out, plots = tmp_path / "scores.json", tmp_path / "plots"
    code = spkmeta(["evaluate", str(model_file), "--scans", torsion, str(bad), stretch,
                    "--json", str(out), "--plot-dir", str(plots)])
    printed = capsys.readouterr()
    assert code == 1, printed.err
    assert "roughness" in printed.out and "scan_mp2_631gs_torsion_CCNH" in printed.out
    assert "bad.extxyz: frame 0 has no scan_coordinate" in printed.err and "1 of 3 scans failed" in printed.err
    saved = json.loads(out.read_text())
    assert set(saved) == {"scans"} and set(saved["scans"]) == {torsion, str(bad), stretch}
    assert "error" in saved["scans"][str(bad)]
    assert sorted(p.name for p in plots.iterdir()) == [f"{Path(p).stem}.png" for p in (stretch, torsion)]
    torsion_row = saved["scans"][torsion]
    assert torsion_row["kind"] == "torsion" and torsion_row["n_points"] == 37 and torsion_row["plateau_error"] is None
    # the scores are those of the model's energies, computed here frame by frame with ASE
    calc, scan = calculator(model_file), read_scan(stretch)
    energies = []
    for frame in scan.frames:
        frame = frame.copy()
        frame.calc = calc
        energies.append(frame.get_potential_energy())
    row = saved["scans"][stretch]
    assert row["kind"] == "stretch" and row["n_points"] == 19
    assert row["aligned_rmse"] == pytest.approx(aligned_rmse(energies, scan.reference), rel=1e-4)
    assert row["roughness_ratio"] == pytest.approx(roughness_ratio(energies, scan.reference), rel=1e-3)
    assert row["plateau_error"] == pytest.approx(plateau_error(energies, scan.reference), abs=1e-4)
    assert row["spurious_barriers"] == extra_barriers(energies, scan.reference, "stretch", scan.coordinate)


def test_cli_evaluate_needs_files_or_scans(model_file, capsys):
    assert spkmeta(["evaluate", str(model_file)]) == 2
    assert "give labelled FILEs, --scans SCAN..., or both" in capsys.readouterr().err

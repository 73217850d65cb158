"""Speed of our ANI (SchNetPack) vs torchani's native ANI vs SchNetPack PaiNN.

Times one forward + backward to forces (energy, then forces = -dE/dR by autograd)
per batch, float32, for three models on the same batches:

  (a) ours:     ``NeuralNetworkPotential(PairwiseDistances -> spk_meta ANI ->
                ElementwiseAtomwise + Forces)``, starting from a collated SchNetPack
                batch whose neighbour list the data pipeline already built
                (``MatScipyNeighborList(cutoff=5.2)`` per structure, then
                ``AtomsLoader``); the neighbour-list build is timed separately.
  (b) torchani: ``AEVComputer.like_1x()`` padded call (its all-pairs neighbour list
                runs inside the timed region) + ``ANINetworks`` holding the same
                weights as (a) (``ElementwiseAtomwise.to_torchani()``); nothing is
                downloaded.
  (c) PaiNN:    SchNetPack's default PaiNN (128 features, 3 interactions, 20 Gaussian
                RBF, cosine cutoff 5.0 Å) + ``Atomwise`` + ``Forces`` on the batches of (a).

Workloads: 64 ethanol frames from the embedded MP2 data, and 16 H/C/N/O complexes of
20-30 atoms (the 11 S22 systems of ``ase.collections.s22`` with >= 20 atoms, the first
5 repeated with seeded 0.05 Å rattles). (a) and (b) energies/forces are checked to agree
before timing. The models are timed round-robin (a, b, c per repeat, the order rotated
every repeat) so that background load and cache state hit all of them alike; medians
are reported. The last line is

    ratio ours/torchani: X.XX

= (sum over workloads of median (a)) / (sum over workloads of median (b)).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/ani_speed.py [--device cuda] [--repeats N]
"""

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import ase.io
import schnetpack as spk
import torch
from ase import Atoms
from ase.collections import s22
from ase.data import atomic_numbers
from schnetpack import properties
from schnetpack.data import AtomsLoader
from schnetpack.transform import CastTo32, MatScipyNeighborList
from torchani.aev import AEVComputer

import spk_meta
from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.representation import ANI

ETHANOL = (
    Path(spk_meta.__file__).parent
    / "datasets/ethanol_multilevel/target_mp2_631gs_train_300K.extxyz"
)
NL_CUTOFF = 5.2  # ANI-1x radial cutoff
PAINN_CUTOFF = 5.0  # schnetpack configs: globals.cutoff
TOL = 1e-3  # float32 agreement of (a) and (b)


# ----------------------------------------------------------------------- workloads


def ethanol_batch(n: int) -> List[Atoms]:
    frames = ase.io.read(ETHANOL, ":")
    return frames[:n]


def large_batch(n: int) -> List[Atoms]:
    """``n`` H/C/N/O complexes of 20-30 atoms from S22 (rattled copies beyond 11)."""
    base = [a for a in s22 if len(a) >= 20 and set(a.get_chemical_symbols()) <= set("HCNO")]
    out = []
    for k in range(n):
        a = base[k % len(base)].copy()
        if k >= len(base):
            a.rattle(stdev=0.05, seed=k)
        a.pbc = False
        a.cell = None
        out.append(a)
    return out


def structure_inputs(atoms_list: List[Atoms]) -> List[Dict[str, torch.Tensor]]:
    """Per-structure SchNetPack inputs as ``ASEAtomsData`` yields them (no neighbours)."""
    out = []
    for idx, at in enumerate(atoms_list):
        out.append(
            {
                properties.idx: torch.tensor([idx]),
                properties.n_atoms: torch.tensor([len(at)]),
                properties.Z: torch.from_numpy(at.numbers.copy()).long(),
                properties.R: torch.from_numpy(at.positions.copy()),
                properties.cell: torch.from_numpy(at.cell.array.copy()).view(1, 3, 3),
                properties.pbc: torch.from_numpy(at.pbc.copy()).view(1, 3),
            }
        )
    return out


def data_pipeline(structs, nl, cast) -> Dict[str, torch.Tensor]:
    """Neighbour list + cast per structure (as dataset transforms), then collate."""
    samples = [cast(nl(dict(s))) for s in structs]
    return next(iter(AtomsLoader(samples, batch_size=len(samples))))


def padded(atoms_list: List[Atoms], elements: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """torchani padded species indices (-1 = padding) and float32 coordinates."""
    index = {z: i for i, z in enumerate(elements)}
    n = max(len(a) for a in atoms_list)
    species = torch.full((len(atoms_list), n), -1, dtype=torch.long)
    coords = torch.zeros(len(atoms_list), n, 3, dtype=torch.float32)
    for m, a in enumerate(atoms_list):
        species[m, : len(a)] = torch.tensor([index[z] for z in a.numbers])
        coords[m, : len(a)] = torch.from_numpy(a.positions)
    return species, coords


# -------------------------------------------------------------------------- models


def build_models(device: torch.device):
    torch.manual_seed(0)
    rep = ANI(preset="ani1x")
    head = ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x")
    ours = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[head, spk.atomistic.Forces()],
    )
    # identical weights, same element order (H, C, N, O)
    nets = head.to_torchani()
    aev = AEVComputer.like_1x(num_species=len(rep.elements), strategy="pyaev")
    painn = spk.model.NeuralNetworkPotential(
        representation=spk.representation.PaiNN(
            n_atom_basis=128,
            n_interactions=3,
            radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=PAINN_CUTOFF),
            cutoff_fn=spk.nn.CosineCutoff(PAINN_CUTOFF),
            shared_interactions=False,
            shared_filters=False,
        ),
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=128, output_key=properties.energy),
            spk.atomistic.Forces(),
        ],
    )
    elements = [atomic_numbers[s] for s in rep.elements]
    return (
        ours.to(device).float(),
        aev.to(device).float(),
        nets.to(device).float(),
        painn.to(device).float(),
        elements,
    )


def spk_step(model, batch) -> Tuple[torch.Tensor, torch.Tensor]:
    """(energies, forces) of a SchNetPack NNP; ``Forces`` differentiates by autograd."""
    out = model(dict(batch))  # shallow copy: PairwiseDistances etc. add keys
    return out[properties.energy], out[properties.forces]


def torchani_step(aev, nets, species, coords) -> Tuple[torch.Tensor, torch.Tensor]:
    """(energies, forces (molecs, atoms, 3)) with torchani's padded API."""
    coords = coords.detach().requires_grad_(True)
    energies = nets(species, aev(species, coords))
    (g,) = torch.autograd.grad(energies.sum(), coords, create_graph=nets.training)
    return energies, -g


# -------------------------------------------------------------------------- timing


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up iterations (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--train",
        action="store_true",
        help="train mode: forces with create_graph=True (as when a force loss is "
        "back-propagated); default eval mode (create_graph=False)",
    )
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA requested but not available")
    run = timer(device)

    ours, aev, nets, painn, elements = build_models(device)
    for m in (ours, aev, nets, painn):
        m.train(args.train)
    print(
        f"torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", threads {torch.get_num_threads()}, float32, "
        f"{'train (create_graph=True)' if args.train else 'eval (create_graph=False)'}, "
        f"warmup {args.warmup}, repeats {args.repeats}"
    )

    nl, cast = MatScipyNeighborList(cutoff=NL_CUTOFF), CastTo32()
    workloads = {
        "64 ethanol": ethanol_batch(64),
        "16 S22 (20-30 at.)": large_batch(16),
    }
    rows = []
    for name, atoms_list in workloads.items():
        structs = structure_inputs(atoms_list)
        # data pipeline (not part of the model timings): NL build, then collate
        nl_ms = statistics.median(
            run(lambda: [nl(dict(s)) for s in structs]) for _ in range(max(3, args.repeats // 3))
        )
        batch = data_pipeline(structs, nl, cast)
        batch = {k: v.to(device) for k, v in batch.items()}
        species, coords = padded(atoms_list, elements)
        species, coords = species.to(device), coords.to(device)
        n_atoms = sum(len(a) for a in atoms_list)
        n_pairs = batch[properties.idx_i].shape[0]

        # fairness check: (a) and (b) agree
        e_a, f_a = spk_step(ours, batch)
        e_b, f_b = torchani_step(aev, nets, species, coords)
        f_b = f_b[species >= 0]
        de = (e_a - e_b).abs().max().item()
        df = (f_a - f_b).abs().max().item()
        print(
            f"[{name}] {n_atoms} atoms, {n_pairs} directed pairs <= {NL_CUTOFF} A; "
            f"ours vs torchani: max |dE| {de:.2e} (max |E| {e_b.abs().max().item():.2e}), "
            f"max |dF| {df:.2e} (max |F| {f_b.abs().max().item():.2e})"
        )
        assert de < TOL and df < TOL, (de, df)

        steps = {
            "ours": lambda: spk_step(ours, batch),
            "torchani": lambda: torchani_step(aev, nets, species, coords),
            "painn": lambda: spk_step(painn, batch),
        }
        for _ in range(args.warmup):
            for fn in steps.values():
                run(fn)
        times: Dict[str, List[float]] = {k: [] for k in steps}
        order = list(steps)
        for r in range(args.repeats):
            # rotate the order each repeat: no model always runs right after PaiNN
            # (cold caches/allocator) or right after a same-shaped model (warm)
            for k in order[r % len(order) :] + order[: r % len(order)]:
                times[k].append(run(steps[k]))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, nl_ms, med))

    print()
    print("median ms per batch (forward + forces)")
    head = f"{'workload':<20} {'NL build*':>10} {'(a) ours':>10} {'(b) torchani':>13} {'(c) PaiNN':>10} {'a/b':>6}"
    print(head)
    print("-" * len(head))
    for name, nl_ms, med in rows:
        print(
            f"{name:<20} {nl_ms:>10.2f} {med['ours']:>10.2f} {med['torchani']:>13.2f} "
            f"{med['painn']:>10.2f} {med['ours'] / med['torchani']:>6.2f}"
        )
    tot = {k: sum(m[k] for _, _, m in rows) for k in ("ours", "torchani", "painn")}
    print(
        f"{'sum':<20} {sum(r[1] for r in rows):>10.2f} {tot['ours']:>10.2f} "
        f"{tot['torchani']:>13.2f} {tot['painn']:>10.2f}"
    )
    print(
        "* MatScipyNeighborList(cutoff=5.2) over the batch's structures on CPU "
        "(data pipeline, not in (a)/(c)); torchani's (b) builds its neighbour list inside."
    )
    print("ratio = sum over workloads of median (a) / sum of median (b)")
    print(f"ratio ours/torchani: {tot['ours'] / tot['torchani']:.2f}")


if __name__ == "__main__":
    main()

"""Reptile pre-training and fine-tuning through the Python API (no spktrain).

1. Pre-train ANI with Reptile (k inner steps per sampled level) on the three embedded
   ethanol levels of theory (wB97X/6-31G*, B3LYP/def2-SVP, HF/def2-SVP).
2. Fine-tune it on N MP2/6-31G* structures (the target's E0 is refitted by the data module
   and added back by the model's AddOffsets).
3. Evaluate energies and forces on the MP2 test frames at 300, 600 and 900 K
   (``spk_meta.evaluate``).

Usage::

    python examples/reptile_python_api.py [--k 10] [--epochs 30] [--n-target 50] [--out runs/api]
"""

import argparse
import copy
from pathlib import Path

import pytorch_lightning as pl
import schnetpack as spk
import torch
from schnetpack import transform as T

from spk_meta.atomistic import ElementwiseAtomwise
from spk_meta.data import TaskDataModule
from spk_meta.datasets import ethanol_multilevel
from spk_meta.evaluate import evaluate
from spk_meta.representation import ANI
from spk_meta.task import AtomisticTask, ReptileTask

CUTOFF = 5.2  # Ang, ANI-1x radial cutoff


def ani_model() -> spk.model.NeuralNetworkPotential:
    rep = ANI(preset="ani1x")
    return spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[ElementwiseAtomwise(n_in=rep.n_atom_basis, preset="ani1x"), spk.atomistic.Forces()],
        postprocessors=[T.CastTo64(), T.AddOffsets("energy", add_mean=True, add_atomrefs=True)],
    )


def outputs():
    return [
        spk.task.ModelOutput("energy", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
        spk.task.ModelOutput("forces", loss_fn=torch.nn.MSELoss(), loss_weight=0.5, metrics={}),
    ]


def trainer(out: Path, epochs: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu", max_epochs=epochs, default_root_dir=str(out), logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=10, help="Reptile inner steps")
    parser.add_argument("--epsilon", type=float, default=1.0, help="Reptile outer step size")
    parser.add_argument("--epochs", type=int, default=30, help="pre-training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=150)
    parser.add_argument("--n-target", type=int, default=50, help="MP2 training structures")
    parser.add_argument("--out", type=Path, default=Path("runs/api"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    data = ethanol_multilevel()
    transforms = [T.MatScipyNeighborList(CUTOFF), T.CastTo32()]

    # 1. Reptile pre-training: one task per level of theory
    pretrain = TaskDataModule(
        {f.level_of_theory.slug: f.db for f in data.select("pretrain").values()},
        batch_size=16, num_train=160, num_val=20, num_test=20, transforms=transforms,
        split_file=str(args.out / "pretrain_splits.npz"),
        references_file=str(args.out / "pretrain_references.json"),
    )
    reptile = ReptileTask(ani_model(), outputs(), optimizer_args={"lr": 1e-3}, inner_steps=args.k, outer_lr=args.epsilon)
    trainer(args.out, args.epochs).fit(reptile, datamodule=pretrain)
    torch.save(reptile.model, args.out / "pretrained_model")

    # 2. fine-tuning on the target level (single task: its E0 is what AddOffsets adds back)
    target = TaskDataModule(
        {"mp2_6-31gs": data["target_mp2_631gs_train_300K"].db}, batch_size=16,
        num_train=args.n_target, num_val=max(5, args.n_target // 5), num_test=0, transforms=transforms,
        split_file=str(args.out / "target_splits.npz"), references_file=str(args.out / "target_references.json"),
    )
    model = copy.deepcopy(reptile.model)
    model.postprocessors = torch.nn.ModuleList([T.CastTo64(), T.AddOffsets("energy", add_mean=True, add_atomrefs=True)])
    finetune = AtomisticTask(model, outputs(), optimizer_args={"lr": 1e-3})
    trainer(args.out, args.finetune_epochs).fit(finetune, datamodule=target)
    torch.save(finetune.model, args.out / "finetuned_model")

    # 3. MP2 test frames per temperature (batched; equal to SchNetPack's ASE calculator)
    print(f"Reptile k={args.k}, {args.epochs} pre-training epochs, fine-tuned on {args.n_target} MP2 structures")
    files = {T_K: data[f"target_mp2_631gs_test_{T_K}K"].extxyz for T_K in (300, 600, 900)}
    errors = evaluate(args.out / "finetuned_model", list(files.values()))
    for T_K, path in files.items():
        e = errors[str(path)]
        print(f"MP2 test {T_K} K: energy RMSE {e['energy_rmse']:.4f} eV, force RMSE {e['forces_rmse']:.4f} eV/Ang")

if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# The organic case study's data (issue #13): four pre-training datasets, each its own level of
# theory, molecules and sampling, and the target ethylamine (CH3CH2NH2) at MP2/6-31G*: training
# and test trajectories plus rigid scans of its GFN2-optimised geometry. No pre-training molecule
# may be C2H7N (ethylamine or dimethylamine). About 2 h on one core at nice 19 on a shared
# 2-core machine (measured s/frame in MANIFEST.json "timing").
#
#   examples/make_organic_data.sh [OUTDIR] [extra generator args, e.g. --overwrite]
#
# Resumable: rerun the same command after a kill and it continues where it stopped.
# Progress: tail OUTDIR/log.txt (or the terminal); OUTDIR/MANIFEST.json is rewritten every 10 frames.
#
# Ethylamine atoms (ase.build.molecule("CH3CH2NH2")): 0 C(H3), 1 C(H2), 2 N, 3-5 H on C0,
# 6-7 H on C1, 8-9 H on N.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-/work/organic_gen}
shift || true
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
exec nice -n 19 "$PYTHON" examples/make_multilevel_data.py "$OUTDIR" \
    --molecule CH3CH2NH2 --exclude-formula C2H7N --seed 11 \
    --job "pretrain_ani1x_like_wb97x_631gs=wB97X/6-31g*:300-600:200:CH3OH,CH3CH2OH,H3CNH2,C3H9N" \
    --job "pretrain_qm7x_like_pbe0_def2svp=PBE0/def2-svp:500:200:CH3OCH3,CH3COOH,HCOOH,CH3CONH2,HCOOCH3" \
    --job "pretrain_t1x_like_b3lyp_def2svp=B3LYP/def2-svp:1000:250:CH2OCH2,CH2NHCH2,H2CCO,CH3CN:stretch=1.1-1.6:stretch_fraction=0.6" \
    --job "pretrain_carbonyls_hf_def2svp=HF/def2-svp:700:300:H2CO,CH3CHO,CH3COCH3,OCHCHO" \
    --target-job "target_mp2_631gs_train_300K=MP2/6-31g*:300:150" \
    --target-job "target_mp2_631gs_test_300K=MP2/6-31g*:300:30" \
    --target-job "target_mp2_631gs_test_600K=MP2/6-31g*:600:30" \
    --target-job "target_mp2_631gs_test_900K=MP2/6-31g*:900:30" \
    --scan-level "MP2/6-31g*" \
    --scan "scan_mp2_631gs_torsion_CCNH=torsion:0,1,2,8:0:360:37" \
    --scan "scan_mp2_631gs_stretch_NH=stretch:2,8:0.7:2.5:19" \
    --scan "scan_mp2_631gs_stretch_CH=stretch:0,3:0.7:2.5:19" \
    "$@"

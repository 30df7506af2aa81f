#!/bin/sh
# autosp-train against transformers on Hugging Face checkpoints: loss and
# gradients of imported models (SP = 1 and 2) and the loss of an exported
# model, packed documents and target masks (SP = 1, 2 and 4), to 1e-4 in fp32
# (tests/hf_parity.py). Skipped (77) where python3
# cannot import torch and transformers. Runs from the repository root with the
# build present: sh tests/test_hf_parity.sh. HF_PARITY_DEVICES=cpu,cuda also
# checks the GPU engine (bf16 tolerances) on a machine with a GPU.
. "${top_srcdir:-.}/tests/common.sh"
python3 -c "import torch, transformers" >/dev/null 2>&1 ||
    skip_test "python3 cannot import torch and transformers (the external reference): scripts/python-deps.sh --test installs them (.ci/run does)"
MPIRUN=${MPIRUN:-mpirun}
MPI=""
have_mpirun && MPI=$MPIRUN
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
python3 "$top_srcdir/tests/hf_parity.py" --bin "$BIN" --srcdir "$top_srcdir" --tmp "$TMP" ${MPI:+--mpirun "$MPI"} \
    --devices "${HF_PARITY_DEVICES:-cpu}"

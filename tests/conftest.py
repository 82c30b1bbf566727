"""Test-wide settings: offline hub, one torch thread, float64 by default where tests ask for it."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one BLAS thread for scipy too
    os.environ.setdefault(_v, "1")

import torch  # noqa: E402

torch.set_num_threads(1)

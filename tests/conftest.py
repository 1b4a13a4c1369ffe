import os

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fake_openai_server import fake_openai_server  # noqa: E402,F401  (a real HTTP fixture for judge tests)

# Tiny models run faster on one thread, and CI has only 2 cores for everything (including the
# subprocesses that some tests start, which inherit OMP_NUM_THREADS).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

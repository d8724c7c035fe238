"""Settings shared by every test."""

import torch

# The tests run tiny tensors: one thread is as fast, and immune to a busy machine (two OpenMP threads on two cores
# that another process keeps busy make every small conv wait for a time slice: 10-100x slower).
torch.set_num_threads(1)

"""Test-wide settings: one torch thread, so small-tensor tests run at the same speed however loaded the machine is."""
import torch

torch.set_num_threads(1)

"""The PyTorch backend: state dicts, TorchScript, torch.export programs, modules."""

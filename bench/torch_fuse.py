"""What a user writes to fold BN with torch's own utilities (the torch-side peers of
``bench/fold_peers_torch.py``), run as its own process::

    python bench/torch_fuse.py fx|fuse_modules ARCH_FILE:FACTORY STATE_DICT OUT

``fx``: ``torch.fx.experimental.optimization.fuse`` (traces the model, folds Conv+BN pairs
of the graph). ``fuse_modules``: ``torch.ao.quantization.fuse_modules`` on every Conv/Linear
module registered right before a BatchNorm (the usual way to list the pairs by hand). The
fused module is saved whole (``torch.save``; loading it back needs :func:`build` first, which
registers the architecture module under the name the pickle refers to).
"""

from __future__ import annotations

import importlib.util
import sys


def build(arch: str):
    path, _, factory = arch.rpartition(":")
    spec = importlib.util.spec_from_file_location("bench_torch_fuse_arch", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # torch.save pickles the classes by this module name
    spec.loader.exec_module(module)
    return getattr(module, factory)()


def pairs(model, torch) -> list[list[str]]:
    """Names of (Conv/Linear, BatchNorm) modules registered one after the other."""
    modules = list(model.named_modules())
    producers = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    return [[name, nxt] for (name, m), (nxt, n) in zip(modules, modules[1:], strict=False)
            if isinstance(m, producers) and isinstance(n, torch.nn.modules.batchnorm._BatchNorm)]


def main(argv: list[str]) -> int:
    import torch

    tool, arch, state_dict, out = argv
    model = build(arch)
    model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
    model.eval()
    if tool == "fx":
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model)
    else:
        fused = torch.ao.quantization.fuse_modules(model, pairs(model, torch))
    torch.save(fused, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

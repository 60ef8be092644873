"""Write small checkpoints in every format featcache must read (and a few it must refuse), and reference outputs.

Networks are built straight from torchvision (not through ``featcache.models``) so the tests compare
featcache's loading path against an independent reference. The test suite and the benchmarks share them.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from ..config import CheckpointSpec

__all__ = [
    "EMA_SEED",
    "FORMATS",
    "classifier_input",
    "layer_output",
    "make_net",
    "make_timm_net",
    "plain_net",
    "reference_features",
    "write_malicious",
    "write_pickled_network",
    "write_prefixed",
    "write_algoperf",
    "write_algoperf_compile_ddp",
    "write_algoperf_ddp_compile",
    "write_checkpoints",
    "write_imagenet",
    "write_namespace",
    "write_research",
    "write_timm",
    "write_torchvision",
    "write_truncated",
]

EMA_SEED = 1234  # timm files' EMA weights come from make_net(arch, seed=EMA_SEED)


def plain_net(arch: str) -> nn.Module:
    """A torchvision classifier at its default initialisation (classifier kept); ``resnet10`` as featcache's."""
    return ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet10" else getattr(tvm, arch)(weights=None)


def make_net(arch: str = "resnet10", seed: int = 0) -> nn.Module:
    """A randomly initialised torchvision network (classifier kept) with non-trivial BatchNorm state.

    Default init leaves BN at mean 0, var 1, weight 1, bias 0, which would hide a BN buffer that failed
    to load; every BN tensor is therefore drawn at random too.
    """
    torch.manual_seed(seed)
    net = plain_net(arch)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(100)
    return net.eval()


def make_timm_net(name: str, seed: int = 0) -> nn.Module:
    """A randomly initialised timm network (classifier kept), every weight perturbed.

    timm's init hides whole blocks (ConvNeXt's layer scale starts at 1e-6, LayerNorm at 1 and 0), so a
    block that failed to load would go unnoticed; noise on every tensor makes each one count.
    """
    import timm

    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.eval()


def layer_output(net: nn.Module, name: str, x: Tensor) -> Tensor:
    """The output of module ``name`` of ``net`` on ``x``, taken by a forward hook."""
    seen: list[Tensor] = []
    handle = net.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        net.eval()(x)
    handle.remove()
    return seen[-1]


def classifier_input(net: nn.Module, classifier: str, x: Tensor) -> Tensor:
    """The input of the classifier module ``classifier``, globally average-pooled if it is a map."""
    seen: list[Tensor] = []
    handle = net.get_submodule(classifier).register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        net.eval()(x)
    handle.remove()
    return seen[-1] if seen[-1].ndim == 2 else seen[-1].mean(dim=(2, 3))


def reference_features(net: nn.Module, x: Tensor) -> Tensor:
    """Pooled penultimate features of ``net``: a copy with ``fc`` replaced by Identity, in eval mode."""
    ref = copy.deepcopy(net)
    ref.fc = nn.Identity()
    with torch.no_grad():
        return ref.eval()(x)


def _prefixed(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _algoperf_names(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k.replace("downsample.0.", "downsample.conv.").replace("downsample.1.", "downsample.bn."): v
            for k, v in sd.items()}  # fmt: skip


def _imagenet_example(sd: dict[str, Tensor], prefix: str, arch: str) -> dict:
    # The layout of pytorch/examples imagenet/main.py's save_checkpoint.
    return {"epoch": 90, "arch": arch, "state_dict": _prefixed(sd, prefix), "best_acc1": torch.tensor(71.5),
            "optimizer": {}}  # fmt: skip


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def write_torchvision(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    return _save(sd, d / f"{arch}_torchvision.pth")


def write_imagenet(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    return _save(_imagenet_example(sd, "module.", arch), d / f"{arch}_imagenet.pth.tar")


def write_research(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    return _save(_imagenet_example(sd, "module.model0.", arch), d / f"{arch}_research.pth.tar")


def write_algoperf_compile_ddp(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    obj = {"model_params": _prefixed(_algoperf_names(sd), "_orig_mod.module."), "optimizer_state": {},
           "global_step": 100}  # fmt: skip
    return _save(obj, d / f"{arch}_algoperf_a.pth")


def write_algoperf_ddp_compile(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    obj = {"model_params": _prefixed(_algoperf_names(sd), "module._orig_mod."), "optimizer_state": {},
           "global_step": 100}  # fmt: skip
    return _save(obj, d / f"{arch}_algoperf_b.pth")


def write_algoperf(path: Path, sd: dict[str, Tensor], global_step: int) -> Path:
    """An AlgoPerf checkpoint at ``path`` (torch.compile inside DDP names) recording ``global_step``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model_params": _prefixed(_algoperf_names(sd), "_orig_mod.module."), "optimizer_state": {},
           "global_step": global_step, "preemption_count": 0}  # fmt: skip
    return _save(obj, path)


def write_timm(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    # The EMA copy gets other values so a test can tell which one was loaded.
    ema = make_net(arch, seed=EMA_SEED).state_dict()
    return _save({"state_dict": sd, "state_dict_ema": ema, "epoch": 3}, d / f"{arch}_timm.pth.tar")


def write_namespace(d: Path, sd: dict[str, Tensor], arch: str) -> Path:
    args = argparse.Namespace(arch=arch, lr=0.1, epochs=90, data="/imagenet")
    obj = {"state_dict": _prefixed(sd, "module."), "args": args, "epoch": 90}
    return _save(obj, d / f"{arch}_args.pth.tar")


# name -> writer(directory, state_dict, arch) -> path; each file holds the weights of `state_dict`.
FORMATS: dict[str, Callable[[Path, dict[str, Tensor], str], Path]] = {
    "torchvision": write_torchvision,
    "imagenet_example": write_imagenet,
    "research_model0": write_research,
    "algoperf_orig_mod_module": write_algoperf_compile_ddp,
    "algoperf_module_orig_mod": write_algoperf_ddp_compile,
    "timm": write_timm,
    "argparse_namespace": write_namespace,
}


def write_prefixed(d: Path, sd: dict[str, Tensor], prefix: str, extra: dict[str, Tensor] | None = None) -> Path:
    """A PyTorch Lightning-style file: every key under ``prefix`` (``model.``), plus ``extra`` keys as given."""
    obj = {"state_dict": {**_prefixed(sd, prefix), **(extra or {})}, "epoch": 9, "global_step": 900,
           "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.1}, "optimizer_states": []}  # fmt: skip
    return _save(obj, d / f"prefixed_{prefix.strip('.').replace('.', '_') or 'none'}.ckpt")


def write_pickled_network(d: Path, net: nn.Module) -> Path:
    """A whole ``nn.Module`` pickled with ``torch.save(net)``: loads only with full unpickling."""
    return _save(net, d / "whole_network.pt")


class _CreatesFile:
    """Unpickling this creates an empty file at ``path``: a stand-in for arbitrary code execution.

    ``shutil.copyfile`` rather than ``open``, which would leave an unclosed file behind.
    """

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (shutil.copyfile, (os.devnull, self.path))


def write_malicious(d: Path, sd: dict[str, Tensor], flag: Path) -> Path:
    """A valid checkpoint whose ``args`` entry creates ``flag`` when unpickled."""
    return _save({"state_dict": sd, "args": _CreatesFile(flag)}, d / "malicious.pth")


def write_truncated(src: Path, dst: Path) -> Path:
    """Copy the first half of ``src`` to ``dst``, as an interrupted download would."""
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def write_checkpoints(folder: Path, arch: str, k: int) -> list[CheckpointSpec]:
    """``k`` networks at :func:`plain_net`'s initialisation (seeds 0..k-1) saved as plain state dicts.

    Returns:
        Their specs, named ``bench0``..``bench<k-1>``, files ``<arch>_seed<s>.pth``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for s in range(k):
        torch.manual_seed(s)
        path = folder / f"{arch}_seed{s}.pth"
        torch.save(plain_net(arch).state_dict(), path)
        specs.append(CheckpointSpec(f"bench{s}", arch, path))
    return specs

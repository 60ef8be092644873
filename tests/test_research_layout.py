"""The research code's checkpoints as its official download leaves them, its own registry file, and the training
step AlgoPerf checkpoints record, checked against the sweep's steps per model.

The fixture tree is a fake richreps-timecat repository: ``configs/pretrained_checkpoints.yaml`` in the research
dialect (one tag per full run, one per Time-Cat set) and ``checkpoints/supervised_pretrain/
resnet50_sfadamw_imagenet1k_supervised/checkpoints_{full,200k,100k,80k}/checkpoint_run<i>.pth`` (tools/download.sh),
each a tiny AlgoPerf checkpoint whose ``global_step`` is its length. A dry run reads no weights, only the steps.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ckpt_factory import make_net, write_algoperf
from click.testing import CliRunner
from data_factory import write_cifar10

from featcache.checkpoints import checkpoint_step
from featcache.cli import main
from featcache.config import Paths, load_registry
from featcache.config.sweep import parse_sweep
from featcache.errors import CheckpointError, ConfigError
from featcache.models import load_backbone
from featcache.sweep import load_sweep, plan_sweep

DOWNLOAD = "checkpoints/supervised_pretrain/resnet50_sfadamw_imagenet1k_supervised"
# folder -> (runs, steps per model) as configs/sweeps/timecat.yaml has them
FOLDERS = {"full": (5, 450_000), "200k": (2, 200_000), "100k": (4, 100_000), "80k": (5, 80_000)}
TAG = "supervisedimagenet_resnet50_sfadamw"


def _research_registry() -> str:
    """The research registry's shape: a tag per full run, then one per set; lists written as the file writes them."""
    out = []
    for i in range(5):
        out.append(
            f"{TAG}_run{i}:\n  arch: [resnet50 ]\n  pretrained: [{DOWNLOAD}/checkpoints_full/checkpoint_run{i}.pth]\n"
        )
    for folder, n in (("200k", 2), ("100k", 4), ("80k", 5)):
        files = ",\n              ".join(f"{DOWNLOAD}/checkpoints_{folder}/checkpoint_run{i}.pth" for i in range(n))
        out.append(f"\n{TAG}_{n}_step{folder}:\n  arch: [{', '.join(['resnet50'] * n)}]\n  pretrained: [{files}]\n")
    return "# resnet50_sfadamw pretrained on imagenet\n" + "".join(out)


@pytest.fixture
def research(tmp_path):
    """A research repository root after the download, and roots for data and cache beside it."""
    root = tmp_path / "richreps-timecat"
    (root / "configs").mkdir(parents=True)
    (root / "configs" / "pretrained_checkpoints.yaml").write_text(_research_registry())
    tiny = {"w": torch.zeros(1)}  # a dry run never reads the weights: only that the file is there, and its step
    for folder, (runs, steps) in FOLDERS.items():
        for i in range(runs):
            write_algoperf(root / DOWNLOAD / f"checkpoints_{folder}" / f"checkpoint_run{i}.pth", tiny, steps)
    write_cifar10(tmp_path / "data" / "cifar")
    return root


def _dry_run(tmp_path, checkpoint_dir, *extra):
    roots = ["--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache")]
    args = [*roots, "--checkpoint-dir", str(checkpoint_dir), "sweep", "timecat", "--dry-run", "--dataset", "cifar10"]
    return CliRunner().invoke(main, [*args, *extra])


@pytest.mark.parametrize("where", ["root", "checkpoints"])
def test_sweep_timecat_finds_the_official_download(research, tmp_path, where):
    """--checkpoint-dir at the research repository's root, or at its checkpoints/: every checkpoint is found."""
    r = _dry_run(tmp_path, research if where == "root" else research / "checkpoints")
    assert r.exit_code == 0, r.output
    assert "16 stores: run0, run1, ..., run4-step80k" in r.output
    assert r.output.strip().splitlines()[-1] == (
        "dry run: 1 extraction(s) and 8 probe(s) would run; 0 of 8 probe(s) already done"
    )
    assert not (tmp_path / "cache").exists()


def test_the_research_registry_is_read_as_it_is_at_the_research_root(research, tmp_path):
    reg = load_registry(Paths(tmp_path / "data", tmp_path / "cache", research))
    run3 = reg.checkpoint("run3")  # the native names, relative to the root's checkpoints/
    assert run3.path == research.resolve() / DOWNLOAD / "checkpoints_full" / "checkpoint_run3.pth"
    assert run3.path.is_file() and run3.arch == "resnet50"
    cat5 = reg.expand_checkpoints(f"{TAG}_5_step80k")  # the research file's names, relative to the root
    assert [c.name for c in cat5] == [f"{TAG}_5_step80k-run{i}" for i in range(5)]
    assert [c.path for c in cat5] == [reg.checkpoint(f"run{i}-step80k").path for i in range(5)]
    assert all(c.arch == "resnet50" for c in cat5)
    assert reg.expand_checkpoints(f"{TAG}_run4")[0].path == reg.checkpoint("run4").path
    # elsewhere (no research registry there) the same names are not known, and paths are relative to the dir
    plain = load_registry(Paths(tmp_path / "data", tmp_path / "cache", research / "checkpoints"))
    assert plain.checkpoint("run3").path == run3.path and f"{TAG}_run4" not in plain.sets


def test_a_checkpoint_of_another_length_is_refused_naming_both_numbers(research, tmp_path):
    write_algoperf(research / DOWNLOAD / "checkpoints_100k" / "checkpoint_run2.pth", {"w": torch.zeros(1)}, 80_000)
    r = _dry_run(tmp_path, research)
    assert r.exit_code == 1
    assert "checkpoint_run2.pth records training step 80000 (global_step) but " in r.output
    assert "timecat.yaml: rows.cat4.steps_per_model says 100000 steps per model" in r.output


def test_a_missing_file_of_the_download_is_named(research, tmp_path):
    (research / DOWNLOAD / "checkpoints_200k" / "checkpoint_run1.pth").unlink()
    r = _dry_run(tmp_path, research)
    assert r.exit_code == 1 and "1 checkpoint file(s) to extract are missing: " in r.output
    assert "checkpoints_200k/checkpoint_run1.pth" in r.output


def test_the_step_is_read_from_zip_and_legacy_files_and_a_tensor(tmp_path):
    zip_file = write_algoperf(tmp_path / "a.pth", {"w": torch.zeros(3)}, 123)
    legacy = tmp_path / "b.pth"
    torch.save({"model_params": {}, "global_step": torch.tensor(7)}, legacy, _use_new_zipfile_serialization=False)
    none = tmp_path / "c.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 90}, none)
    assert (checkpoint_step(zip_file), checkpoint_step(legacy), checkpoint_step(none)) == (123, 7, None)


def test_extraction_refuses_a_checkpoint_whose_step_is_not_the_rows(paths):
    path = write_algoperf(paths.checkpoints / "net.pth", make_net("resnet10", seed=1).state_dict(), 256)
    spec = dataclasses.replace(
        load_registry(paths).expand_checkpoints(str(path), arch="resnet10")[0], steps=256, steps_source="row a"
    )
    assert load_backbone(spec).feature_dim == 512
    with pytest.raises(CheckpointError, match=r"net\.pth records training step 256 \(global_step\) but row b says 64 "):
        load_backbone(dataclasses.replace(spec, steps=64, steps_source="row b"))
    assert load_backbone(dataclasses.replace(spec, steps=None)).feature_dim == 512  # nothing expected: no check


def test_a_checkpoint_in_two_rows_of_other_lengths_is_refused(paths, registry):
    doc = {"rows": {"a": {"steps_per_model": 10, "draws": ["run0"]}, "b": {"steps_per_model": 20, "draws": ["full"]}},
           "datasets": ["cifar10"]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"rows\.b\.steps_per_model is 20 but checkpoint 'run0' is also in .*rows\.a"):
        plan_sweep(parse_sweep(doc, "x.yaml", "x"), registry, paths)


def test_the_sweep_hands_each_row_its_steps(paths, registry):
    plan = plan_sweep(load_sweep("timecat", registry).with_overrides(datasets=["cifar10"]), registry, paths)
    steps = {c.name: (c.steps, c.steps_source.rsplit(": ", 1)[1]) for c in plan.extracts[0].config.checkpoints}
    assert steps["run3"] == (450_000, "rows.cat1.steps_per_model")
    assert steps["run1-step200k"] == (200_000, "rows.cat2.steps_per_model")
    assert {steps[f"run{i}-step80k"] for i in range(5)} == {(80_000, "rows.cat5.steps_per_model")}

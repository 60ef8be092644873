"""The command line as a new user meets it: help for every option, one-line errors, the whole flow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import torchvision
from ckpt_factory import EMA_SEED, make_net, reference_features, write_timm
from click.testing import CliRunner
from conftest import REPO, save_checkpoint
from data_factory import write_cifar10
from store_factory import make_store

from featcache.cli import main
from featcache.config import load_registry
from featcache.data import build_dataset
from featcache.store import Store, open_store, store_path
from featcache.transforms import pil_reference


@pytest.fixture
def run(paths):
    runner = CliRunner()

    def invoke(*args: str):
        roots = ["--data-dir", str(paths.data), "--cache-dir", str(paths.cache), "--checkpoint-dir",
                 str(paths.checkpoints), "--config-dir", str(paths.config)]  # fmt: skip
        return runner.invoke(main, [*roots, *args], catch_exceptions=False)

    return invoke


def _commands():
    return [("main", main)] + sorted(main.commands.items())


@pytest.mark.parametrize(("name", "command"), _commands(), ids=[n for n, _ in _commands()])
def test_help_explains_every_option(name, command, run):
    args = ["--help"] if name == "main" else [name, "--help"]
    result = run(*args)
    assert result.exit_code == 0 and (command.help or "").split("\n")[0][:30] in result.output
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
            assert param.opts[-1] in result.output


def _one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_checkpoint(run, paths):
    _one_line_error(run("extract", "--ckpt", "run7"), "unknown checkpoint 'run7'", "did you mean", "'run4'")
    assert not any(paths.cache.iterdir())


def test_registered_checkpoint_file_missing(run, paths):
    write_cifar10(paths.data / "cifar")
    _one_line_error(run("extract", "--ckpt", "run3", "--dataset", "cifar10"), "run3", "not found")
    assert not (paths.cache / "cifar10").exists()


def test_wrong_dataset_path(run, paths):
    save_checkpoint(paths, "net0", seed=0)
    ckpt = str(paths.checkpoints / "net0.pth")
    _one_line_error(run("extract", "--ckpt", ckpt, "--arch", "resnet10", "--dataset", "cifar10"),
                    str(paths.data / "cifar"))  # fmt: skip
    _one_line_error(
        run("extract", "--ckpt", ckpt, "--arch", "resnet10", "--dataset", "cifar1O"), "did you mean 'cifar10'"
    )
    assert not any(paths.cache.iterdir())


def test_wrong_architecture(run, paths):
    write_cifar10(paths.data / "cifar")
    save_checkpoint(paths, "net0", seed=0)
    r = run("extract", "--ckpt", str(paths.checkpoints / "net0.pth"), "--arch", "resnet50", "--dataset", "cifar10")
    _one_line_error(r, "resnet50", "missing")
    assert not (paths.cache / "cifar10").exists()
    r = run("extract", "--ckpt", str(paths.checkpoints / "net0.pth"), "--arch", "resnet51", "--dataset", "cifar10")
    _one_line_error(r, "unknown architecture 'resnet51'", "resnet50")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["extract", "--ckpt", "run0", "--batch-size", "-4"], "--batch-size"),
        (["extract", "--ckpt", "run0", "--precision", "fp8"], "'fp8' is not one of"),
        (["extract", "--ckpt", "run0", "--device", "tpu"], "--device 'tpu'"),
        (["probe", "--stores", "a", "--wd", "1e-4,abc"], "comma-separated list of numbers"),
        (["probe", "--stores", "a", "--wd", "-1"], "non-negative"),
        (["probe", "--stores", "a", "--epochs", "0"], "--epochs"),
    ],
)
def test_invalid_option_values(run, args, needle):
    result = run(*args)
    assert result.exit_code != 0 and needle in result.output


GRID_OPTIONS = {  # option: its own example; the others' examples must not appear in its errors
    "--wd": "1e-4,5e-4",
    "--lr": "0.001,0.01,0.1",
    "--knn-temperature": "0.02,0.07,0.1",
    "--lbfgs-strengths": "1,1e-2,1e-4",
}


@pytest.mark.parametrize("option", list(GRID_OPTIONS))
@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("-1", "numbers, e.g."),
        ("abc", "not a comma-separated list"),
        ("0.1,0.1", "repeats 0.1: give each value once"),
        ("0.5,0.2,0.50", "repeats 0.5:"),  # equal as numbers, not as text
    ],
)
def test_grid_option_errors_name_the_option_and_its_own_example(run, option, value, needle):
    r = run("probe", "--stores", "a", option, value)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"'{option}'" in r.output and needle in r.output and f"e.g. {GRID_OPTIONS[option]};" in r.output
    others = [ex for o, ex in GRID_OPTIONS.items() if o != option]
    assert not any(ex in r.output for ex in others), r.output


def test_grid_options_take_zero_only_as_a_weight_decay(run):
    for option in ("--lr", "--knn-temperature", "--lbfgs-strengths"):
        r = run("probe", "--stores", "a", option, "0")
        assert r.exit_code == 2 and "positive numbers" in r.output, r.output
    r = run("probe", "--stores", "a", "--wd", "0")
    assert r.exit_code == 1 and "--stores" in r.output  # parsed; the store is what is missing next


def test_extract_ls_verify_probe_results(run, paths):
    write_cifar10(paths.data / "cifar", n_train_per_batch=12, n_test=20)
    for k in range(2):
        save_checkpoint(paths, f"net{k}", seed=k)
    ckpts = ",".join(str(paths.checkpoints / f"net{k}.pth") for k in range(2))
    r = run("extract", "--ckpt", ckpts, "--arch", "resnet10", "--dataset", "cifar10", "--transform", "32px",
            "--workers", "0", "--quiet")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "net0" in r.output and "written" in r.output and "images/s" in r.output
    r = run("extract", "--ckpt", ckpts, "--arch", "resnet10", "--dataset", "cifar10", "--transform", "32px", "--quiet")
    assert r.output.count("already complete") == 2

    rows = json.loads(run("ls", "--dataset", "cifar10", "--format", "json").output)
    assert [(x["store"], x["status"], x["dim"]) for x in rows] == [("net0", "complete", 512), ("net1", "complete", 512)]
    assert rows[0]["splits"]["train"]["rows"] == 60 and rows[0]["splits"]["test"]["complete"] is True
    r = run("verify", "--dataset", "cifar10", "net0", "net1")
    assert r.exit_code == 0 and r.output.count("OK") == 2

    r = run("probe", "--stores", "net0,net1", "--dataset", "cifar10", "--preset", "quick", "--epochs", "2",
            "--wd", "1e-4,1e-2", "--tag", "clitest")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "cat2 of net0, net1 (1024 features)" in r.output and "TEST top-1" in r.output and "research" in r.output
    r = run("results", "clitest", "cat2", "--format", "csv")
    header, line = r.output.strip().splitlines()
    assert header.startswith("time,tag,dataset,features") and ',clitest,cifar10,cat2,"net0,net1",' in line

    chunk = store_path(paths.cache, "cifar10", "net1") / "train" / "features" / "c" / "0" / "0"
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    r = run("verify", "--dataset", "cifar10", "net0", "net1")
    assert r.exit_code == 1 and "net1.zarr: FAILED" in r.output and "checksum" in r.output
    assert open_store(store_path(paths.cache, "cifar10", "net0")).verify() == []


def test_results_when_empty(run):
    r = run("results", "anything")
    assert r.exit_code == 0 and "no results matching anything" in r.output


def test_doctor(run):
    r = run("doctor")
    assert r.exit_code == 0 and "torchvision" in r.output and "cuda device" in r.output


def test_ema_flag_extracts_the_ema_weights(run, paths):
    write_cifar10(paths.data / "cifar", n_train_per_batch=2, n_test=4)
    path = write_timm(paths.checkpoints, make_net("resnet10", seed=0).state_dict(), "resnet10")
    common = ["--ckpt", str(path), "--arch", "resnet10", "--dataset", "cifar10", "--transform", "32px",
              "--split", "test", "--dtype", "float32", "--quiet"]  # fmt: skip
    assert run("extract", *common, "--store-name", "plain").exit_code == 0
    assert run("extract", *common, "--store-name", "ema", "--ema").exit_code == 0
    read = {n: open_store(store_path(paths.cache, "cifar10", n)) for n in ("plain", "ema")}
    assert read["ema"].provenance.checkpoint.ema and not read["plain"].provenance.checkpoint.ema
    ema_net, plain_net = make_net("resnet10", seed=EMA_SEED), make_net("resnet10", seed=0)
    reg = load_registry(paths)
    ds = build_dataset(reg.dataset("cifar10"), "test")
    x = torch.stack([pil_reference(reg.transform(reg.dataset("cifar10"), "32px"))(ds.load(i)) for i in range(len(ds))])
    for name, net in (("ema", ema_net), ("plain", plain_net)):
        assert np.abs(read[name].split("test").read() - reference_features(net, x).numpy()).max() < 1e-4


def test_dry_run_prints_the_resolved_preprocessing_and_writes_nothing(run, paths):
    net = torchvision.models.mobilenet_v3_small(weights=None)
    path = paths.checkpoints / "mnv3.pth"
    torch.save(net.state_dict(), path)
    r = run("extract", "--ckpt", str(path), "--arch", "mobilenet_v3_small", "--dataset", "cifar10", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "torchvision:MobileNet_V3_Small_Weights" in r.output and "mobilenet_v3_small" in r.output
    assert "cpu" in r.output and "fp32" in r.output and "mnv3.zarr" in r.output
    r = run("extract", "--ckpt", str(path), "--arch", "mobilenet_v3_small", "--dataset", "cifar10", "--transform",
            "32px", "--views", "4", "--explain")  # fmt: skip
    assert r.exit_code == 0 and "cifar-32px (dataset preset)" in r.output and "views: 4 of train" in r.output
    assert not paths.cache.exists() or not any(paths.cache.iterdir())


def test_the_architectures_own_preprocessing_is_used_and_recorded(run, paths):
    write_cifar10(paths.data / "cifar", n_train_per_batch=1, n_test=3)
    torch.manual_seed(0)
    path = paths.checkpoints / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    r = run("extract", "--ckpt", str(path), "--arch", "mobilenet_v3_small", "--dataset", "cifar10", "--split", "test",
            "--workers", "0", "--quiet", "--dtype", "float32")  # fmt: skip
    assert r.exit_code == 0, r.output
    store = open_store(store_path(paths.cache, "cifar10", "mnv3"))
    t = store.provenance.transform
    assert t["name"].startswith("torchvision:MobileNet_V3_Small_Weights") and (t["resize"], t["crop"]) == (256, 224)
    assert store.provenance.feature_dim == 1024  # the classifier's input, read from the model


def test_root_options_are_accepted_after_the_command_too(paths, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    make_store(paths.cache / "synthetic" / "s.zarr", {"train": (X, y), "test": (X, y)}, name="s")
    result = CliRunner().invoke(main, ["ls", "--cache-dir", str(paths.cache), "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output)[0]["store"] == "s", result.output
    # a store given by its path needs no --dataset; the results log may live elsewhere
    log = tmp_path / "elsewhere" / "log.jsonl"
    args = ["probe", "--stores", str(paths.cache / "synthetic" / "s.zarr"), "--preset", "quick", "--epochs", "1",
            "--allow-same-split", "--test-split", "test", "--results", str(log)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and log.is_file(), result.output
    assert not (paths.cache / "results.jsonl").exists()


def test_an_incomplete_store_is_named_wherever_it_is_listed(run, paths):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    whole = make_store(paths.cache / "synthetic" / "whole.zarr", {"train": (X, y), "test": (X, y)}, name="whole")
    half = make_store(paths.cache / "synthetic" / "half.zarr", {"train": (X, y), "test": (X, y)}, name="half",
                      chunks=1)  # fmt: skip
    for order in ((whole, half), (half, whole)):
        r = run("probe", "--stores", ",".join(map(str, order)), "--preset", "quick", "--epochs", "1")
        assert r.exit_code == 1 and "half.zarr is not complete (1/3 chunks written)" in r.output, r.output


# --- the CLI parses, the library works (issue 19) ------------------------------------------------------------


def test_the_cli_imports_no_store_solver_or_head_module():
    """cli/ builds no store, solver or head object: it imports none of those modules, in any function."""
    forbidden = {f"featcache.{m}" for m in ("store", "knn", "logreg", "heads")}
    files = sorted((REPO / "featcache" / "cli").glob("*.py")) or [REPO / "featcache" / "cli.py"]
    for path in files:
        package = ["featcache", "cli"] if path.parent.name == "cli" else ["featcache"]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):  # from ..x import y; from .. import x; from featcache.x import y
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                named = {module} | {f"{module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                named = {a.name for a in node.names}
            else:
                continue
            hit = {n for n in named for f in forbidden if n == f or n.startswith(f + ".")}
            assert not hit, f"{path.name}:{node.lineno} imports {hit}"
    heavy = ["torch", "featcache.knn", "featcache.logreg", "featcache.heads", "featcache.probe", "featcache.extract"]
    code = f"import sys, featcache.cli; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded  # --help and one-line errors need no torch


def test_a_probe_opens_each_store_once(run, paths, monkeypatch):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    for name in ("a", "b"):
        make_store(paths.cache / "synthetic" / f"{name}.zarr", {"train": (X, y), "test": (X, y)}, name=name)
    opened = Counter()
    real = Store.__init__

    def counting(self, path):
        opened[Path(path).name] += 1
        real(self, path)

    monkeypatch.setattr(Store, "__init__", counting)
    r = run("probe", "--stores", "a,b", "--dataset", "synthetic", "--preset", "quick", "--epochs", "1")
    assert r.exit_code == 0, r.output
    assert opened == {"a.zarr": 1, "b.zarr": 1}


def test_list_shows_every_registry_entry_and_why_a_broken_one_does_not_build(run, registry, paths, tmp_path,
                                                                             monkeypatch):  # fmt: skip
    (tmp_path / "configs").mkdir()  # ./configs: a layer on top of the packaged registries
    (tmp_path / "configs" / "checkpoints.yaml").write_text(
        "checkpoints:\n  typo: {arch: resnet50, path: t.pth, emma: true}\n  mine: {arch: resnet18, path: m.pth}\n"
    )
    monkeypatch.chdir(tmp_path)

    def listed(kind: str) -> dict[str, dict]:
        r = run("list", kind, "--format", "json")
        assert r.exit_code == 0, r.output
        return {row["name"]: row for row in json.loads(r.output)}

    ckpts = listed("checkpoints")
    assert ckpts["run3"]["arch"] == "resnet50" and ckpts["run3"]["path"] == str(registry.checkpoint("run3").path)
    assert ckpts["mine"]["file"] == "missing"
    assert "checkpoints.typo: unknown key(s) emma; known: arch, path, ema" in ckpts["typo"]["problem"]
    assert listed("sets")["full"]["checkpoints"] == list(registry.sets["full"])
    datasets = listed("datasets")
    assert datasets["cifar10"]["preset"] == registry.dataset("cifar10").probe and "imagefolder:<path>" in datasets
    assert listed("transforms")["cifar-32px"]["resize"] == registry.transforms["cifar-32px"].resize
    assert listed("presets")["quick"]["epochs"] == registry.preset("quick").epochs
    assert {"resnet10", "resnet50"} <= set(listed("archs"))
    csv = run("list", "presets", "--format", "csv").output.splitlines()
    assert csv[0].startswith("name,head,epochs") and len(csv) == 1 + len(registry.probe_presets)


def test_help_names_the_registry_entries_it_reads(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "datasets.yaml").write_text(
        "datasets:\n  adata: {format: imagefolder, splits: [train, val], transforms: {95px: cifar-32px}}\n"
    )  # help shows the first dozen names, sorted
    (extra / "probes.yaml").write_text("presets:\n  mypreset: {epochs: 2, weight_decays: [0.1]}\n")
    out = CliRunner().invoke(main, ["--config-dir", str(extra), "extract", "--help"]).output
    assert "adata" in out and "95px" in out, out
    out = CliRunner().invoke(main, ["--config-dir", str(extra), "probe", "--help"]).output
    assert "mypreset" in out, out
    out = CliRunner().invoke(main, ["--config-dir", str(tmp_path / "nowhere"), "extract", "--help"])
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "see `featcache list datasets`" in text  # a broken registry still gives help

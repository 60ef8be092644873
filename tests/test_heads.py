"""featcache.heads: the multi-head pass equals solo runs, and one head equals a torch.nn reference."""

from collections import OrderedDict

import pytest
import torch
from conftest import ArrayRows

from featcache.errors import ConfigError
from featcache.heads import HeadConfig, MultiHeadProbe
from featcache.heads_step import HeadTrainer

D, C = 64, 5
SMALL = {"epochs": 4, "batch_size": 64, "milestones": (2, 3), "lr": 0.05, "seed": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The matrices here are tiny; on a busy 2-core machine two spinning intra-op threads made this file
    # 10x slower (50 s instead of 4 s), one thread is both faster and stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int, seed: int, spread: float = 1.0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian features around class means; spread scales the means (small spread: overlapping classes)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(C, D, generator=torch.Generator().manual_seed(99)) * spread
    y = torch.randint(0, C, (n,), generator=g)
    # A non-zero offset and uneven scales give BatchNorm something to normalise.
    x = means[y] + torch.randn(n, D, generator=g) * torch.linspace(0.5, 3.0, D) + 2.0
    return x.to(dtype), y


def test_multi_head_pass_equals_solo_runs():
    x, y = _data(600, 0)
    xt, yt = _data(300, 1)
    wds = (1e-4, 1e-2, 5e-2)
    multi = MultiHeadProbe(HeadConfig(weight_decays=wds, **SMALL), D, C).fit(x, y, {"test": (xt, yt)})
    assert [r["epoch"] for r in multi.history_] == [1, 2, 3, 4]
    assert [r["lr"] for r in multi.history_] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    for h, wd in enumerate(wds):
        solo = MultiHeadProbe(HeadConfig(weight_decays=(wd,), **SMALL), D, C).fit(x, y, {"test": (xt, yt)})
        for key, value in solo.head_state(0).items():
            torch.testing.assert_close(multi.head_state(h)[key], value, atol=1e-5, rtol=0, msg=key)
        for rm, rs in zip(multi.history_, solo.history_, strict=True):
            for key in ("train_loss", "test_top1", "test_top5"):
                assert rm[key][h] == pytest.approx(rs[key][0], abs=1e-5), (h, key)
    # The heads really differ, so the comparison above is not between copies.
    assert (multi.weight_[0] - multi.weight_[2]).abs().max() > 1e-3
    # The running statistics are shared, the affine is per head.
    assert multi.running_mean_.shape == (D,) and multi.gamma_.shape == (3, D)


@pytest.mark.parametrize("nesterov", [True, False])
def test_lr_by_weight_decay_grid_equals_solo_runs(nesterov):
    x, y = _data(600, 0)
    xt, yt = _data(300, 1)
    lrs, wds = (0.01, 0.2), (1e-4, 5e-2)
    small = {**SMALL, "nesterov": nesterov}
    multi = MultiHeadProbe(HeadConfig(**small, lrs=lrs, weight_decays=wds), D, C).fit(x, y, {"test": (xt, yt)})
    assert multi.head_grid == ((0.01, 1e-4), (0.01, 5e-2), (0.2, 1e-4), (0.2, 5e-2))  # lr-major
    assert multi.history_[-1]["lr"] == pytest.approx([0.0001, 0.0001, 0.002, 0.002])  # milestones (2, 3)
    for h, (lr, wd) in enumerate(multi.head_grid):
        solo_cfg = HeadConfig(**{**small, "lr": lr}, weight_decays=(wd,))
        solo = MultiHeadProbe(solo_cfg, D, C).fit(x, y, {"test": (xt, yt)})
        for key, value in solo.head_state(0).items():
            torch.testing.assert_close(multi.head_state(h)[key], value, atol=1e-5, rtol=0, msg=key)
        for rm, rs in zip(multi.history_, solo.history_, strict=True):
            for key in ("train_loss", "test_top1", "test_top5"):
                assert rm[key][h] == pytest.approx(rs[key][0], abs=1e-5), (h, key)
    # Heads of the same weight decay and another lr really differ, so the lr reached each head.
    assert (multi.weight_[0] - multi.weight_[2]).abs().max() > 1e-2


def test_single_lr_in_lrs_is_bit_identical_to_lr():
    x, y = _data(300, 0)
    wds = (1e-4, 1e-2)
    a = MultiHeadProbe(HeadConfig(**SMALL, weight_decays=wds), D, C).fit(x, y)
    b = MultiHeadProbe(HeadConfig(**{**SMALL, "lr": 9.0}, lrs=[SMALL["lr"]], weight_decays=wds), D, C).fit(x, y)
    assert b.config.lrs == (0.05,) and b.head_grid == ((0.05, 1e-4), (0.05, 1e-2))
    for h in range(2):
        for key, value in a.head_state(h).items():
            assert torch.equal(b.head_state(h)[key], value), key
    assert a.history_ == b.history_


def _torch_head(cfg: HeadConfig, dtype) -> torch.nn.Sequential:
    """The seed's head as torch modules, with the documented init (float32 normal draw, Generator(seed))."""
    layers = OrderedDict(bn=torch.nn.BatchNorm1d(D), fc=torch.nn.Linear(D, C))
    if cfg.head == "linear":
        del layers["bn"]
    model = torch.nn.Sequential(layers).to(dtype)
    with torch.no_grad():
        g = torch.Generator().manual_seed(cfg.seed)
        model.fc.weight.copy_(torch.empty(C, D).normal_(0.0, cfg.init_std, generator=g))
        model.fc.bias.zero_()
    return model


def _reference(x, y, cfg: HeadConfig, dtype) -> torch.nn.Sequential:
    """The seed's training written with torch.nn, torch.optim.SGD and MultiStepLR."""
    model = _torch_head(cfg, dtype).train()
    groups = [{"params": list(model.fc.parameters()), "weight_decay": cfg.weight_decays[0]}]
    if cfg.head == "bn-linear":
        groups.append({"params": list(model.bn.parameters()), "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) == 1:  # the trainer drops a final batch of one row
                continue
            loss = torch.nn.functional.cross_entropy(model(x[idx].to(dtype)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model


# 600 rows leave a final batch of 24; 577 rows leave one of a single row, which must be dropped.
@pytest.mark.parametrize("n", [600, 577])
@pytest.mark.parametrize("head", ["bn-linear", "linear"])
def test_matches_torch_reference(n, head):
    # float64 on both sides: the comparison is about semantics, not float32 summation order.
    x, y = _data(n, 2, dtype=torch.float64)
    cfg = HeadConfig(head=head, weight_decays=(5e-3,), **SMALL)
    probe = MultiHeadProbe(cfg, D, C, dtype=torch.float64).fit(x, y)
    ref = _reference(x, y, cfg, torch.float64).state_dict()
    ours = probe.head_state(0)
    assert ours.keys() == ref.keys()
    for key, value in ref.items():
        torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=0, msg=key)
    # The parameters moved far from their init, so matching them means matching the training.
    assert (ref["fc.weight"].abs().max()) > 0.1
    if head == "bn-linear":
        assert (ref["bn.weight"] - 1).abs().max() > 1e-3
    # Loading the state into torch modules gives the probe's eval-mode logits.
    ref_model = _torch_head(cfg, torch.float64)
    ref_model.load_state_dict(ours)
    ref_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(probe.predict_logits(x[:50])[0], ref_model(x[:50]))


def test_float32_agrees_with_reference():
    x, y = _data(600, 2)
    cfg = HeadConfig(weight_decays=(5e-3,), **SMALL)
    ours = MultiHeadProbe(cfg, D, C).fit(x, y).head_state(0)
    ref = _reference(x, y, cfg, torch.float32).state_dict()
    for key in ("fc.weight", "fc.bias", "bn.weight", "bn.bias"):
        torch.testing.assert_close(ours[key], ref[key], atol=1e-4, rtol=0, msg=key)


@pytest.mark.parametrize("head", ["bn-linear", "linear"])
def test_separable_features_reach_full_accuracy(head):
    x, y = _data(1000, 4, spread=8.0)
    xt, yt = _data(400, 5, spread=8.0)
    cfg = HeadConfig(head=head, epochs=5, milestones=(), weight_decays=(1e-4, 5e-4))
    probe = MultiHeadProbe(cfg, D, C).fit(x, y, {"test": (xt, yt)})
    assert probe.evaluate(xt, yt) == {"top1": [100.0, 100.0], "top5": [100.0, 100.0]}
    assert probe.history_[-1]["test_top1"] == [100.0, 100.0]
    assert probe.history_[-1]["train_loss"][0] < probe.history_[0]["train_loss"][0]
    assert probe.predict_logits(xt).shape == (2, 400, C)
    assert probe.fit_epochs_ == 5 and probe.seconds_ > 0


def test_overlapping_classes_are_not_perfect():
    # The counterpart of the test above: accuracy is measured, not constant.
    x, y = _data(600, 0, spread=0.3)
    probe = MultiHeadProbe(HeadConfig(**SMALL), D, C).fit(x, y)
    top1, top5 = probe.evaluate(*_data(400, 1, spread=0.3)).values()
    assert 20 < top1[0] < 95 and top5 == [100.0]  # k = min(5, C) = 5 classes: top-5 is certain


def test_row_source_equals_tensor_input():
    x, y = _data(600, 6)
    xt, yt = _data(200, 7)
    x16, xt16 = x.half(), xt.half()
    cfg = HeadConfig(weight_decays=(1e-4, 1e-2), **SMALL)
    a = MultiHeadProbe(cfg, D, C).fit(x16, y, {"test": (xt16, yt)})
    rows = ArrayRows(x16.numpy())
    b = MultiHeadProbe(cfg, D, C).fit(rows, y.numpy(), {"test": (ArrayRows(xt16.numpy()), yt.numpy())})
    assert rows.calls == cfg.epochs * 10  # 600 rows in batches of 64, read through take()
    for h in range(2):
        for key, value in a.head_state(h).items():
            torch.testing.assert_close(b.head_state(h)[key], value, atol=0, rtol=0, msg=key)
    assert a.history_ == b.history_
    torch.testing.assert_close(b.predict_logits(ArrayRows(xt16.numpy())), a.predict_logits(xt16))


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 1}, "--batch-size"),
        ({"lr": -0.1}, "--lr"),
        ({"lr": 0.0}, "--lr"),
        ({"lrs": (0.1, -0.1)}, "--lr"),
        ({"lrs": ()}, "--lr"),
        ({"weight_decays": (1e-4, -1e-3)}, "--wd"),
        ({"weight_decays": ()}, "--wd"),
        ({"head": "mlp"}, "--head"),
        ({"momentum": 0.0}, "--momentum"),
    ],
)
def test_config_refuses_bad_values(kwargs, option):
    with pytest.raises(ConfigError, match=option):
        HeadConfig(**kwargs)


def test_config_accepts_lists_and_fit_checks_shapes():
    cfg = HeadConfig(weight_decays=[0.0, 1e-3], milestones=[1])
    assert cfg.weight_decays == (0.0, 1e-3) and hash(cfg)
    probe = MultiHeadProbe(cfg, D, C)
    x, y = _data(100, 0)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        probe.fit(x[:, :10], y)
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        probe.fit(x, y + 5)
    with pytest.raises(RuntimeError, match="fit"):
        probe.predict_logits(x)


# --- the step: what a CUDA graph needs, checked on the CPU ----------------------------------------------------


class StandInGraph:
    """A CUDA graph's protocol on the CPU: capture records nothing and returns a replay that runs the step again,
    reading whatever its static buffers hold then; counts captures and replays."""

    def __init__(self, fail: bool = False):
        self.captures, self.replays, self.fail = 0, 0, fail

    def __call__(self, fn, pool):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1

        def replay():
            self.replays += 1
            fn()

        return replay


class TwoViews:
    """EpochFeatures: view e % 2 at epoch e (another tensor each epoch, as augmented views are)."""

    def __init__(self, a, b):
        self.views = (a, b)

    def __len__(self):
        return len(self.views[0])

    def epoch(self, e):
        return self.views[e % 2]


# 600 rows: 18 full batches of 32 and a partial one of 24; 577: 18 and a final single row, left out
@pytest.mark.parametrize("n", [600, 577])
@pytest.mark.parametrize("lrs", [None, (0.01, 0.2)])
def test_graph_replays_equal_eager_steps(n, lrs):
    x, y = _data(n, 0)
    x2, _ = _data(n, 8)
    cfg = HeadConfig(**{**SMALL, "batch_size": 32}, lrs=lrs, weight_decays=(1e-4, 5e-2))
    eager = MultiHeadProbe(cfg, D, C, graphs=False).fit(TwoViews(x, x2.half()), y, {"test": (x, y)})
    graph = StandInGraph()
    graphed = MultiHeadProbe(cfg, D, C, graphs=graph).fit(TwoViews(x, x2.half()), y, {"test": (x, y)})
    # one capture per epoch (a graph holds its epoch's features only), after 3 eager warm-up steps
    assert graph.captures == cfg.epochs and graph.replays == cfg.epochs * 18 - 3
    for h in range(len(cfg.grid)):
        for key, value in eager.head_state(h).items():
            assert torch.equal(graphed.head_state(h)[key], value), key
    steps = cfg.epochs * (19 if n == 600 else 18)
    assert graphed.history_ == eager.history_ and graphed.num_batches_tracked_ == eager.num_batches_tracked_ == steps


def test_a_failed_capture_trains_eagerly_with_a_warning(caplog):
    x, y = _data(300, 0)
    cfg = HeadConfig(**SMALL, weight_decays=(1e-4, 5e-2))
    eager = MultiHeadProbe(cfg, D, C).fit(x, y)
    failing = MultiHeadProbe(cfg, D, C, graphs=StandInGraph(fail=True)).fit(x, y)
    assert "CUDA graph capture of the heads' step failed (RuntimeError" in caplog.text
    assert failing.history_ == eager.history_ and torch.equal(failing.weight_, eager.weight_)


def test_the_step_reads_nothing_back_from_the_device(monkeypatch):
    """A host read (item, tolist, bool, ...) on a GPU waits for it: the reads of a fit must not grow with its steps."""
    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **kw):
            reads.append(1)
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []
    for n in (96, 960):  # 3 and 30 steps per epoch
        x, y = _data(n, 0)
        reads.clear()
        MultiHeadProbe(HeadConfig(**{**SMALL, "batch_size": 32}), D, C, graphs=StandInGraph()).fit(x, y)
        counts.append(len(reads))
    assert counts[0] == counts[1] and counts[0] < 20 * SMALL["epochs"], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_steps_equal_eager_steps_and_never_synchronise(monkeypatch):
    x, y = _data(1000, 0)
    cfg = HeadConfig(**{**SMALL, "batch_size": 32}, weight_decays=(1e-4, 5e-2))
    xd, yd = x.cuda().half(), y.cuda()
    eager = MultiHeadProbe(cfg, D, C, device="cuda", graphs=False).fit(xd, yd)
    replays = []

    def strict(fn):  # a synchronising call in a step (eager or replayed) raises
        def run(*a, **kw):
            replays.append(fn.__name__)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return fn(*a, **kw)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return run

    monkeypatch.setattr(HeadTrainer, "step", strict(HeadTrainer.step))
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", strict(torch.cuda.CUDAGraph.replay))
    graphed = MultiHeadProbe(cfg, D, C, device="cuda").fit(xd, yd)
    assert replays.count("replay") == cfg.epochs * 31 - 3  # 31 full batches an epoch, 3 eager warm-up steps
    cpu = MultiHeadProbe(cfg, D, C).fit(x.half(), y)  # the flat update; CUDA's is torch's fused kernel
    for h in range(2):
        for key, value in eager.head_state(h).items():
            torch.testing.assert_close(graphed.head_state(h)[key], value, atol=1e-6, rtol=0, msg=key)
            torch.testing.assert_close(value.cpu(), cpu.head_state(h)[key], atol=1e-4, rtol=0, msg=key)

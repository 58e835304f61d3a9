"""Training: config errors, a tiny end-to-end run, checkpoint round trip, exact resume, fine-tuning onto a
new class list with frozen parts, and a 2-process DDP run (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_checkpoint import one_torch_thread, train_killed_at_validation  # noqa: F401 - one_torch_thread: autouse fixture
from training import engine
from training.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from training.config import ConfigError, config_to_dict, load_config
from training.ema import ModelEMA
from training.finetune import freeze_parts, set_train_mode, transfer_weights
from training.loss import build_loss
from training.model import detector_from_checkpoint
from training.schedule import build_optimizer, build_schedule, epochs_within

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
# Smaller than configs/tiny.yaml still: 64 px, 8 training bags (2 steps of 4), 4 validation bags.
TINY_OVERRIDES = [
    "model.input_size=64",
    "data.train.0.length=8",
    "data.val.0.length=4",
    "optim.epochs=1",
    "log_every=1000",
]
THREE = ["drug_package", "cash_bundle", "ivory"]




def tiny_config(*extra: str):
    return load_config(TINY, [*TINY_OVERRIDES, *extra])


def _checkpoint_for(config, *, perturb: bool = False) -> dict:
    """A checkpoint of a freshly built model, as the trainer writes it (no training)."""
    spec = engine.data_lib.preprocess_spec_for(config.model)
    model = engine.build_model(config, spec)
    if perturb:  # move BN statistics and weights off their defaults, so a lost tensor would show
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.dtype.is_floating_point:
                    t.add_(0.05 * torch.randn(t.shape, generator=gen))
                    if t.ndim == 1:
                        t.abs_()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    return build_checkpoint(
        config=config, spec=spec, model=model, ema=ModelEMA(model, decay=0.9), optimizer=optimizer,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        schedule=build_schedule(peak_lr=1e-3, epochs=1, steps_per_epoch=1, warmup_epochs=0),
        step=0, epoch=0, best_map50=None, metrics=None,
    )  # fmt: skip


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: 1\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="bogus"):
        load_config(TINY, ["optim.bogus=1"])
    with pytest.raises(ConfigError, match="minutes"):
        load_config(TINY, ["optim.minutes=0"])


def test_train_cli_rejects_unknown_override(tmp_path):
    from typer.testing import CliRunner

    from vision.cli import app

    result = CliRunner().invoke(app, ["train", "--config", str(TINY), "--out", str(tmp_path / "run"), "--set", "optim.bogus=1"])
    assert result.exit_code == 2
    assert "bogus" in result.output
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_tiny_run_leaves_the_run_folder(tmp_path):
    config = tiny_config("optim.epochs=2")
    last = engine.train(config, tmp_path / "run")
    run = tmp_path / "run"
    assert last == run / "last.ckpt" and last.is_file()
    assert (run / "best.ckpt").is_file()
    assert load_config(run / "config.yaml") == config  # the resolved config, loadable as is
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert all(x["world_size"] == 1 and x["images_per_rank"] == [8] for x in lines)
    assert {"train_loss", "val_map50", "val_map50_95", "val_bag_auroc", "val_pd_at_pfa"} <= set(lines[0])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and state["step"] == 4  # 8 bags / batch 4 = 2 steps per epoch
    assert state["classes"] == list(config.data.classes)
    best = load_checkpoint(run / "best.ckpt")
    assert "optimizer" not in best and "train_state_dict" not in best  # best.ckpt is for use, not resuming


def test_a_new_run_into_a_used_folder_keeps_only_its_own_metrics(tmp_path):
    engine.train(tiny_config(), tmp_path / "run")
    engine.train(tiny_config("seed=1"), tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0]  # not the first run's line as well


def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path):
    config = tiny_config()
    state = _checkpoint_for(config, perturb=True)
    path = save_checkpoint(state, tmp_path / "m.ckpt")
    loaded = load_checkpoint(path)
    original = detector_from_checkpoint(state)
    rebuilt = detector_from_checkpoint(loaded)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(original(x), rebuilt(x)):
            assert torch.equal(a, b)
    assert loaded["classes"] == list(config.data.classes)
    assert loaded["preprocess"] == {"input_kind": "rgb", "input_bits": 8, "height": 64, "width": 64, "pad_value": 114}
    assert loaded["config"] == config_to_dict(config)
    assert loaded["thresholds"] == {c: 0.5 for c in config.data.classes}
    assert loaded["postprocess"]["score_floor"] == pytest.approx(0.05)
    assert loaded["datasets"][0]["kind"] == "synth"
    assert len(loaded["config_hash"]) == 64


def test_resume_continues_exactly(tmp_path, monkeypatch):
    config = tiny_config("optim.epochs=2")
    engine.train(config, tmp_path / "straight")

    # The same run, killed when the second epoch is evaluated: last.ckpt then holds epoch 0.
    train_killed_at_validation(monkeypatch, config, tmp_path / "resumed", at=2)
    halfway = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert halfway["epoch"] == 0 and halfway["step"] == 2

    engine.train(config, tmp_path / "resumed", resume=tmp_path / "resumed" / "last.ckpt")
    a = load_checkpoint(tmp_path / "straight" / "last.ckpt")
    b = load_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert b["epoch"] == 1 and b["step"] == 4 and b["ema"] == a["ema"]
    lines = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    for key in ("train_state_dict", "state_dict"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], b["optimizer"]["state"][pid]["exp_avg"])
        assert int(st["step"]) == int(b["optimizer"]["state"][pid]["step"]) == 4


def test_finetune_reinitialises_class_conv_and_keeps_backbone():
    source = _checkpoint_for(tiny_config(), perturb=True)
    config = tiny_config(f"data.classes=[{','.join(THREE)}]")
    model = engine.build_model(config, engine.data_lib.preprocess_spec_for(config.model))
    report = transfer_weights(model, source, classes=THREE)
    assert not report.same_classes and report.shared_classes == tuple(THREE)
    src = source["state_dict"]
    sd = model.state_dict()
    key = "head.cls_branches.0.2.weight"
    assert sd[key].shape[0] == 3 and src[key].shape[0] == 7  # the class conv changed shape
    for name in sd:
        if name.startswith(("backbone.", "neck.", "head.box_branches.")):
            assert torch.equal(sd[name], src[name]), name
    src_classes = source["classes"]
    for k, name in enumerate(THREE):  # rows of classes both lists share are carried over
        assert torch.equal(sd[key][k], src[key][src_classes.index(name)])

    # Classes the source never had start from the fresh prior.
    other = tiny_config("data.classes=[drug_package,tobacco]")
    model2 = engine.build_model(other, engine.data_lib.preprocess_spec_for(other.model))
    fresh_bias = model2.head.cls_branches[0][-1].bias.detach().clone()
    source_renamed = dict(source, classes=["x" + c for c in src_classes])
    transfer_weights(model2, source_renamed, classes=["drug_package", "tobacco"])
    bias = model2.head.cls_branches[0][-1].bias
    assert torch.equal(bias, fresh_bias)


def test_frozen_parts_do_not_change_after_a_step():
    config = tiny_config(f"data.classes=[{','.join(THREE)}]")
    model = engine.build_model(config, engine.data_lib.preprocess_spec_for(config.model))
    prefixes = freeze_parts(model, ["backbone"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_train_mode(model, ["backbone"])
    assert not model.backbone.training and model.neck.training
    ema = ModelEMA(model, decay=0.5, frozen_prefixes=prefixes)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    loss_fn = build_loss(num_classes=3, reg_max=model.reg_max)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    out = loss_fn(model(x), [torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.zeros(0, 4)], [torch.tensor([1]), torch.zeros(0, dtype=torch.int64)])
    out.total.backward()
    opt.step()
    ema.update(model)
    after, ema_sd = model.state_dict(), ema.model.state_dict()
    for name in before:
        if name.startswith("backbone."):
            assert torch.equal(before[name], after[name]), name  # weights and BN running stats
            assert torch.equal(before[name], ema_sd[name]), name
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("neck."))


def test_finetune_run_from_checkpoint(tmp_path):
    source = save_checkpoint(_checkpoint_for(tiny_config(), perturb=True), tmp_path / "src.ckpt")
    config = tiny_config(
        f"data.classes=[{','.join(THREE)}]", f"finetune.checkpoint={source}", "finetune.freeze=[backbone]"
    )
    last = engine.train(config, tmp_path / "ft")
    state, src = load_checkpoint(last), load_checkpoint(source)
    assert state["classes"] == THREE and state["model_args"]["num_classes"] == 3
    # The source's training data stays in the provenance: the new weights carry it too.
    assert [d.get("via") for d in state["datasets"]] == [None, f"finetune:{source}"]
    for key in ("state_dict", "train_state_dict"):
        for name, tensor in state[key].items():
            if name.startswith("backbone."):
                assert torch.equal(tensor, src["state_dict"][name]), name


@pytest.mark.slow
def test_two_process_ddp_run(tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        "-m", "vision.cli", "train", "--config", str(TINY), "--out", str(run),
        *[a for o in TINY_OVERRIDES for a in ("--set", o)],
        "--set", "optim.minutes=10",  # rank 0 plans the epochs for both (here: the one epoch asked for)
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-8000:]
    assert (run / "last.ckpt").is_file()
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert line["world_size"] == 2
    assert line["images_per_rank"] == [4, 4]  # each rank trained on its own half of the 8 bags
    assert load_checkpoint(run / "last.ckpt")["step"] == 2  # global batch 4 = 2 per rank: 2 steps of 4 bags


def test_class_weights_favour_rare_classes_and_keep_the_loss_scale():
    counts = np.array([400.0, 100.0, 25.0, 0.0])
    w = engine.class_weights_from_counts(counts)
    assert w[0] < 1.0 < w[1] < w[2]
    assert w[1] / w[0] == pytest.approx(2.0)  # 1/√n: a 4× rarer class weighs 2×
    assert (counts * w).sum() / counts.sum() == pytest.approx(1.0)
    assert engine.class_weights_from_counts(np.array([1e6, 1.0]))[1] == 10.0  # clipped


def test_schedule_warms_up_then_decays_to_the_floor():
    from training.schedule import FINAL_LR_FRACTION

    s = build_schedule(peak_lr=1e-3, epochs=10, steps_per_epoch=10, warmup_epochs=1.0)
    lrs = [s.lr(i) for i in range(101)]
    assert s.warmup_steps == 10 and s.total_steps == 100
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising through the warm-up
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then never rising
    assert lrs[100] == pytest.approx(1e-3 * FINAL_LR_FRACTION)


def test_epochs_within_a_budget_follow_the_pace_so_far():
    # 2 epochs in 20 s of a 100 s budget: 8 more fit at 10 s each.
    assert epochs_within(done=2, elapsed_s=20.0, budget_s=100.0, max_epochs=30) == 10
    assert epochs_within(done=2, elapsed_s=20.0, budget_s=100.0, max_epochs=6) == 6  # capped by optim.epochs
    assert epochs_within(done=2, elapsed_s=20.0, budget_s=29.0, max_epochs=30) == 2  # a third would overrun
    assert epochs_within(done=3, elapsed_s=40.0, budget_s=30.0, max_epochs=30) == 3  # spent: stop now
    assert epochs_within(done=0, elapsed_s=0.0, budget_s=30.0, max_epochs=30) == 30  # no pace yet


def test_a_run_with_a_time_budget_stops_in_time_with_its_cosine_ended(tmp_path):
    config = tiny_config("optim.epochs=50", "optim.minutes=0.05")  # 3 s: a few epochs of this tiny set
    last = engine.train(config, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 50
    state = load_checkpoint(last)
    assert state["epoch"] == len(lines) - 1
    # The schedule was re-fitted to end with the last epoch run: the cosine reached its floor there.
    assert state["scheduler"]["total_steps"] == state["step"] == 2 * len(lines)


def test_ema_follows_early_weights_then_averages():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.999, tau=10.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # d ≈ 0.095 at the first update: the average jumps most of the way
    first = ema.model.weight.detach().clone()
    assert torch.all(first > 0.8)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == pytest.approx(0.999, rel=1e-6)
    assert torch.allclose(ema.model.weight, torch.ones(1, 2))


def test_amp_dtype_follows_the_device_and_the_cpu(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engine.amp_dtype(False, cpu) is None and engine.amp_dtype(False, cuda) is None
    assert engine.amp_dtype(True, cuda) == torch.float16
    for avx512_bf16, amx, expected in ((True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert engine.amp_dtype(True, cpu) == expected


def test_mixed_precision_run_saves_float32_weights_that_load_anywhere(tmp_path, monkeypatch):
    """A CPU run under bfloat16 autocast (forced on, whatever this CPU is) keeps float32 master weights, and
    they differ from a float32 run's (autocast was in effect); its checkpoint (channels-last tensors)
    rebuilds a model with finite outputs."""
    monkeypatch.setattr(engine, "amp_dtype", lambda enabled, device: torch.bfloat16 if enabled else None)
    states = {}
    for amp in ("true", "false"):
        last = engine.train(tiny_config("optim.epochs=1", f"optim.amp={amp}"), tmp_path / amp)
        states[amp] = load_checkpoint(last)["state_dict"]
    weights = {k: t for k, t in states["true"].items() if t.dtype.is_floating_point}
    assert weights and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())
    assert any(not torch.equal(t, states["false"][k]) for k, t in weights.items())
    model = detector_from_checkpoint(load_checkpoint(tmp_path / "true" / "last.ckpt")).eval()
    boxes, scores = model(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()

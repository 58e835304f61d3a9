"""Review of the training loop and its state: what a kill leaves behind, the wall-clock budget, resuming a
budgeted run, config overrides and the EMA settings on resume."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest

from tiny_checkpoint import one_torch_thread, train_killed_at_validation  # noqa: F401 - one_torch_thread: autouse fixture
from training import engine, run_record
from training.checkpoint import load_checkpoint
from training.config import ConfigError, load_config
from training.run_record import RunRecorder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
TINY_OVERRIDES = [  # as tests/test_train.py: 64 px, 2 steps of 4 bags per epoch, 4 validation bags
    "model.input_size=64",
    "data.train.0.length=8",
    "data.val.0.length=4",
    "optim.epochs=1",
    "log_every=1000",
]




def tiny_config(*extra: str):
    return load_config(TINY, [*TINY_OVERRIDES, *extra])


class _Interrupt(Exception):
    pass


class _FakeClock:
    """engine.time replaced: perf_counter advances only by what the wrapped training and validation add."""

    def __init__(self, monkeypatch, *, train_s: float, val_s: float, setup_s: float = 0.0) -> None:
        self.now = 0.0
        monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: self.now))
        real_epoch, real_validate, real_data = engine.train_one_epoch, engine.validate, engine.build_train_data

        def data(*a, **kw):
            self.now += setup_s  # e.g. counting a large dataset's annotations for the class weights
            return real_data(*a, **kw)

        def epoch(*a, **kw):
            out = real_epoch(*a, **kw)
            self.now += train_s
            return out

        def validate(*a, **kw):
            out = real_validate(*a, **kw)
            self.now += val_s
            return out

        monkeypatch.setattr(engine, "build_train_data", data)
        monkeypatch.setattr(engine, "train_one_epoch", epoch)
        monkeypatch.setattr(engine, "validate", validate)


def _line(epoch: int, map50: float | None) -> dict:
    return {"epoch": epoch, "step": epoch + 1, "val_map50": map50, "val_pd_at_pfa": {}}


def test_a_kill_while_best_ckpt_is_written_leaves_last_ckpt_consistent(tmp_path, monkeypatch):
    """best.ckpt is written before last.ckpt: a kill between the two must not leave a last.ckpt whose
    best_map50 names an epoch best.ckpt never got (resuming from it would never write that best)."""
    real_save = run_record.save_checkpoint

    def save(state, path):
        if Path(path).name == "best.ckpt":
            raise _Interrupt
        return real_save(state, path)

    monkeypatch.setattr(run_record, "save_checkpoint", save)
    rec = RunRecorder(tmp_path)
    state = {"format": "xscreen.checkpoint", "format_version": 1, "epoch": 0, "best_map50": 0.3, "optimizer": {}}
    with pytest.raises(_Interrupt):
        rec.epoch(_line(0, 0.3), state, improved=True)
    rec.close()
    assert not (tmp_path / "last.ckpt").exists() or (tmp_path / "best.ckpt").exists()


def test_resume_without_a_map_ranks_epochs_as_the_uninterrupted_run(tmp_path):
    """A validation set without ground truth gives mAP None: the straight run keeps the first epoch's
    best.ckpt; a resumed run (best_map50 None in last.ckpt) must not count its next epoch as an improvement."""
    straight = RunRecorder(tmp_path / "a")
    assert straight.score(_line(0, None)) == (True, None)
    assert straight.score(_line(1, None)) == (False, None)
    straight.close()
    resumed = RunRecorder(tmp_path / "b", start_epoch=1, start_step=1, best_map50=None)
    assert resumed.score(_line(1, None)) == (False, None)
    resumed.close()


def test_a_time_budget_counts_validation_and_is_not_overrun(tmp_path, monkeypatch):
    """1 s of training and 3 s of validation per epoch, a 12 s budget: 3 epochs fit. The first re-plan
    (before that epoch's validation) used to see 1 s an epoch, plan 12 and run a fourth epoch to 16 s."""
    clock = _FakeClock(monkeypatch, train_s=1.0, val_s=3.0)
    last = engine.train(tiny_config("optim.epochs=50", "optim.minutes=0.2"), tmp_path / "run")
    assert clock.now <= 12.0 + 1e-9
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    state = load_checkpoint(last)
    assert len(lines) == 3 and state["scheduler"]["total_steps"] == state["step"] == 6


def test_a_time_budget_counts_the_set_up_before_the_first_epoch(tmp_path, monkeypatch):
    """optim.minutes budgets the command: 4 s of set-up leave 8 s, two epochs of 1 + 3 s."""
    clock = _FakeClock(monkeypatch, train_s=1.0, val_s=3.0, setup_s=4.0)
    engine.train(tiny_config("optim.epochs=50", "optim.minutes=0.2"), tmp_path / "run")
    assert clock.now <= 12.0 + 1e-9
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resuming_a_budgeted_run_keeps_its_fitted_cosine(tmp_path, monkeypatch):
    """A run with optim.minutes re-fits its cosine to the epochs that fit; resumed from last.ckpt, its next
    epoch must take the learning rates of that plan, not those of the full optim.epochs cosine."""
    config = tiny_config("optim.epochs=50", "optim.minutes=0.2")
    _FakeClock(monkeypatch, train_s=1.0, val_s=3.0)
    train_killed_at_validation(monkeypatch, config, tmp_path / "run", at=2)
    saved = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert saved["epoch"] == 0 and saved["scheduler"]["total_steps"] < 50 * 2
    plan = engine.WarmupCosine(
        peak_lr=saved["scheduler"]["peak_lr"], total_steps=saved["scheduler"]["total_steps"],
        warmup_steps=saved["scheduler"]["warmup_steps"],
    )  # fmt: skip

    lrs: list[float] = []
    real_set_lr = engine.set_lr
    monkeypatch.setattr(engine, "set_lr", lambda opt, lr: (lrs.append(lr), real_set_lr(opt, lr)))
    engine.train(config, tmp_path / "run", resume=tmp_path / "run" / "last.ckpt")
    assert lrs[:2] == pytest.approx([plan.lr(2), plan.lr(3)])


def test_resume_takes_the_configs_ema_decay(tmp_path):
    """Resuming with --set optim.ema_decay=… : the EMA must average with the config's decay (the one the
    new checkpoint's config records), not silently keep the checkpoint's."""
    engine.train(tiny_config(), tmp_path / "run")
    config = tiny_config("optim.epochs=2", "optim.ema_decay=0.5")
    last = engine.train(config, tmp_path / "run", resume=tmp_path / "run" / "last.ckpt")
    state = load_checkpoint(last)
    assert state["config"]["optim"]["ema_decay"] == 0.5
    assert state["ema"]["decay"] == 0.5 and state["ema"]["updates"] == 4


def test_set_with_a_list_index_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data\.train\.3"):
        load_config(TINY, ["data.train.3.length=8"])
    with pytest.raises(ConfigError, match=r"data\.train\.x"):
        load_config(TINY, ["data.train.x.length=8"])


def test_set_takes_exponent_notation_for_numbers(tmp_path):
    """YAML 1.1 reads `1e-4` (no dot) as a string; a learning rate is usually written that way."""
    config = load_config(TINY, ["optim.lr=1e-4", "optim.weight_decay=5E-4", "optim.minutes=1e1"])
    assert config.optim.lr == 1e-4 and config.optim.weight_decay == 5e-4 and config.optim.minutes == 10.0
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 2e-3\n")
    assert load_config(f).optim.lr == 2e-3
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(TINY, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(TINY, ["optim.lr=nan"])
    assert not math.isnan(config.optim.lr)
    with pytest.raises(ConfigError, match="optim.epochs"):
        load_config(TINY, ["optim.epochs=1e1"])  # an integer field takes integers only



def test_a_checkpoint_is_on_disk_before_it_replaces_the_previous_one(tmp_path, monkeypatch):
    """After a power loss a renamed-but-unflushed last.ckpt can come back empty: the new file's bytes are
    flushed before the rename, and the folder after it."""
    import os

    from training import checkpoint as ckpt_mod

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "fsync", fsync)
    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    target = tmp_path / "last.ckpt"
    ckpt_mod.save_checkpoint({"format": "x", "weights": list(range(10))}, target)
    assert events == [("fsync", str(tmp_path / "last.ckpt.tmp")), ("replace", str(target)), ("fsync", str(tmp_path))]


@pytest.mark.parametrize("override", ["optim.epochs=-1", "optim.epochs=0", "optim.batch_size=0", "optim.lr=0",
                                      "optim.ema_decay=1.0", "optim.weight_decay=-1"])
def test_set_refuses_training_counts_and_rates_that_cannot_train(override):
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        load_config(None, [override])
    load_config(None, ["optim.epochs=1", "optim.batch_size=1", "optim.ema_decay=0.0", "optim.warmup_epochs=0"])

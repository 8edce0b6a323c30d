"""Unit tests of the training engine's pieces: config, checkpoints, schedule, optimiser, EMA."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from torch import nn

import imrec
from imrec.classify.train import class_weights
from imrec.config import RunConfig, build_config
from imrec.core.checkpoint import (
    CheckpointError,
    flatten_optimizer,
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    save_train_state,
    unflatten_optimizer,
)
from imrec.core.errors import TrainError
from imrec.engine.ema import ModelEma
from imrec.engine.loop import Trainer, binomial_margin, keeps
from imrec.engine.optim import lr_factor, make_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
    net.head = nn.Linear(8, 3)
    return net


def test_config_round_trips_through_json():
    cfg = build_config(
        "mnist",
        "handwriting",
        "best",
        data={"augment_off": ("rotate",)},
        train={"epochs": 2, "lr": 0.01},
    )
    back = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg
    assert back.loop.epochs == 2 and back.data.augment_off == ("elastic", "erasing", "rotate")


def test_training_options_are_grouped_and_typos_are_named():
    from imrec.config import TRAIN_GROUPS, TrainConfig, split_train

    # Every flat option belongs to exactly one group, and the flat view has them all.
    names = [f.name for cls in TRAIN_GROUPS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))
    assert names == [f.name for f in dataclasses.fields(TrainConfig)]
    cfg = build_config("mnist", "handwriting", train={"lr": 0.02, "epochs": 1, "threads": 1})
    assert (cfg.optim.lr, cfg.loop.epochs, cfg.hardware.threads) == (0.02, 1, 1)
    assert cfg.train.lr == 0.02 and cfg.train.batch_size == cfg.loop.batch_size
    with pytest.raises(TrainError, match=r"unknown training option\(s\) \['epoch'\]"):
        split_train({"epoch": 2})
    with pytest.raises(TrainError, match="'epoch'"):
        imrec.fit("digits", train={"epoch": 2}, progress=False)


def test_user_overrides_win_over_recipe_and_other_model_drops_recipe_options():
    cfg = build_config("mnist", "handwriting", "best", model={"name": "mlp"})
    assert cfg.model.name == "mlp" and cfg.model.options == {}
    assert cfg.optim.ema  # the rest of the best recipe still applies
    with pytest.raises(ValueError, match="preset"):
        build_config("mnist", "handwriting", "huge")


def test_best_preset_never_trains_less_than_the_default():
    """``--preset best`` is the longer recipe for every built-in dataset (a domain's best
    recipe once fell back to fewer epochs than a dataset's own default: letters 15 against 20)."""
    from imrec.data import registry

    checked = []
    for entry in registry.entries():
        if entry.kind == "prefix":
            continue  # folder:, coco:, yolo: paths: the length follows the data
        domain = getattr(entry.info, "domain", "photo")
        fast, best = (
            build_config(entry.name, domain, p, task=entry.task) for p in ("fast", "best")
        )
        assert best.loop.epochs >= fast.loop.epochs, entry.name
        assert best.model.members >= fast.model.members, entry.name
        checked.append(entry.name)
    assert {"letters", "hanzi", "mnist", "chars74k", "digits-detect", "coco128"} <= set(checked)
    assert build_config("letters", "handwriting", "best").loop.epochs == 20
    # The letters recipe smooths its targets (whatever the options after the colon).
    for name in ("letters", "letters:fold=2,case=upper"):
        for preset in ("fast", "best"):
            cfg = build_config(name, "handwriting", preset)
            assert cfg.optim.label_smoothing == 0.1, (name, preset)
            assert cfg.model.members == 2, (name, preset)  # and trains a 2-member ensemble


def test_model_opt_and_augment_off_tweak_the_recipe_a_named_model_keeps_its_options():
    best = build_config("mnist", "handwriting", "best")
    assert best.model.options == {"size": "m", "width": 24}
    assert best.data.augment_off == ("elastic", "erasing")
    # --model-opt alone changes one option of the recipe's network; --augment-off adds to
    # what the recipe switched off (it never switches an option back on)
    tweaked = build_config(
        "mnist",
        "handwriting",
        "best",
        model={"options": {"width": 32}},
        data={"augment_off": ("rotate", "erasing")},
    )
    assert tweaked.model.options == {"size": "m", "width": 32}
    assert tweaked.data.augment_off == ("elastic", "erasing", "rotate")
    # hanzi's best is its default network for longer, not the handwriting best's small cnn
    hanzi = build_config("hanzi", "handwriting", "best")
    default = build_config("hanzi", "handwriting", "fast")
    # with the neck since stop 60 (in full: better on renders and on the real writers)
    want = {"size": "s", "width": 64, "neck": 256}
    assert hanzi.model.options == default.model.options == want
    assert hanzi.loop.epochs == 2 * default.loop.epochs == 24
    assert not hanzi.optim.ema and hanzi.data.augment_off == ("elastic", "erasing")
    # both smooth their targets (stop 58: in full, a little better on renders and real writers)
    assert hanzi.optim.label_smoothing == default.optim.label_smoothing == 0.1
    assert build_config("hanzi:chars=永中国", "handwriting").optim.label_smoothing == 0.1
    # a named model with options (--model NAME --model-opt, or --init's checkpoint network)
    # keeps only its own options: a size-s checkpoint must not be rebuilt as the recipe's size m
    named = build_config(
        "mnist", "handwriting", "best", model={"name": "cnn", "options": {"width": 28}}
    )
    assert named.model.options == {"width": 28}
    # naming the recipe's own model alone (--model cnn) keeps the recipe's network
    assert build_config("hanzi", "handwriting", model={"name": "cnn"}).model.options == want


def test_checkpoint_round_trip_and_embedded_metadata(tmp_path):
    sd = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(2)}
    meta = {"model": {"name": "x"}, "classes": ["零", "一"]}
    weights = save_checkpoint(tmp_path / "best", sd, meta)
    assert weights.name == "best.safetensors"
    assert json.loads((tmp_path / "best.json").read_text(encoding="utf-8")) == meta
    loaded, meta2 = load_checkpoint(tmp_path)  # a run folder resolves to best.safetensors
    assert meta2 == meta and torch.equal(loaded["w"], sd["w"])
    (tmp_path / "best.json").unlink()  # the weights file alone is self-describing
    assert load_checkpoint(weights)[1] == meta
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_or_foreign_checkpoints_fail_clearly(tmp_path):
    weights = save_checkpoint(tmp_path / "best", {"w": torch.ones(100)}, {"model": {"name": "x"}})
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(weights)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")  # neither file nor folder
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="run folder"):
        load_checkpoint(tmp_path / "d")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not written by imrec"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_train_state_restores_optimizer_exactly(tmp_path):
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).sum().backward()
        opt.step()
    tensors, rest = flatten_optimizer(opt.state_dict())
    save_train_state(
        tmp_path / "s.safetensors", {"model": net.state_dict(), "optim": tensors}, {"optim": rest}
    )
    parts, meta = load_train_state(tmp_path / "s.safetensors")
    net2 = _net()
    net2.load_state_dict(parts["model"])
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.1)
    opt2.load_state_dict(unflatten_optimizer(parts["optim"], meta["optim"]))
    x = torch.randn(5, 4)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).sum().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "onecycle") == pytest.approx(0.04)
    assert lr_factor(10, 100, 10, "onecycle") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "onecycle") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(80, 100, 10, "constant") == 1.0
    with pytest.raises(TrainError, match="schedule"):
        lr_factor(50, 100, 10, "step")


def test_optimizer_groups_skip_decay_on_biases_and_scale_the_head():
    cfg = build_config("x", "handwriting", train={"head_lr_mult": 10.0, "optimizer": "sgd"}).optim
    opt = make_optimizer(_net(), cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    for g in opt.param_groups:
        assert (g["weight_decay"] > 0) == all(p.ndim > 1 for p in g["params"])
        assert g["lr_mult"] == (10.0 if g["is_head"] else 1.0)
    with pytest.raises(TrainError, match="optimizer"):
        make_optimizer(_net(), build_config("x", "handwriting", train={"optimizer": "lbfgs"}).optim)


def test_class_weights_are_inverse_frequency():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert w[0] * 3 == pytest.approx(w[1].item())
    assert w[2] == 0 and w[w > 0].mean() == pytest.approx(1.0)


def test_ema_tracks_weights_and_copies_buffers():
    net = _net()
    ema = ModelEma(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 4))  # moves the BatchNorm statistics
    ema.update(net)  # first update: decay min(0.5, 2/11)
    d = 2 / 11
    first_w = ema.module[0].weight
    assert torch.allclose(first_w, net[0].weight - d * 1.0)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)


def test_mlp_trains_without_augmentation_unless_asked():
    assert build_config("mnist", "handwriting", model={"name": "mlp"}).data.augment == "none"
    asked = build_config("mnist", "handwriting", model={"name": "mlp"}, data={"augment": "auto"})
    assert asked.data.augment == "auto"
    assert build_config("mnist", "handwriting").data.augment == "auto"


def test_a_checkpoint_json_edited_alone_is_named_not_silently_ignored(tmp_path, recwarn):
    """The weights' header is what imrec reads; a .json changed by hand gets a warning."""
    from imrec.core.checkpoint import read_checkpoint_meta

    meta = {"model": {"name": "x"}, "ink": {"soften": 0.015625}, "t": float("nan")}
    save_checkpoint(tmp_path / "best", {"w": torch.ones(2)}, meta)
    load_checkpoint(tmp_path)
    read_checkpoint_meta(tmp_path)
    assert not recwarn.list  # as saved (a NaN included): nothing to say
    edited = {**meta, "ink": {"soften": 0.02}}
    (tmp_path / "best.json").write_text(json.dumps(edited), encoding="utf-8")
    with pytest.warns(UserWarning, match=r"best\.json differs .* ignores the \.json"):
        _, got = load_checkpoint(tmp_path)
    assert got["ink"]["soften"] == 0.015625  # the header's, as every reader uses
    read_checkpoint_meta(tmp_path / "best.safetensors")  # said once a process, not again
    assert not recwarn.list
    edited["ink"]["soften"] = 0.03  # a new edit is said again
    (tmp_path / "best.json").write_text(json.dumps(edited), encoding="utf-8")
    with pytest.warns(UserWarning, match="differs"):
        read_checkpoint_meta(tmp_path / "best.safetensors")
    (tmp_path / "best.json").write_text("{not json", encoding="utf-8")
    load_checkpoint(tmp_path)  # an unreadable copy: the weights are self-describing
    assert not recwarn.list


def test_checkpoint_files_get_normal_permissions(tmp_path):
    import os

    save_checkpoint(tmp_path / "best", {"w": torch.ones(1)}, {"model": {"name": "x"}})
    mask = os.umask(0)
    os.umask(mask)
    for name in ("best.safetensors", "best.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_checkpoint_metadata_alone_is_readable(tmp_path):
    from imrec.core.checkpoint import read_checkpoint_meta

    meta = {"model": {"name": "x"}, "classes": ["a", "b"]}
    save_checkpoint(tmp_path / "best", {"w": torch.ones(3)}, meta)
    assert read_checkpoint_meta(tmp_path) == meta
    (tmp_path / "best.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint_meta(tmp_path)


def test_compiled_training_step_trains_the_models_own_weights(tmp_path):
    """--compile trains through torch.compile; the checkpoint holds the plain model's weights."""
    import imrec

    report = imrec.fit(
        "digits",
        out=tmp_path / "run",
        model={"name": "mlp"},
        train={"epochs": 2, "compile": True, "figures": False},
        progress=False,
    )
    assert report["config"]["hardware"]["compile"] is True
    assert report["test"]["accuracy"] > 0.8  # 10 classes: it learnt, through the compiled step
    weights, _ = load_checkpoint(tmp_path / "run")
    assert not any(k.startswith("_orig_mod.") for k in weights)


def test_host_and_device_data_placement_train_alike(tmp_path):
    """The training set kept in host memory (copied per batch) trains exactly as on the device."""
    import imrec
    from imrec.engine.placement import choose_placement

    reports = {}
    for mode in ("device", "host"):
        reports[mode] = imrec.fit(
            "digits",
            out=tmp_path / mode,
            train={"epochs": 2, "data_placement": mode, "seed": 1, "figures": False},
            progress=False,
        )
        assert reports[mode]["data_placement"] == mode
    assert reports["host"]["test"]["accuracy"] == reports["device"]["test"]["accuracy"]
    assert reports["host"]["test"]["nll"] == pytest.approx(
        reports["device"]["test"]["nll"], abs=1e-6
    )
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    assert choose_placement("auto", images, torch.device("cpu")) == "device"
    with pytest.raises(TrainError, match="data placement"):
        choose_placement("gpu", images, torch.device("cpu"))


def test_learning_rates_held_as_tensors_survive_a_save_and_load(tmp_path):
    """GPU optimisers keep lr in tensors (CUDA graphs read them): saved as numbers, restored
    into the same tensor objects, and set in place."""
    from imrec.engine.optim import restore_optimizer_mode, set_lr

    def tensor_lr_adamw(net):
        groups = [
            {"params": [p], "lr": torch.tensor(0.1), "lr_mult": 1.0} for p in net.parameters()
        ]
        return torch.optim.AdamW(groups, lr=0.1, foreach=False)

    net = _net()
    opt = tensor_lr_adamw(net)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    set_lr(opt, 0.02)
    tensors, rest = flatten_optimizer(opt.state_dict())
    json.dumps(rest)  # plain numbers only
    assert [g["lr"] for g in rest["param_groups"]] == pytest.approx([0.02] * len(opt.param_groups))
    save_train_state(tmp_path / "s.safetensors", {"optim": tensors}, {"optim": rest})
    parts, meta = load_train_state(tmp_path / "s.safetensors")
    opt2 = tensor_lr_adamw(_net())
    lrs = [g["lr"] for g in opt2.param_groups]
    groups = [dict(g) for g in opt2.param_groups]
    opt2.load_state_dict(unflatten_optimizer(parts["optim"], meta["optim"]))
    restore_optimizer_mode(opt2, groups)
    assert all(g["lr"] is lr for g, lr in zip(opt2.param_groups, lrs, strict=True))
    assert all(lr.item() == pytest.approx(0.02) for lr in lrs)
    set_lr(opt2, 0.5)
    assert all(lr.item() == pytest.approx(0.5) for lr in lrs)


def test_training_images_streamed_from_files_train_exactly_as_in_memory(tmp_path):
    """--data-placement stream: DataLoader workers decode the same batches the in-memory path
    gathers, so the run's numbers are identical; report and config say how it ran."""
    from conftest import bar_folder

    import imrec

    bar_folder(tmp_path / "glyphs", per_class=30)
    reports = {}
    for mode in ("device", "stream"):
        reports[mode] = imrec.fit(
            f"folder:{tmp_path / 'glyphs'}",
            out=tmp_path / mode,
            model={"name": "cnn"},
            train={
                "epochs": 5,
                "batch_size": 16,
                "data_placement": mode,
                "workers": 1,
                "figures": False,
            },  # fmt: skip
            progress=False,
        )
        assert reports[mode]["data_placement"] == mode
    assert reports["device"]["data_workers"] is None
    assert reports["stream"]["data_workers"] == {"count": 1, "priority": "idle"}  # files too
    assert reports["stream"]["test"]["accuracy"] == reports["device"]["test"]["accuracy"]
    assert reports["stream"]["test"]["nll"] == pytest.approx(
        reports["device"]["test"]["nll"], abs=1e-6
    )
    assert reports["stream"]["test"]["accuracy"] > 0.6  # 3 classes: it learnt
    with pytest.raises(TrainError, match="folder:PATH"):
        imrec.fit("digits", out=tmp_path / "d", train={"data_placement": "stream"}, progress=False)


class _SchedulingProbe:
    """Stands in for a streamed training split: each item is how the worker that read it is
    scheduled (its policy, its nice value and its torch threads)."""

    def __init__(self, fresh: bool):
        self.fresh = fresh

    def read(self, i: int) -> torch.Tensor:
        return torch.tensor(
            [os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0), torch.get_num_threads()]
        )


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_data_workers_give_way_to_the_training_step():
    """Workers that draw fresh images (renders) or decode files run at the lowest CPU priority,
    so that the step's threads always come first, and by default on every core of this
    process's share (files: at most 8); with --worker-priority normal, the normal priority and
    a core left to the step."""
    from imrec.engine.distributed import cpu_threads
    from imrec.engine.placement import StreamLoader, default_workers

    normal = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    assert normal[0] != os.SCHED_IDLE
    for fresh in (True, False):
        for priority in ("idle", "normal"):
            probe = _SchedulingProbe(fresh)
            loader = StreamLoader(probe, torch.zeros(6, dtype=torch.long), 2, False, 1, priority)
            rows = {tuple(r.tolist()) for x, _ in loader.epoch([[0, 1], [2, 3], [4, 5]]) for r in x}
            assert loader.info == {"count": 2, "priority": priority}  # what the report says
            assert {r[2] for r in rows} == {1}  # one thread in each worker
            if priority == "idle":
                assert {r[0] for r in rows} == {os.SCHED_IDLE}, fresh
            else:
                assert {r[:2] for r in rows} == {normal}, fresh
    share = cpu_threads(1)
    spare = max(1, share - 1)
    assert default_workers(_SchedulingProbe(True)) == share
    assert default_workers(_SchedulingProbe(True), priority="normal") == spare
    assert default_workers(_SchedulingProbe(False)) == min(8, share)
    assert default_workers(_SchedulingProbe(False), priority="normal") == min(8, spare)
    assert default_workers(_SchedulingProbe(False), local_size=share) == 1  # torchrun's share


def test_runs_recorded_with_the_old_render_priority_still_load():
    """Stop 63-64 runs wrote the option as render_priority (grouped and flat layouts), and
    --render-priority still parses: both are --worker-priority."""
    from imrec.cli import build_parser
    from imrec.config import RunConfig, split_train

    grouped = RunConfig().to_dict()
    grouped["hardware"] = {"render_priority": "normal"}
    assert RunConfig.from_dict(grouped).hardware.worker_priority == "normal"
    assert RunConfig.from_dict({"train": {"render_priority": "normal"}}).train.worker_priority == (
        "normal"
    )
    assert split_train({"render_priority": "normal"})["hardware"] == {"worker_priority": "normal"}
    parser = build_parser()
    for flag in ("--render-priority", "--worker-priority"):
        assert parser.parse_args(["train", "mnist", flag, "normal"]).worker_priority == "normal"
    assert parser.parse_args(["train", "mnist"]).worker_priority is None  # the recipe's
    with pytest.raises(TrainError, match="unknown training option"):
        split_train({"render_priorty": "normal"})


def test_bf16_autocast_on_the_cpu_is_opt_in(tmp_path):
    """--amp bf16 on a CPU with bf16 instructions trains in bf16; auto stays fp32 there (bf16
    cost MNIST accuracy: 99.28% vs 99.39%); without the instructions it is refused."""
    import imrec
    from imrec.engine.optim import cpu_has_bf16

    assert Trainer._amp_dtype("auto", on_gpu=False) is None
    with pytest.raises(TrainError, match="fp16 is for GPUs"):
        Trainer._amp_dtype("fp16", on_gpu=False)
    if not cpu_has_bf16():
        with pytest.raises(TrainError, match="no bf16 instructions"):
            Trainer._amp_dtype("bf16", on_gpu=False)
        return
    report = imrec.fit(
        "digits",
        out=tmp_path / "run",
        train={"epochs": 2, "amp": "bf16", "figures": False},
        progress=False,
    )
    assert report["amp"] == "bfloat16" and report["test"]["accuracy"] > 0.8


def test_small_epochs_train_on_scaled_down_images_and_end_at_full_size(tmp_path):
    """--small-epochs N: the first N epochs' steps see images scaled by --small-scale (16 px ->
    12 px here), the rest and every validation the data's own size; the last epoch is never
    small."""
    from conftest import bar_folder

    from imrec.classify.train import ClassifyTrainer

    folder = bar_folder(tmp_path / "bars")
    cfg = build_config(f"folder:{folder}", "objects",
                       train={"epochs": 3, "small_epochs": 1, "batch_size": 16})  # fmt: skip
    trainer = ClassifyTrainer(cfg, tmp_path / "run", progress=False)
    assert trainer.small_size(0) == (12, 12)
    assert trainer.small_size(1) is None and trainer.small_size(2) is None
    seen: list[tuple[bool, tuple[int, ...]]] = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, tuple(args[0].shape[-2:])))
    )
    report = trainer.fit()
    per_epoch = len(trainer.data.train) // 16 + bool(len(trainer.data.train) % 16)
    train_sizes = [s for training, s in seen if training]
    assert train_sizes == [(12, 12)] * per_epoch + [(16, 16)] * 2 * per_epoch
    assert all(s == (16, 16) for training, s in seen if not training)  # validation, test
    assert report["config"]["loop"]["small_epochs"] == 1
    # Asked for more small epochs than the run has: the last still trains at full size.
    many = build_config(f"folder:{folder}", "objects", train={"epochs": 2, "small_epochs": 5})
    t2 = ClassifyTrainer(many, tmp_path / "run2", progress=False)
    assert t2.small_size(0) == (12, 12) and t2.small_size(1) is None


def test_small_epoch_options_are_checked(tmp_path, capsys):
    from imrec.cli import main

    for flag, value in (("--small-scale", "1.5"), ("--small-epochs", "-1")):
        argv = ["train", "digits", flag, value, "--out", str(tmp_path / "r"), "--quiet"]
        assert main(argv) == 2
        assert f"{flag} must be" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any work
    with pytest.raises(TrainError, match="small-scale"):
        build_config("mnist", "handwriting", train={"small_scale": 1.5})
    with pytest.raises(TrainError, match="small-epochs"):
        build_config("mnist", "handwriting", train={"small_epochs": -1})
    # Off unless asked (a model started small fine-tunes worse); a detector refuses the option.
    assert build_config("mnist", "handwriting").loop.small_epochs == 0
    from imrec.api import check_train_fields, task_package

    with pytest.raises(TrainError, match="--small-epochs"):
        check_train_fields(task_package("detect"), {"small_epochs": 1})


def _kept_epoch(scores: list[float], n_val: int | None) -> int:
    """The epoch the loop keeps for these validation accuracies (``None``: strictly best)."""
    kept, top, epoch = -1.0, -1.0, 0
    for i, score in enumerate(scores, 1):
        top = max(top, score)
        margin = None if n_val is None else binomial_margin(top, n_val)
        if keeps(score, kept, top, margin):
            kept, epoch = score, i
    return epoch


def test_the_kept_epoch_is_the_latest_within_the_validation_noise():
    # Letters fold 2's validation accuracies (176 drawings), epochs 1-20 of the default run.
    fold2 = [0.733, 0.881, 0.875, 0.909, 0.909, 0.955, 0.926, 0.955, 0.938, 0.938]
    fold2 += [0.932, 0.949, 0.932, 0.955, 0.943, 0.943, 0.943, 0.943, 0.938, 0.938]
    assert _kept_epoch(fold2, None) == 6  # the strictly best: an early, under-trained epoch
    assert _kept_epoch(fold2, 176) == 20  # 3 drawings below the best: the same within noise
    assert _kept_epoch(fold2, 60_000) == 14  # the same scores on a large split: they differ
    # The band is measured from the best so far, so a slow slide never drifts the choice
    # down: each step is within the band of the one before, but the last is not of the best.
    slide = [0.95, 0.94, 0.93, 0.92, 0.91, 0.90]
    assert binomial_margin(0.95, 176) < 0.95 - 0.90
    assert _kept_epoch(slide, 176) == 4  # 0.92 is within 0.033 of 0.95; 0.91 is not
    # A score beyond the noise below the best never replaces the kept weights.
    assert _kept_epoch([0.60, 0.99, 0.50], 1000) == 2


def test_a_run_on_its_own_threads_gives_the_caller_its_thread_count_back(tmp_path, monkeypatch):
    """``threads`` (``--threads``) sets torch's thread count for the run only: the program
    that called imrec.fit (a notebook, this test session) has its own count afterwards, also
    when the run fails."""
    torch.set_num_threads(3)  # the caller's own count, other than the run's on any machine
    before = torch.get_num_threads()  # (tests/conftest.py restores the session's after)
    during = []
    real_loop = Trainer.train_loop

    def loop(self):
        during.append(torch.get_num_threads())
        return real_loop(self)

    monkeypatch.setattr(Trainer, "train_loop", loop)
    imrec.fit("digits", out=tmp_path / "a", train={"epochs": 1, "threads": 1}, progress=False)
    assert during == [1] and torch.get_num_threads() == before

    def broken(self):
        during.append(torch.get_num_threads())
        raise TrainError("stopped here")

    monkeypatch.setattr(Trainer, "train_loop", broken)
    with pytest.raises(TrainError, match="stopped here"):
        imrec.fit("digits", out=tmp_path / "b", train={"epochs": 1, "threads": 1}, progress=False)
    assert during == [1, 1] and torch.get_num_threads() == before


def test_a_time_limit_cuts_the_epochs_and_ends_the_schedule_with_them(
    tmp_path, capsys, monkeypatch
):
    """--time-limit: 40 epochs asked, a limit of 1.8 s, and a clock on which every epoch takes
    0.33 s (a stub, so that a loaded machine cannot change the plan): the run plans the 5
    epochs that fit, its learning rate ends where a run asked for 5 ends, and the plan is kept
    in config.json and the state for a resumed run."""
    from types import SimpleNamespace

    import imrec.classify.train as classify_train
    import imrec.engine.loop as engine_loop
    from imrec.core.checkpoint import load_train_state
    from imrec.engine.loop import STATE_FILE, resumable_config

    clock = [0.0]
    fake = SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(classify_train, "time", fake)
    monkeypatch.setattr(engine_loop, "time", fake)
    schedule_lr = Trainer.schedule_lr

    def timed_step(self, step):
        clock[0] += 0.33 / self.steps_per_epoch  # each step a share of 0.33 s
        return schedule_lr(self, step)

    monkeypatch.setattr(Trainer, "schedule_lr", timed_step)
    report = imrec.fit(
        "digits",
        out=tmp_path / "run",
        train={"epochs": 40, "time_limit": 0.03},
        progress=False,
    )
    ran = report["epochs_run"]
    assert ran == 5  # 1.8 s // 0.33 s
    assert report["time_limit"] == {
        "minutes": 0.03,
        "epochs_asked": 40,
        "epochs_planned": ran,
        "schedule_ended": True,
    }
    assert report["config"]["loop"]["epochs"] == ran
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == list(range(1, ran + 1))
    run = RunConfig.from_dict(report["config"])
    steps = -(-report["sizes"]["train"] // run.loop.batch_size)
    total, warmup = ran * steps, round(run.optim.warmup_epochs * steps)
    end = run.optim.lr * lr_factor(total - 1, total, warmup, run.optim.schedule)
    assert rows[-1]["lr"] == pytest.approx(end, abs=1e-8)  # the schedule of `ran` epochs
    assert resumable_config(tmp_path / "run").loop.epochs == ran
    assert load_train_state(tmp_path / "run" / STATE_FILE)[1]["epochs_asked"] == 40
    assert f"{ran} of the 40 epochs asked (a time limit of 0.03 min)" in (
        tmp_path / "run" / "report.md"
    ).read_text(encoding="utf-8")
    assert "of the 40 epochs asked fit" in capsys.readouterr().err  # it says so when it cuts
    from imrec.core.report import training_summary

    report["time_limit"]["schedule_ended"] = False  # what a cut after the last epoch records
    assert "so the learning rate stopped short of its schedule's end" in training_summary(report)
    with pytest.raises(TrainError, match="--time-limit must be 0"):
        build_config("digits", "handwriting", train={"time_limit": -1})


def test_the_time_limit_plans_at_the_slower_of_the_mean_and_the_last_epoch():
    """After each epoch: the epochs that fit in what is left at the mean pace, or at the last
    epoch's when the machine slowed down; a plan is lengthened again only while at most half
    of it has run, and never past the epochs asked."""
    from types import SimpleNamespace

    def stub(asked: int, planned: int):
        run = RunConfig.from_dict({"loop": {"epochs": planned, "time_limit": 10}})  # 600 s
        t = SimpleNamespace(
            run=run, train_seconds=0.0, history=[], epochs_asked=asked, schedule_cut=False,
            world=SimpleNamespace(size=1, main=False),
        )  # fmt: skip
        t._plan = lambda epochs, done: Trainer._plan(t, epochs, done)
        return t

    def follow(t, epochs):
        for done, (seconds, planned) in enumerate(epochs, 1):
            t.train_seconds += seconds
            t.history.append({"epoch": done, "seconds": seconds})
            Trainer.cut_to_time_limit(t, done)
            assert t.run.loop.epochs == planned, (done, t.run.loop.epochs)
        return t

    # 500 s left at 100 s: 5 more; then 300 s left at the last epoch's 200 s: 1 more; then 3
    # have run, the plan.
    follow(stub(12, 12), [(100, 6), (200, 3), (60, 3)])
    # 450 s left at 150 s: 3 more; 360 s left at a mean of 120 s: 3 more, and with 2 of 4
    # run the plan grows to 5; 300 s left at 100 s would fit 6, but 3 of 5 have run; then
    # a slow epoch leaves no time for the fifth.
    follow(stub(12, 12), [(150, 4), (90, 5), (60, 5), (300, 4)])
    # A first plan of 3 (the first steps' pace) grows to the 5 asked, no further.
    assert not follow(stub(5, 3), [(50, 5), (50, 5)]).schedule_cut
    # 450 s left at 150 s: the 3 planned; then a 400 s epoch leaves 50 s, no room for the
    # third: the plan ends with the epoch that ran, short of the schedule's end, and says so.
    assert follow(stub(3, 3), [(150, 3), (400, 2)]).schedule_cut

"""Ensembles (``--members N``): members that learn alone and answer as one model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import imrec
from imrec.classify.train import ClassifyTrainer
from imrec.cli import main
from imrec.core.errors import TrainError
from imrec.deploy.export import export_bundle
from imrec.explain import gradcam
from imrec.models import Classifier, Ensemble, create_model
from imrec.models.load import load_model


def _member_logits(model: Ensemble, x: torch.Tensor) -> list[torch.Tensor]:
    """Each member run on its own: its backbone, then its head."""
    return [
        head(backbone(x))
        for backbone, head in zip(model.backbone.parts, model.head.parts, strict=True)
    ]


def test_an_ensemble_answers_with_the_mean_of_its_members_logits():
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=5, in_channels=1, input_size=(16, 16), members=3)
    assert isinstance(model, Ensemble) and model.members == 3 and model.num_classes == 5
    x = torch.randn(4, 1, 16, 16)
    model.eval()
    each = _member_logits(model, x)
    torch.testing.assert_close(model(x), torch.stack(each).mean(0))
    # The path every consumer takes (features, then head) gives the same answer.
    features = model.forward_features(x)
    assert features.shape == (4, 3 * model.head.splits[0])
    torch.testing.assert_close(model.head(features), model(x))
    # Each member starts from its own random weights: three networks, not one copied.
    convs = [dict(model.backbone.parts[i].named_parameters()) for i in range(3)]
    name = next(iter(convs[0]))
    assert not torch.equal(convs[0][name], convs[1][name])
    assert not torch.equal(convs[1][name], convs[2][name])
    # In training mode every member's logits come back, for a loss per member.
    model.train()
    assert model(x).shape == (3, 4, 5)


def test_each_member_learns_from_its_own_loss():
    """The training loss is the mean of the members' cross-entropies: a member's gradient does
    not depend on the other members (as two separate runs), unlike the loss of their mean."""
    torch.manual_seed(0)
    model = create_model(
        "mlp", num_classes=4, in_channels=1, input_size=(8, 8), members=2, dropout=0.0
    ).train()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    trainer = SimpleNamespace(
        run=SimpleNamespace(optim=SimpleNamespace(label_smoothing=0.1, outlier_weight=0.5)),
        _outlier_rows=0,
        loss_weight=None,
        teacher=None,
    )

    def member0_grads() -> torch.Tensor:
        model.zero_grad()
        loss, logits = ClassifyTrainer.loss(trainer, model, x, y)
        assert logits.shape == (6, 4) and not logits.requires_grad
        loss.backward()
        return model.head.parts[0].weight.grad.clone()

    got = member0_grads()
    # The member alone, trained by its own loss (scaled by 1/members: the mean of the two).
    model.zero_grad()
    alone = _member_logits(model, x)
    (F.cross_entropy(alone[0], y, label_smoothing=0.1) / 2).backward()
    torch.testing.assert_close(got, model.head.parts[0].weight.grad)
    # Change member 1 completely: member 0's gradient stays the same.
    with torch.no_grad():
        for p in model.head.parts[1].parameters():
            p.mul_(-3.0).add_(1.0)
    torch.testing.assert_close(member0_grads(), got)
    # The loss of the members' mean logits would tie them together: it gives another gradient.
    model.zero_grad()
    mean = torch.stack(_member_logits(model, x)).mean(0)
    F.cross_entropy(mean, y, label_smoothing=0.1).backward()
    assert not torch.allclose(model.head.parts[0].weight.grad, got)


def test_the_members_option_is_checked():
    one = create_model("cnn", num_classes=3, in_channels=1, input_size=(16, 16), members=1)
    assert type(one) is Classifier
    for bad in (0, 9):
        with pytest.raises(ValueError, match="members must be 1 to 8"):
            create_model("cnn", num_classes=3, in_channels=1, input_size=(16, 16), members=bad)
    with pytest.raises(TrainError, match="ensembles are for classifiers"):
        imrec.fit("digits-detect:train=8,val=4,test=4", model={"members": 2}, progress=False)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "digits"
    report = imrec.fit(
        "digits", model={"members": 2}, train={"epochs": 3, "threads": 1}, out=out, progress=False
    )
    return out, report


def test_an_ensemble_run_is_one_model_from_training_to_the_bundle(ensemble_run, tmp_path):
    run, report = ensemble_run
    assert report["members"] == 2 and report["model"] == "cnn"
    assert report["test"]["accuracy"] >= 0.9  # 359 test digits; 3 epochs reach 0.93-0.95
    assert "cnn × 2" in (run / "report.md").read_text(encoding="utf-8").splitlines()[0]
    model, meta = load_model(run)
    assert isinstance(model, Ensemble) and model.members == 2
    assert meta["model"]["members"] == 2
    # The export is one ONNX graph that answers as the ensemble does (its parity gate), and the
    # manifest says how to rebuild it.
    bundle = export_bundle(run, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["model"]["members"] == 2
    test = imrec.load_dataset("digits").test
    png = tmp_path / "d.png"
    Image.fromarray(test.images[0, 0].numpy()).save(png)
    torch_top = imrec.load(run, backend="torch").predict([png], top_k=3)[0]["top"]
    onnx_top = imrec.load(bundle).predict([png], top_k=3)[0]["top"]
    assert [t["label"] for t in torch_top] == [t["label"] for t in onnx_top]
    for a, b in zip(torch_top, onnx_top, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    # Grad-CAM explains the first member's share of the answer.
    assert model.cam_layer is not None
    maps = gradcam(model, torch.randn(2, 1, 8, 8))
    assert maps.shape == (2, 8, 8) and torch.isfinite(maps).all()


def test_an_ensemble_fine_tunes_as_an_ensemble_and_a_single_network_is_refused(
    ensemble_run, digits_run, tmp_path
):
    run, _ = ensemble_run
    report = imrec.fit(
        "digits",
        train={"epochs": 1, "init": str(run), "threads": 1},
        out=tmp_path / "ft",
        progress=False,
    )
    assert report["members"] == 2  # the checkpoint's own network, members and all
    with pytest.raises(TrainError, match="it has 1 member"):
        imrec.fit(
            "digits",
            model={"members": 2},
            train={"epochs": 1, "init": str(digits_run)},
            out=tmp_path / "ft2",
            progress=False,
        )


def test_the_members_flag_trains_an_ensemble(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "digits", "--members", "3", "--epochs", "1", "--threads", "1"]
    assert main([*args, "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["members"] == 3
    assert "digits / cnn × 3: test accuracy" in capsys.readouterr().out
    model, _ = load_model(out)
    assert isinstance(model, Ensemble) and model.members == 3
    assert main([*args, "--members", "1", "--out", str(tmp_path / "one"), "--quiet"]) == 0
    assert type(load_model(tmp_path / "one")[0]) is Classifier
    assert main(["train", "digits", "--members", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "members must be 1 to 8" in capsys.readouterr().err


def test_a_recipe_s_members_apply_to_its_own_network_only(monkeypatch):
    from imrec import config

    recipe = {"model": {"name": "cnn", "members": 2}, "train": {"epochs": 1}}
    monkeypatch.setitem(config.RECIPES, ("fast", "digits"), recipe)
    assert config.build_config("digits", "handwriting").model.members == 2
    tweaked = config.build_config("digits", "handwriting", model={"options": {"width": 8}})
    assert tweaked.model.members == 2  # --model-opt alone tweaks the recipe's ensemble
    assert config.build_config("digits", "handwriting", model={"name": "mlp"}).model.members == 1
    mine = config.build_config("digits", "handwriting", model={"name": "cnn", "members": 3})
    assert mine.model.members == 3
    with pytest.raises(TrainError, match="--members must be 1 to 8"):
        config.build_config("digits", "handwriting", model={"members": 9})

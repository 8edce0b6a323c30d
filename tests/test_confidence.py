"""Calibrated confidence and "unknown" answers (issue 14, first part): the temperature and
threshold fitted after training, carried by checkpoints and bundles, applied the same way by
the PyTorch predictor, ONNX Runtime and the service; blank images; refitting."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import imrec
from imrec.classify.confidence import Confidence, blank, decide, fit_confidence, scores
from imrec.classify.predict import Predictor
from imrec.core.checkpoint import read_checkpoint_meta
from imrec.deploy.export import export_bundle
from imrec.serve import create_app

OLD = Path(__file__).parent / "fixtures" / "old_run"


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _digit(k: int = 0) -> np.ndarray:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[list(d.target).index(k)] * 255 / 16).astype(np.uint8)  # (8, 8) light on dark


def test_the_threshold_accepts_the_stated_share_and_blanks_are_unknown():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=g) * 3
    labels = logits.argmax(1)
    conf = fit_confidence(logits, labels, score="msp", accept_rate=0.9)
    s = scores(logits, conf.temperature, "msp")
    assert abs(float((s >= conf.threshold).float().mean()) - 0.9) < 0.01
    assert conf.threshold_for(0.5) > conf.threshold > conf.threshold_for(1.0)
    images = torch.full((3, 1, 8, 8), 7, dtype=torch.uint8)
    images[1, 0, 2:6, 3] = 255
    _, decided = decide(logits[:3], images, conf, reject=False)
    assert [d["blank"] for d in decided] == [True, False, True]
    assert [d["unknown"] for d in decided] == [True, False, True]  # blanks even without reject
    assert blank(images).tolist() == [True, False, True]
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"accept rate must be in \(0, 1\]"):
            conf.threshold_for(bad)
    with pytest.raises(ValueError, match="unknown confidence score 'odin'"):
        fit_confidence(logits, labels, score="odin")


def test_training_calibrates_and_every_backend_answers_the_same(digits_run, tmp_path):
    report = json.loads((digits_run / "report.json").read_text())
    c = report["confidence"]
    # 10 classes: the combined score, with the feature statistics fitted on training images
    assert c["temperature"] > 0 and c["score"] == "energy+maha" and c["accept_rate"] == 0.99
    assert c["features"]["images"] > 100 and set(c["standardise"]) == {
        "energy",
        "mahalanobis",
        "weights",
        "cap",
    }
    assert c["val"]["nll_after"] <= c["val"]["nll_before"] + 1e-6  # T minimises the val NLL
    assert c["val"]["accepted"] >= 0.97 and 0.9 <= c["test"]["accepted"] <= 1.0
    assert (digits_run / "reliability.png").stat().st_size > 0
    conf = Confidence.from_meta(read_checkpoint_meta(digits_run)["confidence"])
    assert conf.threshold == c["threshold"] and len(conf.quantiles) == 201

    pictures = [_png(_digit(k)) for k in range(4)] + [_png(np.zeros((8, 8), np.uint8))]
    torch_answers = Predictor(digits_run).predict(pictures, top_k=3)
    bundle = export_bundle(digits_run, tmp_path / "bundle", parity_limit=200)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["postprocessing"]["confidence"]["temperature"] == conf.temperature
    assert manifest["parity"]["unknown_agreement"] == 1.0
    onnx_answers = imrec.load(bundle).predict(pictures, top_k=3)
    for a, b in zip(torch_answers, onnx_answers, strict=True):
        assert a["unknown"] == b["unknown"] and a["blank"] == b["blank"]
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    assert onnx_answers[-1]["blank"] and onnx_answers[-1]["unknown"]
    assert not any(r["blank"] for r in onnx_answers[:-1])
    # Probabilities are calibrated in both.
    p = imrec.load(bundle).probabilities(imrec.load(bundle).prepare(pictures[0])[None])
    assert np.isclose(p.sum(), 1.0, atol=1e-5)
    # Accept everything the validation split had, or never reject: fewer or no unknowns.
    loose = Predictor(digits_run).predict(pictures[:4], accept_rate=1.0)
    none = Predictor(digits_run).predict(pictures[:4], reject=False)
    assert sum(r["unknown"] for r in none) == 0
    assert sum(r["unknown"] for r in loose) <= sum(r["unknown"] for r in torch_answers[:4])


def test_the_service_takes_the_options_and_refuses_bad_ones(digits_run):
    app = create_app(digits_run)
    blank_png, digit_png = _png(np.zeros((8, 8), np.uint8)), _png(_digit(3))
    b64 = lambda d: base64.b64encode(d).decode("ascii")  # noqa: E731

    async def go():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                ok = await c.post("/v1/predict", json={"images": [b64(blank_png), b64(digit_png)]})
                off = await c.post(
                    "/v1/predict", json={"images": [b64(digit_png)], "reject": False}
                )
                form = await c.post(
                    "/v1/predict",
                    files=[("files", ("d.png", digit_png, "image/png"))],
                    data={"accept_rate": "1", "reject": "true"},
                )
                bad = [
                    await c.post(
                        "/v1/predict", json={"images": [b64(digit_png)], "accept_rate": 0}
                    ),
                    await c.post(
                        "/v1/predict",
                        files=[("files", ("d.png", digit_png, "image/png"))],
                        data={"accept_rate": "1.5"},
                    ),
                    await c.post(
                        "/v1/predict",
                        files=[("files", ("d.png", digit_png, "image/png"))],
                        data={"reject": "maybe"},
                    ),
                ]
                return ok, off, form, bad

    ok, off, form, bad = asyncio.run(go())
    first, second = ok.json()["results"]
    assert first["blank"] and first["unknown"] and not second["blank"]
    assert isinstance(second["score"], float)
    assert off.json()["results"][0]["unknown"] is False
    assert form.status_code == 200 and "unknown" in form.json()["results"][0]
    assert [r.status_code for r in bad] == [422, 422, 422]
    assert "accept_rate" in bad[1].text and "reject must be true or false" in bad[2].text


def test_refitting_on_other_data_and_old_models(digits_run, tmp_path):
    run = shutil.copytree(digits_run, tmp_path / "run")
    before = read_checkpoint_meta(run)["confidence"]
    stricter = imrec.calibrate(run, accept_rate=0.9)
    assert stricter["accept_rate"] == 0.9 and abs(stricter["val"]["accepted"] - 0.9) < 0.05
    assert stricter["threshold"] > before["threshold"]
    assert read_checkpoint_meta(run)["confidence"]["threshold"] == stricter["threshold"]
    assert json.loads((run / "calibration.json").read_text())["threshold"] == stricter["threshold"]
    # The user's own images, as a folder with the model's class names.
    own = tmp_path / "own"
    for k in range(3):
        (own / str(k)).mkdir(parents=True)
        for j in range(6):
            Image.fromarray(np.roll(_digit(k), j % 2, axis=1)).save(own / str(k) / f"{j}.png")
    mine = imrec.calibrate(run, f"folder:{own}")
    assert f"folder:{own}" in mine["fitted_on"] and "18 images" in mine["fitted_on"]
    with pytest.raises(ValueError, match=r"accept rate must be in \(0, 1\]"):
        imrec.calibrate(run, accept_rate=0)
    # A model trained before calibration existed predicts as before, and says it has no score.
    old = Predictor(OLD).predict([_png(_digit(1)), _png(np.zeros((8, 8), np.uint8))])
    assert old[0]["score"] is None and old[0]["unknown"] is False
    assert old[1]["blank"] and old[1]["unknown"]


def test_outlier_exposure_teaches_the_model_to_be_unsure_of_other_things(digits_run, tmp_path):
    """Digits trained with scribble-like bars as outliers: the bars' predictions move towards
    uniform (their largest probability drops well below the unexposed model's)."""
    from imrec.core.errors import TrainError
    from tests.conftest import bar_folder

    bars = bar_folder(tmp_path / "bars", per_class=40)
    out = tmp_path / "exposed"
    report = imrec.fit(
        "digits", out=out, train={"epochs": 2, "outliers": f"folder:{bars}"}, progress=False
    )
    assert re.search(r"\. Outlier exposure: \d+ images of folder:", report["split"])
    pictures = sorted(bars.rglob("*.png"))[:30]

    def answers(run) -> tuple[float, float]:
        found = Predictor(run).predict(pictures)
        return np.mean([r["top"][0]["probability"] for r in found]), np.mean(
            [r["unknown"] for r in found]
        )

    (exposed_top, exposed_unknown), (plain_top, plain_unknown) = answers(out), answers(digits_run)
    assert exposed_top < plain_top - 0.1, (exposed_top, plain_top)
    assert exposed_unknown >= plain_unknown  # (the 8x8 digits model already doubts bars)
    assert report["test"]["accuracy"] > 0.85  # the digits themselves are still learnt
    # Exposure teaches the logits what is foreign: the default score is then msp.
    assert report["confidence"]["score"] == "msp" and report["confidence"]["features"]
    with pytest.raises(TrainError, match="same classes as digits"):
        imrec.fit("digits", out=tmp_path / "x", train={"outliers": "digits"}, progress=False)


def test_the_feature_distance_is_the_mahalanobis_distance_to_the_nearest_centre():
    from imrec.classify.confidence import Distance, fit_distance

    g = torch.Generator().manual_seed(1)
    f = torch.randn(3000, 6, generator=g) @ torch.randn(6, 6, generator=g)  # correlated
    labels = torch.randint(0, 4, (3000,), generator=g)
    f += labels[:, None].float() * 3
    stats = fit_distance(f, labels)
    x = torch.randn(50, 6, generator=g) * 4
    got = Distance(**stats)(x).double()
    # The textbook formula, in float64 with numpy: shared covariance (+ the same small ridge).
    fn, ln = f.double().numpy(), labels.numpy()
    means = np.stack([fn[ln == c].mean(0) for c in range(4)])
    centred = fn - means[ln]
    cov = centred.T @ centred / len(fn)
    cov += 1e-4 * cov.diagonal().mean() * np.eye(6)
    p = np.linalg.inv(cov)
    xn = x.double().numpy()
    want = np.min([np.einsum("nd,de,ne->n", xn - m, p, xn - m) for m in means], axis=0)
    assert np.allclose(got.numpy(), want, rtol=1e-3, atol=1e-3)


def test_the_combined_score_needs_features_and_large_vocabularies_get_msp():
    from imrec.classify.confidence import default_score

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    labels = logits.argmax(1)
    with pytest.raises(ValueError, match="needs feature statistics"):
        fit_confidence(logits, labels, score="energy+maha")
    assert fit_confidence(logits, labels).score == "msp"  # no features: msp
    distance = torch.rand(500, generator=g) * 100
    conf = fit_confidence(logits, labels, distance=distance)
    assert conf.score == "energy+maha" and conf.standardise["weights"] == [1.0, 0.5]
    s = conf.score_of(logits, distance)
    assert abs(float((s >= conf.threshold).float().mean()) - 0.99) < 0.01
    mm, sm = conf.standardise["mahalanobis"]
    z_maha = (-distance - mm) / sm  # standardised on the same images
    assert abs(float(z_maha.mean())) < 1e-3 and bool((s <= z_maha + 2 + 1e-5).all())  # the cap
    assert bool((s < z_maha + 2 - 1e-3).any())  # and below it, the weighted sum
    with pytest.raises(ValueError, match="needs the model's feature distance"):
        conf.score_of(logits)
    # Stored and read back (a checkpoint's JSON), and an older rule without the new fields.
    assert Confidence.from_meta(json.loads(json.dumps(conf.meta()))) == conf
    old = {k: v for k, v in conf.meta().items() if k not in ("standardise", "features")}
    assert Confidence.from_meta({**old, "score": "msp"}).standardise is None
    assert default_score(3755, True) == "msp"  # energy and Mahalanobis fail at 3,755 classes


def test_eval_ood_measures_unknown_answers_against_other_images(digits_run, tmp_path):
    from tests.conftest import bar_folder

    run = shutil.copytree(digits_run, tmp_path / "run")
    bars = bar_folder(tmp_path / "bars", per_class=10)
    report = imrec.evaluate(run, ood="noise,blank,scribbles," + f"folder:{bars}")
    o = report["ood"]
    assert o["score"] == "energy+maha" and o["in_distribution"]["accepted"] >= 0.9
    sets = o["sets"]
    assert list(sets) == ["noise", "blank", "scribbles", f"folder:{bars}"]
    assert sets["noise"]["n"] == 1000 and sets[f"folder:{bars}"]["n"] == 30
    # Noise is nothing like a digit for the features; blanks are always unknown.
    assert sets["noise"]["auroc"] > 0.95 and sets["noise"]["rejected"] > 0.9
    assert sets["blank"]["rejected"] == 1.0 and sets["blank"]["blank"] == 1000
    for row in sets.values():
        assert 0 <= row["auroc"] <= 1 and 0 <= row["fpr_at_95_tpr"] <= 1
        assert set(row["auroc_by_score"]) == {"msp", "energy", "mahalanobis", "energy+maha"}
    assert {m["class"] for m in sets[f"folder:{bars}"]["most_accepted"]} <= {
        "left",
        "middle",
        "right",
    }
    assert (run / "ood.png").stat().st_size > 0 and report["files"]["ood"] == "ood.png"
    md = (run / "report.md").read_text()
    assert "## Unknown answers against other images" in md and "| scribbles | 1,000 |" in md
    saved = json.loads((run / "report.json").read_text())
    assert saved["ood"]["sets"]["noise"] == sets["noise"]
    # The headline's calibration error is that of the probabilities predictions give.
    after = saved["confidence"]["test"]["ece_after"]
    assert f"ECE **{after:.4f}** (calibrated; " in md, md.splitlines()[2]
    assert f"ECE {after:.4f} (calibrated; " in imrec.api.summary(saved)
    # Bad input: nothing named, a set twice, a dataset made of the model's own classes.
    for bad, why in ((" , ", "name at least one"), ("noise,noise", "twice"), ("digits", "own")):
        with pytest.raises(ValueError, match=why):
            imrec.evaluate(run, ood=bad)
    from imrec.data import DatasetError

    with pytest.raises(DatasetError, match="unknown dataset 'no-such-set'"):
        imrec.evaluate(run, ood="no-such-set")
    before = (run / "report.json").read_bytes()
    with pytest.raises(DatasetError, match="no such folder"):  # refused before any work
        imrec.evaluate(run, ood=f"noise,folder:{tmp_path / 'missing'}")
    assert (run / "report.json").read_bytes() == before


def test_calibrate_chooses_the_score_and_old_models_get_features(digits_run, tmp_path):
    from imrec.core.checkpoint import load_checkpoint_extras

    run = shutil.copytree(digits_run, tmp_path / "run")
    msp = imrec.calibrate(run, score="msp")
    assert msp["score"] == "msp" and read_checkpoint_meta(run)["confidence"]["score"] == "msp"
    back = imrec.calibrate(run)
    assert back["score"] == "energy+maha"
    with pytest.raises(ValueError, match="unknown confidence score 'odin'"):
        imrec.calibrate(run, score="odin")
    # A model from before the feature statistics: calibrating on its own data adds them,
    # and its export then carries the distance through ONNX Runtime.
    old = shutil.copytree(OLD, tmp_path / "old", ignore=shutil.ignore_patterns("bundle"))
    assert load_checkpoint_extras(old) == {}
    c = imrec.calibrate(old)
    assert c["score"] == "energy+maha" and set(load_checkpoint_extras(old)) == {
        "whitener",
        "centres",
    }
    bundle = export_bundle(old, tmp_path / "old-bundle", parity_limit=100)
    answer = imrec.load(bundle).predict(_png(_digit(2)))
    assert answer["score"] is not None and isinstance(answer["unknown"], bool)


def test_the_command_line_measures_and_recalibrates(digits_run, tmp_path, capsys):
    from imrec.cli import main

    run = shutil.copytree(digits_run, tmp_path / "run")
    assert main(["eval", str(run), "--ood", "noise,scribbles", "--ood-limit", "50"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"unknown answers \(energy\+maha\): [\d.]+% of the [\d,]+ images evaluated", out
    )
    assert re.search(r"  noise: AUROC [01]\.\d{4}, [\d.]+% rejected at the threshold", out)
    assert main(["calibrate", str(run), "--score", "energy"]) == 0
    assert "energy threshold" in capsys.readouterr().out
    assert read_checkpoint_meta(run)["confidence"]["score"] == "energy"
    with pytest.raises(SystemExit):  # argparse refuses a score it does not know
        main(["calibrate", str(run), "--score", "odin"])

"""The deployed-model workflow: model files, user image folders, learn / predict / evaluate."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dfcil
from dfcil.cli import main
from dfcil.data.images import Geometry, decode_image
from dfcil.errors import DataError
from dfcil.workflow.artifact import (
    Architecture,
    InputSpec,
    LearningStep,
    ModelFileError,
    ModelInfo,
    load_model,
    save_model,
)
from dfcil.workflow.folder import decode_paths, read_labelled_folder

TINY = ["--set", "train.epochs=2", "--set", "train.milestones=[1]", "--set", "train.batch_size=16",
        "--set", "method.synthesis.steps=3", "--set", "method.refine_epochs=1", "--no-progress"]


def _write_class_folders(root: Path, classes: dict[str, int], per_class: int = 12, seed: int = 0) -> Path:
    """Class folders of 40x40 noise images whose brightness is set by ``classes[name]``."""
    rng = np.random.default_rng(seed)
    for name, level in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.integers(0, 50, (40, 40, 3)) + level, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def _info(classes: list[str], head_sizes: list[int]) -> ModelInfo:
    step = LearningStep(1, "2026-01-01T00:00:00+00:00", classes, "finetune", {"train": 1}, {"held_out_accuracy": 50.0})
    return ModelInfo(Architecture("resnet32"), InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), classes, head_sizes, [step])


# --- the model file ----------------------------------------------------------------------------
def test_model_file_round_trip_gives_identical_predictions(tmp_path):
    info = _info(["a", "b", "c"], [2, 1])
    network = info.architecture.build(info.head_sizes).eval()
    path = tmp_path / "m.safetensors"
    save_model(path, info, network.state_dict())
    loaded_info, loaded = load_model(path)
    assert loaded_info == info
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(network(x).logits, loaded(x).logits)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_model_file_refuses_foreign_truncated_and_inconsistent_files(tmp_path):
    info = _info(["a", "b"], [2])
    network = info.architecture.build(info.head_sizes)
    good = tmp_path / "good.safetensors"
    save_model(good, info, network.state_dict())

    pickle_file = tmp_path / "model.pt"
    torch.save(network.state_dict(), pickle_file)
    with pytest.raises(ModelFileError, match="not a readable dfcil model"):
        load_model(pickle_file)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(truncated)

    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ModelFileError, match="not a dfcil model"):
        load_model(plain)

    wrong = tmp_path / "wrong.safetensors"
    save_model(wrong, _info(["a", "b", "c"], [3]), network.state_dict())  # weights of 2 classes, says 3
    with pytest.raises(ModelFileError, match="shape"):
        load_model(wrong)

    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")

    unknown = tmp_path / "unknown.safetensors"
    _rewrite_architecture(good, unknown, backbone="resnet999")
    with pytest.raises(ModelFileError, match=r"cannot build \(architecture.backbone: expected one of"):
        load_model(unknown)
    negative = tmp_path / "negative.safetensors"
    save_model(negative, _info(["a", "b"], [3, -1]), network.state_dict())  # sums to 2, but a head of -1
    with pytest.raises(ModelFileError, match=r"head sizes \[3, -1\]"):
        load_model(negative)


def _rewrite_architecture(path: Path, out: Path, **changes: object) -> None:
    """Copy a model file with its metadata's architecture changed (None removes a key)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    data = json.loads(metadata["dfcil"])
    for key, value in changes.items():
        if value is None:
            data["architecture"].pop(key)
        else:
            data["architecture"][key] = value
    save_file(tensors, str(out), metadata={**metadata, "dfcil": json.dumps(data)})


def test_model_files_of_an_older_network_revision_are_refused_others_still_load(tmp_path, capsys):
    info = _info(["a", "b"], [2])
    assert info.architecture.network_revision == 2  # resnet32 'rdfcil' today: no ReLU after additions
    path = tmp_path / "m.safetensors"
    save_model(path, info, info.architecture.build(info.head_sizes).state_dict())
    assert load_model(path)[0].architecture.network_revision == 2
    # a file written before revisions were recorded holds the 30-ReLU 'rdfcil' network
    old = tmp_path / "old.safetensors"
    _rewrite_architecture(path, old, network_revision=None)
    with pytest.raises(ModelFileError, match="revision 1 .* builds revision 2"):
        load_model(old)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(old), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "old.safetensors" in err[0] and "retrain" in err[0]
    # the 'abd' network did not change: an old file of it still loads
    abd = _info(["a", "b"], [2])
    abd = ModelInfo(Architecture("resnet32", "abd"), abd.input, abd.class_names, abd.head_sizes, abd.history)
    save_model(path, abd, abd.architecture.build(abd.head_sizes).state_dict())
    _rewrite_architecture(path, old, network_revision=None)
    assert load_model(old)[0].architecture.network_revision == 1


def test_cli_refuses_a_foreign_model_in_one_line(tmp_path, capsys):
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"\x00" * 100)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", str(bogus), str(image)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dfcil: error:") and "bogus.safetensors" in err[0]


# --- decoding user images ----------------------------------------------------------------------
def test_images_of_any_mode_decode_to_rgb(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    files = {
        "gray.png": Image.fromarray(rgb[..., 0]),  # L
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])),
        "palette.gif": Image.fromarray(rgb).convert("P"),
        "sixteen.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 256),  # I;16
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    for name in files:
        array = decode_image(tmp_path / name, Geometry.square(16))
        assert array.shape == (16, 16, 3) and array.dtype == np.uint8, name


def test_transparent_pixels_become_white(tmp_path):
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "clear.png")  # fully transparent black
    assert decode_image(tmp_path / "clear.png", Geometry.square(8)).min() == 255


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)  # left half red
    pixels[:, 32:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    array = decode_image(tmp_path / "rotated.jpg", Geometry.square(32)).astype(int)
    # upright the image is 32 wide and 64 tall with red on top; the centre crop keeps both halves
    assert array[4, 16, 0] > 200 and array[4, 16, 2] < 60
    assert array[28, 16, 2] > 200 and array[28, 16, 0] < 60


def test_unreadable_files_are_listed_and_skipped_or_stop_with_strict(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    decoded = decode_paths([tmp_path / "good.png", tmp_path / "broken.jpg"], Geometry.square(8))
    assert len(decoded.images) == 1 and decoded.paths == [tmp_path / "good.png"]
    assert len(decoded.skipped) == 1 and "broken.jpg" in decoded.skipped[0].reason
    with pytest.raises(DataError, match="broken.jpg"):
        decode_paths([tmp_path / "good.png", tmp_path / "broken.jpg"], Geometry.square(8), strict=True)


def test_folder_split_and_refusals(tmp_path):
    root = _write_class_folders(tmp_path / "data", {"dark": 0, "light": 200}, per_class=10)
    folder = read_labelled_folder(root, 32, holdout=0.2)
    assert folder.class_names == ["dark", "light"]
    assert np.bincount(folder.train_labels).tolist() == [8, 8]
    assert np.bincount(folder.held_out_labels).tolist() == [2, 2]

    (root / "empty").mkdir()
    with pytest.raises(DataError, match="empty contains no images"):
        read_labelled_folder(root, 32)
    (root / "empty").rmdir()
    lonely = root / "lonely"
    lonely.mkdir()
    Image.new("RGB", (8, 8)).save(lonely / "only.png")
    with pytest.raises(DataError, match="'lonely'.*at least 2"):
        read_labelled_folder(root, 32)
    with pytest.raises(DataError, match="no class sub-folders"):
        read_labelled_folder(tmp_path / "data" / "dark", 32)


# --- learn / predict / evaluate ------------------------------------------------------------------
def test_learn_predict_evaluate_on_a_tiny_folder(tmp_path, capsys):
    first = _write_class_folders(tmp_path / "first", {"dark": 0, "mid": 100})
    second = _write_class_folders(tmp_path / "second", {"light": 200}, seed=1)
    model_file = tmp_path / "model.safetensors"
    assert main(["learn", "--data", str(first), "-o", str(model_file), "--method", "finetune", *TINY[:-5],
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == 2 and summary["step"] == 1

    # the same classes again are refused, a method that needs old data too
    assert main(["learn", "--data", str(first), "--from", str(model_file), *TINY]) == 2
    assert "already known" in capsys.readouterr().err
    assert main(["learn", "--data", str(second), "--from", str(model_file), "--method", "joint", *TINY[:-5]]) == 2
    assert "needs the earlier classes' images" in capsys.readouterr().err
    # an existing output is not replaced without --force
    assert main(["learn", "--data", str(first), "-o", str(model_file), *TINY]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["learn", "--data", str(second), "--from", str(model_file), *TINY]) == 0  # rdfcil, in place
    capsys.readouterr()
    assert (tmp_path / "model.step1.safetensors").exists()  # the previous version is kept
    model = dfcil.load(model_file)
    assert model.class_names == ["dark", "mid", "light"]
    assert [step.classes for step in model.history] == [["dark", "mid"], ["light"]]
    assert model.history[1].method == "rdfcil" and model.info.head_sizes == [2, 1]

    assert main(["predict", str(model_file), str(second / "light"), "--top", "2", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 12 and all(len(p["top"]) == 2 for p in predictions)
    assert all(abs(sum(t["probability"] for t in p["top"])) <= 1.0 + 1e-6 for p in predictions)

    every = tmp_path / "every"
    for source in (first, second):
        for folder in source.iterdir():
            (every / folder.name).mkdir(parents=True)
            for file in list(folder.iterdir())[:4]:
                (every / folder.name / file.name).write_bytes(file.read_bytes())
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(model_file), "--data", str(every), "--out", str(out)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["images"] == 12 and set(report["per_class"]) == {"dark", "mid", "light"}
    assert [s["classes"] for s in report["per_step"]] == [2, 1]
    assert np.asarray(report["confusion"]).sum() == 12
    with Image.open(out / "confusion.png") as png:
        assert png.size[0] > 200
    (every / "unknown").mkdir()
    Image.new("RGB", (8, 8)).save(every / "unknown" / "x.png")
    before = (out / "evaluation.json").read_bytes()
    assert main(["evaluate", str(model_file), "--data", str(every), "--out", str(out)]) == 2
    assert "an earlier evaluation" in capsys.readouterr().err  # not replaced without --force
    assert (out / "evaluation.json").read_bytes() == before
    assert main(["evaluate", str(model_file), "--data", str(every), "--out", str(out), "--force"]) == 2
    assert "'unknown'" in capsys.readouterr().err


def test_learn_checks_every_output_before_it_trains(tmp_path, capsys, monkeypatch):
    import dfcil.workflow.learn
    from dfcil.runlock import hold_output_lock

    def must_not_train(*_args, **_kwargs):
        raise AssertionError("trained although an output was bad")

    monkeypatch.setattr(dfcil.workflow.learn, "learn_step", must_not_train)
    data = _write_class_folders(tmp_path / "data", {"dark": 0, "mid": 100}, per_class=2)
    (tmp_path / "a_file").write_text("x")
    assert main(["learn", "--data", str(data), "-o", str(tmp_path / "a_file" / "m.safetensors"), *TINY]) == 2
    assert "cannot write" in capsys.readouterr().err and (tmp_path / "a_file").read_text() == "x"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "metrics.json").write_text("{}")
    assert main(["learn", "--data", str(data), "-o", str(tmp_path / "m.safetensors"), "--workdir", str(busy),
                 *TINY]) == 2
    assert "--workdir" in capsys.readouterr().err and (busy / "metrics.json").read_text() == "{}"
    # an in-place step would keep the previous version as model.step1: an existing one is not replaced
    info = _info(["a", "b"], [2])
    save_model(tmp_path / "model.safetensors", info, info.architecture.build(info.head_sizes).state_dict())
    (tmp_path / "model.step1.safetensors").write_text("mine")
    assert main(["learn", "--data", str(data), "--from", str(tmp_path / "model.safetensors"), *TINY]) == 2
    assert "model.step1.safetensors already exists" in capsys.readouterr().err
    assert (tmp_path / "model.step1.safetensors").read_text() == "mine"
    # predicting a single unreadable image is a failure, not an empty success
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["predict", str(tmp_path / "model.safetensors"), str(tmp_path / "broken.png"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "broken.png" in captured.err and "no image could be read" in captured.err
    # a second process writing the same model file stops at once
    with hold_output_lock(tmp_path / "other.safetensors"):
        assert main(["learn", "--data", str(data), "-o", str(tmp_path / "other.safetensors"), *TINY]) == 2
    assert "is being written by pid" in capsys.readouterr().err
    assert not (tmp_path / ".other.safetensors.lock").exists()  # released and removed

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dfcil.workflow.learn, "learn_step", interrupted)
    assert main(["learn", "--data", str(data), "-o", str(tmp_path / "new.safetensors"), *TINY]) == 130
    assert "interrupted; nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "new.safetensors").exists() and not (tmp_path / ".new.safetensors.lock").exists()


def test_learn_rejects_bad_recipe_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output, model.safetensors, would land here
    first = _write_class_folders(tmp_path / "first", {"dark": 0, "mid": 100}, per_class=4)
    assert main(["learn", "--data", str(first), "--set", "scenario.num_tasks=3", *TINY]) == 2
    assert "scenario: not used by dfcil learn" in capsys.readouterr().err
    assert main(["learn", "--data", str(first), "--set", "data.image_size=64", *TINY]) == 2
    assert "--image-size" in capsys.readouterr().err
    assert main(["learn", "--data", str(first), "--image-size", "48", *TINY]) == 2
    assert "--image-size must be one of" in capsys.readouterr().err
    assert not (tmp_path / "model.safetensors").exists()  # nothing written on refusal


# --- real images ----------------------------------------------------------------------------------
def _abd_order(count: int) -> list[int]:
    order = list(range(100))
    random.Random(0).shuffle(order)
    return order[:count]


def _export(dataset, classes: list[int], root: Path, train: int, test: int) -> None:
    for split, limit in (("train", train), ("test", test)):
        arrays = getattr(dataset, split)
        for c in classes:
            folder = root / split / dataset.class_names[c]
            folder.mkdir(parents=True)
            for i in np.nonzero(arrays.labels == c)[0][:limit]:
                Image.fromarray(arrays.images[i]).save(folder / f"{i}.png")


@pytest.mark.slow
def test_data_free_step_keeps_old_cifar_classes_far_above_finetune(cifar, tmp_path):
    """5 real CIFAR-100 classes, then 5 more added with --from (rdfcil vs finetune)."""
    from dfcil.data import default_cache_dir, load_dataset

    dataset = load_dataset("cifar100", Path(cifar["DFCIL_DATA"]), default_cache_dir(), progress=False)
    classes = _abd_order(10)
    _export(dataset, classes[:5], tmp_path / "first", train=200, test=100)
    _export(dataset, classes[5:], tmp_path / "second", train=200, test=100)
    budget = ["--set", "train.epochs=6", "--set", "train.milestones=[5]", "--set", "train.batch_size=64",
              "--no-progress"]
    first = tmp_path / "first.safetensors"
    assert main(["learn", "--data", str(tmp_path / "first"), "-o", str(first), *budget]) == 0
    results = {}
    everything = tmp_path / "every"  # the test images of all 10 classes
    everything.mkdir()
    for part in ("first", "second"):
        for folder in (tmp_path / part / "test").iterdir():
            (everything / folder.name).symlink_to(folder, target_is_directory=True)
    # Budgets of the added step (most of the test's time): R-DFCIL 4 epochs (lr / 10 after 3)
    # with its generator at batch 32, half the real batch; finetune 2 epochs: it forgets the old
    # classes within the first epoch, and fewer epochs can only leave it more of them, so the
    # comparison stays conservative.
    for method, extra in (("rdfcil", ["--set", "train.epochs=4", "--set", "train.milestones=[3]",
                                      "--set", "method.synthesis.steps=100", "--set", "method.synthesis.batch_size=32",
                                      "--set", "method.refine_epochs=2"]),
                          ("finetune", ["--set", "train.epochs=2", "--set", "train.milestones=[]"])):
        out = tmp_path / f"{method}.safetensors"
        assert main(["learn", "--data", str(tmp_path / "second"), "--from", str(first), "-o", str(out),
                     "--method", method, *budget, *extra]) == 0
        results[method] = dfcil.load(out).evaluate(everything)
    old = {m: r.per_step[0]["accuracy"] for m, r in results.items()}
    print("workflow e2e: accuracy on 10 classes", {m: round(r.accuracy, 2) for m, r in results.items()},
          "old classes", old)
    assert results["rdfcil"].accuracy > 30.0, results["rdfcil"].accuracy  # chance on 10 classes: 10 %
    assert old["rdfcil"] > old["finetune"] + 15.0, old
    predictions = dfcil.load(tmp_path / "rdfcil.safetensors").predict(tmp_path / "second" / "test", top=1)
    assert len(predictions) == 500

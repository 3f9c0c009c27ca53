"""The engine on a small synthetic dataset: phases, auxiliary modules, loss terms, hooks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dfcil.console import console_logging
from dfcil.data import DatasetArrays
from dfcil.engine.trainer import Trainer
from dfcil.experiment import parse_experiment
from dfcil.hooks import BatchNormInputs
from dfcil.losses import cross_entropy_seen
from dfcil.methods import Batch, Loss, Method, Phase, StepResult
from dfcil.models import IncrementalClassifier, build_backbone

from conftest import coloured_dataset


def tiny_dataset(classes: int = 4, per_class: int = 16) -> DatasetArrays:
    return coloured_dataset(classes, per_class)


def tiny_config(runtime: dict | None = None, **train):
    return parse_experiment(
        {
            "data": {"dataset": "imagefolder"},
            "scenario": {"order": "identity", "num_tasks": 2},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                      "precision": "fp32", **train},
            "runtime": {"progress": False, "device": "cpu", **(runtime or {})},
        }
    )


@dataclass(frozen=True)
class HeadPhaseOptions:
    pass


class HeadPhaseMethod(Method):
    """A main phase with a learnable auxiliary scale, then a head-only phase."""

    name = "test-head-phase"
    description = "test double"
    Options = HeadPhaseOptions

    def __init__(self, options, env):
        super().__init__(options, env)
        self.scale = torch.nn.Linear(1, 1, bias=False)
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def aux_modules(self):
        return self.scale

    def phases(self, task):
        return [Phase.main(self.env.train), Phase("heads", epochs=2, lr=0.05, trainable="heads")]

    def on_epoch_start(self, model, task, phase, epoch):
        if phase.name == "heads" and epoch == 1:
            self.snapshots[f"task{task.index}"] = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    def training_step(self, model, batch: Batch, task, phase) -> StepResult:
        logits = model(batch.images).logits
        ce = cross_entropy_seen(logits, batch.labels, task.num_seen)
        losses = {"ce": Loss(ce)}
        if phase.trainable == "all":
            losses["aux"] = Loss((self.scale.weight.sum() - 3.0) ** 2, weight=0.5)
        return StepResult(losses, logits)


def test_head_phase_freezes_backbone_and_aux_modules_train(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path, tiny_dataset())
    trainer.method = HeadPhaseMethod(HeadPhaseOptions(), trainer.env)
    start_scale = trainer.method.scale.weight.item()
    metrics = trainer.run()
    after = trainer.model.backbone.state_dict()
    before_last_head_phase = trainer.method.snapshots["task1"]
    for key, value in before_last_head_phase.items():
        assert torch.equal(value, after[key]), f"{key} changed during the head-only phase"
    # the auxiliary module was in the optimiser of the main phase
    assert trainer.method.scale.weight.item() != start_scale
    records = [r for r in trainer.log.records if r["event"] == "epoch"]
    assert [(r["task"], r["phase"], r["epoch"]) for r in records] == [
        (t, p, e) for t in (1, 2) for p in ("main", "heads") for e in (1, 2)
    ]
    main = records[0]
    assert main["weights"] == {"ce": 1.0, "aux": 0.5}
    assert abs(main["loss"] - (main["losses"]["ce"] + 0.5 * main["losses"]["aux"])) < 1e-4
    assert "aux" not in records[2]["losses"]
    assert metrics["complete"] and len(metrics["accuracy_per_step"]) == 2


@pytest.mark.parametrize("every_s, epoch_saves", [(0.0, [1, 2, 3]), (1e9, [3])])
def test_epoch_checkpoints_are_spaced_by_checkpoint_every_s(tmp_path, every_s, epoch_saves, monkeypatch):
    trainer = Trainer(tiny_config({"checkpoint_every_s": every_s}, epochs=3), tmp_path, tiny_dataset())
    trainer.method = HeadPhaseMethod(HeadPhaseOptions(), trainer.env)
    saved = []
    save = trainer._save
    monkeypatch.setattr(trainer, "_save", lambda position, *rest: (saved.append(position), save(position, *rest)))
    trainer.run()
    for task in (0, 1):
        epochs = [p.epoch for p in saved if p.task == task and not p.task_done and p.epoch > 0]
        # main phase (3 epochs), then the head phase (2 epochs, its last always saved)
        assert epochs == epoch_saves + ([1, 2] if every_s == 0 else [2]), (task, saved)
        assert any(p.task == task and p.task_done for p in saved)  # every task's end


def test_bn_input_hooks_match_manual_statistics_and_are_removed():
    model = IncrementalClassifier(build_backbone("resnet32", variant="abd"))
    model.add_head(3)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with BatchNormInputs(model) as bn:
        model(x)
    assert len(bn.stats) == len(bn.layers) == 31
    first = bn.stats[0]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    h = conv(x)
    assert torch.allclose(first.mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.var, h.var(dim=(0, 2, 3), unbiased=False), atol=1e-5)
    assert torch.equal(first.running_var, bn.layers[0].running_var)
    count = len(bn.stats)
    model(x)  # hooks are gone after the block
    assert len(bn.stats) == count
    assert all(len(layer._forward_hooks) == 0 for layer in bn.layers)


def test_image_store_host_gather_matches_resident(tmp_path):
    from dfcil.engine.store import ImageStore, index_batches, num_batches

    images = np.random.default_rng(1).integers(0, 256, (50, 4, 4, 3)).astype(np.uint8)
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    resident = ImageStore(images, torch.device("cpu"))
    host = ImageStore(mapped, torch.device("cpu"))
    assert resident.resident and not host.resident
    index = torch.tensor([7, 3, 49, 3, 0])
    assert torch.equal(host.gather(index), torch.from_numpy(images[[7, 3, 49, 3, 0]]))
    assert torch.equal(resident.gather(index), host.gather(index))
    # 9 samples in batches of 4: 4 + 4, the trailing single sample is dropped (BatchNorm)
    batches = list(index_batches(torch.arange(9), 4, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4] == [4] * num_batches(9, 4)
    assert len(set(torch.cat(batches).tolist())) == 8
    # with a device the order is the same (drawn on the CPU) and the batches live on that device
    on_meta = list(index_batches(torch.arange(9), 4, torch.Generator().manual_seed(0), device=torch.device("meta")))
    assert [b.device.type for b in on_meta] == ["meta", "meta"] and [len(b) for b in on_meta] == [4, 4]
    same = list(index_batches(torch.arange(9), 4, torch.Generator().manual_seed(0), device=torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(batches, same))


def test_resident_limit_takes_a_share_of_free_gpu_memory(monkeypatch):
    from dfcil.engine import store

    gib = 1024**3
    assert store.resident_limit_bytes(torch.device("cpu")) == 8 * gib
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * gib, 141 * gib))
    assert store.resident_limit_bytes(torch.device("cuda")) == int(0.3 * 100 * gib)  # ImageNet-100 fits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (22 * gib, 24 * gib))
    assert store.resident_limit_bytes(torch.device("cuda")) == int(0.3 * 22 * gib)  # ImageNet-100 does not


def test_upload_copies_a_memory_mapped_array_in_chunks(tmp_path):
    from dfcil.engine.store import upload

    images = np.random.default_rng(2).integers(0, 256, (13, 4, 4, 3)).astype(np.uint8)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    for chunk_bytes in (1, 5 * 48, 10**9):  # one row, 5 rows (13 = 5 + 5 + 3), everything
        out = upload(mapped, torch.device("cpu"), chunk_bytes)
        assert out.dtype == torch.uint8 and torch.equal(out, torch.from_numpy(images))


def test_first_per_class_keeps_the_first_n_of_each_label():
    from dfcil.engine.epoch import first_per_class

    positions = np.array([2, 0, 2, 1, 0, 2, 0])
    # label 2 at 0, 2, 5; label 0 at 1, 4, 6; label 1 at 3
    assert first_per_class(positions, 2).tolist() == [0, 1, 2, 3, 4]
    assert first_per_class(positions, 1).tolist() == [0, 1, 3]
    assert first_per_class(positions, 5).tolist() == list(range(7))


def test_train_per_class_caps_training_images_only(tmp_path):
    config = parse_experiment(
        {
            "data": {"dataset": "imagefolder", "train_per_class": 5},
            "scenario": {"order": "identity", "num_tasks": 2},
            "train": {"precision": "fp32"},
            "runtime": {"progress": False, "device": "cpu"},
        }
    )
    trainer = Trainer(config, tmp_path, tiny_dataset(per_class=16))
    assert torch.bincount(trainer.train_data.labels).tolist() == [5, 5, 5, 5]
    assert torch.bincount(trainer.test_data.labels).tolist() == [16, 16, 16, 16]


def test_precision_auto_uses_bf16_only_where_it_is_native(monkeypatch):
    from dfcil import precision

    cpu = torch.device("cpu")
    assert precision.resolve_precision("fp32", cpu) == "fp32"
    assert precision.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(precision, "fast_bf16_available", lambda device: False)
    assert precision.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(precision, "fast_bf16_available", lambda device: True)
    assert precision.resolve_precision("auto", cpu) == "bf16"


def test_bf16_counts_as_fast_on_a_cpu_only_with_avx512_bf16_or_amx(monkeypatch):
    # oneDNN reports bf16 on any AVX-512 CPU and emulates it where AVX-512 BF16 and AMX are missing
    # (1.8x slower than fp32 on such a Xeon: benchmarks/precision_speed.py)
    from dfcil import precision

    cpu = torch.device("cpu")
    capabilities = {"architecture": "x86_64", "avx512_bw": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(capabilities))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert not precision.fast_bf16_available(cpu)
    capabilities["avx512_bf16"] = True  # e.g. AMD Zen 4, Intel Cooper Lake
    assert precision.fast_bf16_available(cpu)
    capabilities.update(avx512_bf16=False, amx_bf16=True)  # Sapphire Rapids and later
    assert precision.fast_bf16_available(cpu)
    capabilities.update(amx_bf16=False, architecture="aarch64")  # other architectures: oneDNN decides
    assert precision.fast_bf16_available(cpu)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert not precision.fast_bf16_available(cpu)


def test_fixed_batch_prediction_pads_the_last_batch_without_changing_any_row(tmp_path):
    from dfcil.engine.evaluate import predict

    trainer = Trainer(tiny_config(), tmp_path, tiny_dataset())
    trainer.model.add_head(2)
    trainer.model.train()  # predict switches to eval mode (rows independent) and back
    indices = trainer.test_data.indices_of(0, 2)
    assert len(indices) % 5 != 0  # a short last batch
    ragged = predict(trainer.model, trainer.test_data.store, indices, trainer.normalizer, trainer.env, 5)
    fixed = predict(trainer.model, trainer.test_data.store, indices, trainer.normalizer, trainer.env, 5,
                    fixed_batch=True)
    assert trainer.model.training
    for a, b in zip(ragged, fixed):
        assert a.shape == b.shape and a.shape[0] == len(indices)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    Trainer(tiny_config(compile=True, compile_mode="max-autotune-no-cudagraphs"), tmp_path, tiny_dataset())
    assert calls == [{"dynamic": False, "mode": "max-autotune-no-cudagraphs"}]
    with pytest.raises(Exception, match="compile_mode"):
        tiny_config(compile=True, compile_mode="fastest")


@pytest.mark.slow
def test_compiled_backbone_trains_like_eager_and_saves_plain_checkpoints(tmp_path):
    """train.compile: the same run (fp32, same seed) as eager within float tolerance, and
    state_dict keys free of compile wrappers (checkpoints load into an eager model)."""
    runs = {}
    for compiled in (False, True):
        # reduce-overhead: CUDA graphs on a GPU, the default compilation here (and the step's
        # cudagraph_mark_step_begin must be harmless on a CPU)
        trainer = Trainer(tiny_config(compile=compiled, compile_mode="reduce-overhead", epochs=1),
                          tmp_path / str(compiled), tiny_dataset())
        runs[compiled] = (trainer, trainer.run())
    (eager, eager_metrics), (compiled, compiled_metrics) = runs[False], runs[True]
    assert compiled.model.backbone._compiled_call_impl is not None  # compiled in place
    assert eager.model.backbone._compiled_call_impl is None
    assert compiled_metrics["complete"]
    assert compiled_metrics["accuracy_per_step"] == pytest.approx(eager_metrics["accuracy_per_step"], abs=2.0)
    state = compiled.model.state_dict()
    assert list(state) == list(eager.model.state_dict())
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(state[key], value, rtol=1e-3, atol=1e-3, msg=key)


def test_rng_restore_skips_a_generator_saved_on_another_kind_of_device():
    from dfcil.engine.rng import capture, restore

    generators = {"sample": torch.Generator().manual_seed(1), "device": torch.Generator().manual_seed(2)}
    state = capture(generators)
    expected = {name: torch.rand(3, generator=g) for name, g in generators.items()}
    # the "device" stream was saved by a GPU run (a 16-byte Philox state): a CPU resume keeps its own
    state["own_devices"]["device"] = "cuda"
    state["own"]["device"] = torch.zeros(16, dtype=torch.uint8)
    restore(state, generators)
    assert torch.equal(torch.rand(3, generator=generators["sample"]), expected["sample"])
    assert not torch.equal(torch.rand(3, generator=generators["device"]), expected["device"])
    # an older checkpoint without own_devices: told apart by the state's size
    del state["own_devices"]
    restore(state, generators)
    assert torch.equal(torch.rand(3, generator=generators["sample"]), expected["sample"])


def test_log_truncation_keeps_a_phase_eval_only_before_its_phase_is_redone(tmp_path):
    from dfcil.engine.checkpoint import Position
    from dfcil.runlog import RunLog

    log = RunLog(tmp_path / "log.jsonl")
    for record in (
        {"event": "epoch", "task": 2, "phase_index": 0, "epoch": 1},
        {"event": "epoch", "task": 2, "phase_index": 0, "epoch": 2},
        {"event": "phase_eval", "task": 2, "phase_index": 0},
        {"event": "epoch", "task": 2, "phase_index": 1, "epoch": 1},
    ):
        log.append(record)
    # resumed after phase 0's last checkpoint: the phase eval is written again, so it goes
    log.truncate_after(Position(task=1, phase=0, epoch=2, task_done=False))
    assert [r["event"] for r in log.records] == ["epoch", "epoch"]
    log.append({"event": "phase_eval", "task": 2, "phase_index": 0})
    log.append({"event": "epoch", "task": 2, "phase_index": 1, "epoch": 1})
    # resumed inside phase 1: phase 0's eval stays
    log.truncate_after(Position(task=1, phase=1, epoch=1, task_done=False))
    assert [r["event"] for r in RunLog(tmp_path / "log.jsonl").records] == ["epoch", "epoch", "phase_eval", "epoch"]
    # a finished task keeps everything; an earlier position drops the whole task
    log.truncate_after(Position(task=1, phase=0, epoch=0, task_done=True))
    assert len(log.records) == 4
    log.truncate_after(Position(task=0, phase=0, epoch=0, task_done=True))
    assert log.records == []


def test_progress_into_a_file_is_one_line_per_epoch_and_per_generator_window(tmp_path, capsys):
    config = parse_experiment({
        "data": {"dataset": "imagefolder"},
        "scenario": {"order": "identity", "num_tasks": 2},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "constant", "milestones": [],
                  "precision": "fp32"},
        "method": {"name": "abd", "synthesis": {"steps": 4, "batch_size": 8, "log_every": 2}},
        "runtime": {"progress": True, "device": "cpu", "num_threads": 1},
    })
    with console_logging():  # the command line's stderr handler
        Trainer(config, tmp_path / "run", coloured_dataset()).run()
    err = capsys.readouterr().err  # not a terminal: no bars, no carriage returns
    assert "\r" not in err and "it/s" not in err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines if "generator step" in line] == [
        "[dfcil] task 2 generator step 2/4", "[dfcil] task 2 generator step 4/4"]
    assert all("old-model confidence" in line and "coverage" in line for line in lines if "generator" in line)
    assert sum(" epoch " in line for line in lines) == 4  # 2 tasks x 2 epochs, one line each


def test_methods_of_other_packages_register_through_entry_points(monkeypatch):
    import dfcil.methods as registry
    from dfcil.errors import ConfigError
    from dfcil.methods.finetune import Finetune

    class Plugin(Finetune):
        name = "plugin-finetune"
        description = "a third-party method"

    class FakeEntryPoint:
        def __init__(self, name, loaded):
            self.name, self.value, self._loaded = name, f"plugins:{name}", loaded

        def load(self):
            if isinstance(self._loaded, Exception):
                raise self._loaded
            return self._loaded

    def entry_points_of(*points):
        return lambda group: list(points) if group == "dfcil.methods" else []

    monkeypatch.setattr(registry, "entry_points", entry_points_of(FakeEntryPoint("plugin", Plugin)))
    methods = registry._registry()
    assert methods["plugin-finetune"] is Plugin and list(methods)[: len(registry.BUILT_IN)] == list(registry.METHODS)
    for point, needle in ((FakeEntryPoint("broken", ImportError("no module plugins")), "does not load"),
                          (FakeEntryPoint("odd", object), "is not a dfcil Method"),
                          (FakeEntryPoint("thief", type("Thief", (Finetune,), {"name": "lwf"})), "'lwf' is taken")):
        monkeypatch.setattr(registry, "entry_points", entry_points_of(point))
        with pytest.raises(ConfigError, match=needle):
            registry._registry()


class PassInFinishMethod(Method):
    """Plain CE, and in ``finish_task`` one pass over the task's real images (as EWC, MAS and
    PASS make), kept for inspection."""

    name = "test-finish-pass"
    description = "test double"
    Options = HeadPhaseOptions

    def __init__(self, options, env, passes: bool = True):
        super().__init__(options, env)
        self.passes = passes
        self.seen: dict[int, list[Batch]] = {}

    def training_step(self, model, batch: Batch, task, phase) -> StepResult:
        logits = model(batch.images).logits
        return StepResult({"ce": Loss(cross_entropy_seen(logits, batch.labels, task.num_seen))}, logits)

    def finish_task(self, model, task):
        if self.passes:
            self.seen[task.index] = list(self.env.task_batches(task, batch_size=10))
            self.env.log({"event": "pass_done", "batches": len(self.seen[task.index])})


def test_task_batches_give_every_real_image_of_the_task_once_and_change_nothing(tmp_path):
    dataset = tiny_dataset(classes=4, per_class=16)
    runs = {}
    for passes in (True, False):
        trainer = Trainer(tiny_config(), tmp_path / str(passes), dataset)
        trainer.method = PassInFinishMethod(HeadPhaseOptions(), trainer.env, passes)
        runs[passes] = (trainer, trainer.run())
    trainer, metrics = runs[True]
    # no random number drawn, nothing changed: the run is the one without the pass
    assert metrics["accuracy_per_step"] == runs[False][1]["accuracy_per_step"]
    for task in trainer.scenario.tasks:
        batches = trainer.method.seen[task.index]
        assert [len(b.labels) for b in batches] == [10, 10, 10, 2]  # 32 images, the last batch kept
        labels = torch.cat([b.labels for b in batches])
        assert sorted(labels.tolist()) == sorted([task.start] * 16 + [task.start + 1] * 16)
        index = trainer.train_data.indices_of(task.start, task.stop)
        expected = trainer.normalizer(trainer.train_data.store.gather(index))
        assert torch.equal(torch.cat([b.images for b in batches]), expected)  # in index order, not augmented
    # a record logged inside finish_task carries its task and the mark a resume drops it by
    assert [r for r in trainer.log.records if r["event"] == "pass_done"] == [
        {"event": "pass_done", "batches": 4, "task": t, "finish_task": True} for t in (1, 2)]
    shuffled = list(trainer.env.task_batches(trainer.scenario.tasks[1], augment=True, shuffle=True))
    assert sum(len(b.labels) for b in shuffled) == 32 and len(shuffled) == 2  # train.batch_size 16


def test_a_phase_optimises_with_sgd_or_adam_as_the_config_says(tmp_path):
    from dfcil.engine.epoch import build_optimizer

    model = IncrementalClassifier(build_backbone("resnet32"))
    model.add_head(2)
    for optimizer_name, kind in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        train = tiny_config(optimizer=optimizer_name, lr=0.001, weight_decay=2e-4).config.train
        phase = Phase.main(train)
        assert phase.optimizer == optimizer_name
        optimizer, _ = build_optimizer(model, None, phase, train)
        assert type(optimizer) is kind
        group = optimizer.param_groups[0]
        assert (group["lr"], group["weight_decay"]) == (0.001, 2e-4)
        if kind is torch.optim.SGD:
            assert group["momentum"] == train.momentum
    # a whole run with Adam
    trainer = Trainer(tiny_config(optimizer="adam", lr=0.001), tmp_path, tiny_dataset())
    trainer.method = HeadPhaseMethod(HeadPhaseOptions(), trainer.env)
    assert trainer.run()["complete"]

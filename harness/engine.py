"""One stage run: data, model, upstream weights, method, optimizer, loop, evaluators, meters.

The engine runs wherever the executor puts it (the driver process, a worker process, a Ray
actor), so everything it needs arrives in a picklable ``StageTask`` and everything it produces
leaves as a ``StageResult`` plus files in the task's artifact folder. It never talks to MLflow.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .api import (Batch, DataBundle, DatasetContext, EvalContext, Method, MethodContext, Split,
                  StageInfo, StageResult, load_matching)
from .errors import UserError
from .meters import PeakMemory, choose_threads, macs_per_sample

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class ModelSource:
    """Where an upstream stage's trained method lives, with the sources of its own references
    (a method rebuilt as a frozen reference may itself need its references)."""

    checkpoint: str
    refs: dict[str, "ModelSource"] = field(default_factory=dict)


@dataclass
class StageTask:
    """Everything a stage run needs, picklable so that any executor can ship it."""

    name: str
    identity: str
    stage: str
    seed: int
    dataset: dict[str, Any]
    architecture: dict[str, Any]
    method: dict[str, Any]
    run: dict[str, Any]
    evaluate: list[dict[str, Any]]
    config: dict[str, Any]
    artifact_dir: str
    data_root: str
    init_from: ModelSource | None = None
    refs: dict[str, ModelSource] = field(default_factory=dict)
    plugin_modules: tuple[str, ...] = ()
    max_threads: int = 1
    #: folder of this stage run's resume state (``HOME/resume/<identity>``); None: keep none
    resume_dir: str | None = None
    #: continue from the state found in ``resume_dir`` instead of starting afresh
    resume: bool = False
    #: seconds of training between two saves of the resume state (0: after every epoch)
    checkpoint_every: float = 30.0


class StageFailed(Exception):
    """The run itself failed (NaN loss, a plugin raised): recorded, and the grid goes on."""


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} was asked for but CUDA is not available here",
                        key="device", hint="use `device: auto` or `device: cpu`")
    return torch.device(requested)


#: multiply-accumulates per training batch from which ``amp: auto`` uses bfloat16 on CUDA.
#: Measured on an H200 (reports/benchmarks.md): below it autocast's casts cost more than the
#: faster matrix units give back. std steps ran 0.70x as fast with bf16 on mnist_cnn (batch 64,
#: 0.49 G), 0.81x on resnet56 (batch 128, 16 G), 0.85x on vgg_cifar (batch 64, 22 G), and
#: 1.15x faster only on vgg_cifar at batch 256 (87 G).
AMP_BATCH_MACS = 50_000_000_000


def choose_amp(requested, device: torch.device, method: Method, macs_batch: int) -> torch.dtype | None:
    """The autocast dtype of the training step, or None for plain float32.

    bfloat16, never float16: it has float32's range, so no gradient scaling is needed and a
    loss cannot underflow. ``auto`` takes it only where it is safe and pays: on CUDA (CPU
    autocast is slower than float32 on most CPUs), for steps large enough that arithmetic, not
    kernel launches and casts, bounds them (``AMP_BATCH_MACS``), and for methods that do not
    declare ``amp_safe = False``. ``true`` forces it anywhere. Evaluators always run in float32.
    """
    if requested is True:
        return torch.bfloat16
    if requested == "auto" and device.type == "cuda" and method.amp_safe \
            and macs_batch >= AMP_BATCH_MACS:
        return torch.bfloat16
    return None


def split_options(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    opts = {k: v for k, v in spec.items() if k not in ("name", "label")}
    return spec["name"], opts


def build_data(plugins, spec: dict[str, Any], root: str, download: bool) -> DataBundle:
    name, opts = split_options(spec)
    factory = plugins.get("datasets", name).obj
    return factory(DatasetContext(root=Path(root), download=download), **opts)


def build_model(plugins, spec: dict[str, Any], input_shape, num_classes) -> torch.nn.Module:
    name, opts = split_options(spec)
    return plugins.get("architectures", name).obj(tuple(input_shape), num_classes, **opts)


def load_method(plugins, source: ModelSource, device: torch.device) -> Method:
    """Rebuild an upstream stage's method from its checkpoint, frozen, as a reference."""
    ckpt = torch.load(source.checkpoint, map_location=device, weights_only=True)
    meta = ckpt["meta"]
    refs = {name: load_method(plugins, s, device) for name, s in source.refs.items()}
    shape, classes = tuple(meta["input_shape"]), int(meta["num_classes"])
    model = build_model(plugins, meta["architecture"], shape, classes).to(device)
    ctx = MethodContext(stage=meta["stage"], seed=int(meta["seed"]), epochs=int(meta["epochs"]),
                        num_classes=classes, input_shape=shape,
                        train=Split(torch.zeros((0, *shape)), torch.zeros(0, dtype=torch.long)),
                        device=device, upstream=refs,
                        build_model=lambda: build_model(plugins, meta["architecture"], shape,
                                                        classes).to(device))
    name, opts = split_options(meta["method"])
    method = plugins.get("methods", name).obj(model, ctx, **opts).to(device)
    method.load_state_dict(ckpt["state_dict"])
    method.eval()
    method.requires_grad_(False)
    return method


def read_model_state(source: ModelSource) -> dict[str, torch.Tensor]:
    """The primary network's weights of an upstream stage (``model.*`` of its method)."""
    state = torch.load(source.checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def make_optimizer(params, run: dict[str, Any]) -> torch.optim.Optimizer:
    """The run's optimizer, with PyTorch's fused kernel where it has one.

    Why fused: on the MI network the default (per-tensor) Adam issued about ten small kernels per
    parameter tensor per step and was a third of the step's time; the fused kernel updates all
    tensors in one call and made the whole step 20-25% faster on CPU (reports/benchmarks.md).
    Its results differ from the unfused ones in the last bits only, and are deterministic.
    """
    name, lr, wd = run["optimizer"], float(run["lr"]), float(run["weight_decay"])
    if name == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": float(run["momentum"])}
    elif name == "adam":
        cls, kwargs = torch.optim.Adam, {}
    elif name == "adamw":
        cls, kwargs = torch.optim.AdamW, {}
    else:
        raise UserError(f"unknown optimizer {name!r}", key="optimizer")
    params = list(params)
    try:
        return cls(params, lr=lr, weight_decay=wd, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # a dtype or device without a fused kernel
        return cls(params, lr=lr, weight_decay=wd, **kwargs)


def lr_factor(schedule: dict[str, Any], epoch: int, epochs: int) -> float:
    """Multiplier of the base learning rate during 0-based ``epoch``."""
    name = schedule["name"]
    gamma = float(schedule.get("gamma", 0.1))
    if name == "constant":
        return 1.0
    if name == "step":
        return gamma ** (epoch // int(schedule["step_size"]))
    if name == "multistep":
        return gamma ** sum(epoch >= m for m in schedule["milestones"])
    if name == "cosine":
        floor = float(schedule.get("min_lr", 0.0))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
    raise UserError(f"unknown schedule {name!r}", key="schedule")


def _due(every, epoch: int, epochs: int) -> bool:
    last = epoch == epochs - 1
    if every == "end":
        return last
    return last or (epoch + 1) % int(every) == 0


class ResumeState:
    """Everything that makes epoch k+1 of a stage run the same whether or not the process
    stopped after epoch k: the method's state (parameters, buffers, and whatever a method keeps
    through torch's ``get_extra_state``), the optimizer's state, every random generator the
    loop or a plugin may draw from, the evaluators (pickled: an evaluator that collects points
    across epochs, such as an information plane, keeps them) and the history so far.

    Saved every ``StageTask.checkpoint_every`` seconds rather than every epoch, because on the
    MI network an epoch takes milliseconds and a save would cost as much as the epoch. Written
    to a temporary file and renamed, so a kill during a save leaves the previous state intact.
    """

    FORMAT = 1
    FILE = "state.pt"
    PROGRESS = "progress.json"

    def __init__(self, folder: Path):
        self.folder = folder

    @staticmethod
    def progress(folder: Path) -> dict | None:
        """``{"epoch": k, "epochs": n}`` of the last save in ``folder``, without loading it."""
        try:
            return json.loads((folder / ResumeState.PROGRESS).read_text())
        except (OSError, ValueError):
            return None

    def save(self, epoch: int, epochs: int, method: Method, optimizer, generators, evaluators,
             history, train_seconds: float) -> None:
        try:
            evaluator_blob = pickle.dumps([ev for _, ev, _ in evaluators])
        except Exception:  # an evaluator that cannot be pickled restarts empty on resume
            evaluator_blob = None
        state = {
            "format": self.FORMAT, "epoch": epoch, "epochs": epochs,
            "method": method.state_dict(), "optimizer": optimizer.state_dict(),
            "generators": [g.get_state() for g in generators],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
            "evaluators": evaluator_blob, "history": history, "train_seconds": train_seconds,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.FILE}.{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.folder / self.FILE)
        tmp = self.folder / f".{self.PROGRESS}.{os.getpid()}"
        tmp.write_text(json.dumps({"epoch": epoch, "epochs": epochs, "saved": time.time()}))
        os.replace(tmp, self.folder / self.PROGRESS)

    def load(self, epochs: int) -> "_Saved | None":
        path = self.folder / self.FILE
        if not path.is_file():
            return None
        # our own file, written by save() above; it holds numpy and Python RNG states, which the
        # weights-only unpickler refuses
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("format") != self.FORMAT or state.get("epochs") != epochs:
            return None
        return _Saved(state)


@dataclass
class _Saved:
    state: dict

    def restore(self, method: Method, optimizer, generators, evaluators,
                result: StageResult) -> tuple[int, float]:
        """Put the saved state in place; return (epochs done, training seconds so far)."""
        s = self.state
        method.load_state_dict(s["method"])
        optimizer.load_state_dict(s["optimizer"])
        for g, g_state in zip(generators, s["generators"]):
            g.set_state(g_state)
        torch.set_rng_state(s["torch_rng"])
        if s["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        random.setstate(s["python_rng"])
        np.random.set_state(s["numpy_rng"])
        if s["evaluators"] is not None:
            for i, ev in enumerate(pickle.loads(s["evaluators"])):
                name, _, every = evaluators[i]
                evaluators[i] = (name, ev, every)
        result.history.extend(s["history"])
        return int(s["epoch"]), float(s["train_seconds"])


def run_stage(task: StageTask, plugins=None, *, data: DataBundle | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> StageResult:
    """Train one stage run. Never raises for a failure of the run itself: it is in the result.

    ``data`` may be handed over when the caller already built it (the driver does, to fingerprint
    it); ``on_epoch`` sees each epoch's metrics as they come (progress display, live tracking).
    """
    from . import plugins as plugin_mod

    plugins = plugins or plugin_mod.load(task.plugin_modules)
    info = StageInfo(name=task.name, identity=task.identity, stage=task.stage, config=task.config)
    history: list[dict[str, float]] = []
    artifact_dir = Path(task.artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    result = StageResult(status="FAILED", history=history, artifact_dir=str(artifact_dir))
    try:
        plugins.pm.hook.harness_stage_started(info=info)
        _train(task, plugins, data, info, result, on_epoch)
        result.status = "FINISHED"
    except StageFailed as exc:
        result.error = str(exc)
    except UserError:
        raise
    except Exception as exc:  # a plugin raised: record it with the traceback
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc()
    if result.traceback:
        (artifact_dir / "traceback.txt").write_text(result.traceback)
    plugins.pm.hook.harness_stage_finished(info=info, result=result)
    return result


def _train(task: StageTask, plugins, data: DataBundle | None, info: StageInfo,
           result: StageResult, on_epoch) -> None:
    run = task.run
    device = resolve_device(run["device"])
    if data is None:
        data = build_data(plugins, task.dataset, task.data_root, bool(run.get("download")))
    train, test = data.train.to(device), data.test.to(device)
    data_on_device = DataBundle(train=train, test=test, num_classes=data.num_classes,
                                name=data.name, description=data.description)

    torch.manual_seed(task.seed)
    model = build_model(plugins, task.architecture, data.input_shape, data.num_classes).to(device)
    loaded: list[str] = []
    if task.init_from is not None:
        loaded, _ = load_matching(model, read_model_state(task.init_from))
    refs = {name: load_method(plugins, source, device) for name, source in task.refs.items()}
    ctx = MethodContext(
        stage=task.stage, seed=task.seed, epochs=int(run["epochs"]), num_classes=data.num_classes,
        input_shape=data.input_shape, train=train, device=device, upstream=refs,
        build_model=lambda: build_model(plugins, task.architecture, data.input_shape,
                                        data.num_classes).to(device))
    method_name, method_opts = split_options(task.method)
    method = plugins.get("methods", method_name).obj(model, ctx, **method_opts).to(device)

    batch_size = int(run["batch_size"])
    macs = macs_per_sample(model, data.input_shape) * batch_size
    threads = choose_threads(run["threads"], macs, task.max_threads)
    torch.set_num_threads(threads)
    amp_dtype = choose_amp(run.get("amp", "auto"), device, method, macs)
    # a no-op context when off: entering a disabled torch.autocast still costs microseconds,
    # a measurable share of a step on the MI network
    autocast = (partial(torch.autocast, device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext)
    if device.type == "cuda":
        # every batch of a stage run has the same shape (but the last), so cuDNN's search for
        # the fastest convolution algorithm is paid once and then reused
        torch.backends.cudnn.benchmark = True

    evaluators = []
    for spec in task.evaluate:
        name, opts = split_options(spec)
        every = opts.pop("every", None)
        evaluator = plugins.get("evaluators", name).obj(**opts)
        evaluators.append((name, evaluator, every if every is not None else evaluator.every))

    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, run)
    epochs = int(run["epochs"])
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    n = len(train)
    steps = math.ceil(n / batch_size)
    generators = [torch.Generator().manual_seed(task.seed + 7919 * (s + 1))
                  for s in range(max(1, method.streams))]

    result.params.update({
        "threads": threads, "device": str(device), "macs_per_batch": macs,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "off",
        "model_params": sum(p.numel() for p in model.parameters()),
        "trained_params": sum(p.numel() for p in params),
        "init_loaded_tensors": len(loaded), "train_samples": n, "test_samples": len(test),
        "data_fingerprint": task.config.get("data_fingerprint", ""),
    })
    resume = ResumeState(Path(task.resume_dir)) if task.resume_dir else None
    start, train_seconds = 0, 0.0
    if resume is not None and task.resume:
        saved = resume.load(epochs)
        if saved is not None:
            start, train_seconds = saved.restore(method, optimizer, generators, evaluators, result)
            result.params["resumed_from_epoch"] = start
            if on_epoch is not None:  # the caller's view of the history starts where ours does
                for row in result.history:
                    on_epoch(int(row["epoch"]), row)
    last_save = time.monotonic()
    epoch_hook = plugins.pm.hook.harness_epoch_finished
    meter = PeakMemory(device).start()
    x_train, y_train = train.x, train.y
    try:
        for epoch in range(start, epochs):
            factor = lr_factor(run["schedule"], epoch, epochs)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            metrics: dict[str, float] = {"epoch": epoch + 1, "lr": base_lrs[0] * factor}
            metrics.update(method.epoch_started(epoch) or {})
            method.train()
            t0 = time.perf_counter()
            perms = [torch.randperm(n, generator=g).to(device) for g in generators]
            main_perm, other_perms = perms[0], perms[1:]
            term_log: dict[str, list[torch.Tensor]] = {}
            sizes = []
            for step in range(steps):
                lo, hi = step * batch_size, (step + 1) * batch_size
                idx = main_perm[lo:hi]
                batch = Batch(x_train[idx], y_train[idx], idx)
                if other_perms:
                    batch.others = [Batch(x_train[i], y_train[i], i)
                                    for i in (perm[lo:hi] for perm in other_perms)]
                with autocast():
                    terms = method.loss(batch)
                values = iter(terms.values())
                total = next(values)  # not sum(): its leading 0 + t is one more autograd op per step
                for value in values:
                    total = total + value
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                for k, v in terms.items():
                    term_log.setdefault(k, []).append(v.detach())
                sizes.append(len(idx))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            weights = torch.tensor(sizes, dtype=torch.float64) / n
            loss_total = 0.0
            for k, values in term_log.items():
                value = float((torch.stack(values).double().cpu() * weights).sum())
                metrics[f"loss_{k}"] = value
                loss_total += value
            metrics["loss"] = loss_total
            metrics["epoch_seconds"] = seconds
            metrics["train_samples_per_s"] = n / seconds if seconds > 0 else float("nan")
            if not math.isfinite(loss_total):
                bad = ", ".join(f"{k}={metrics[f'loss_{k}']:.4g}" for k in term_log)
                raise StageFailed(f"loss became {loss_total} in epoch {epoch + 1} ({bad})")
            for name, evaluator, every in evaluators:
                if _due(every, epoch, epochs):
                    ectx = EvalContext(data=data_on_device, epoch=epoch + 1, final=epoch == epochs - 1,
                                       device=device, artifact_dir=Path(result.artifact_dir),
                                       batch_size=int(run["eval_batch_size"]))
                    metrics.update(evaluator.evaluate(method, ectx))
            result.history.append(metrics)
            if (resume is not None and epoch < epochs - 1
                    and time.monotonic() - last_save >= task.checkpoint_every):
                resume.save(epoch + 1, epochs, method, optimizer, generators, evaluators,
                            result.history, train_seconds)
                last_save = time.monotonic()
            epoch_hook(info=info, epoch=epoch + 1, metrics=metrics)
            if on_epoch is not None:
                on_epoch(epoch + 1, metrics)
    finally:
        memory = meter.stop()
    summary: dict[str, float] = {}
    for row in result.history:
        summary.update({k: v for k, v in row.items() if k not in ("epoch",)})
    summary.pop("epoch_seconds", None)
    summary.pop("train_samples_per_s", None)
    summary.update(memory)
    summary["seconds_per_epoch"] = train_seconds / max(1, epochs)
    summary["train_samples_per_s"] = n * epochs / train_seconds if train_seconds > 0 else float("nan")
    summary["train_seconds"] = train_seconds
    result.summary = summary
    torch.save({"format": CHECKPOINT_FORMAT,
                "meta": {"stage": task.stage, "seed": task.seed, "epochs": epochs,
                         "input_shape": list(data.input_shape), "num_classes": data.num_classes,
                         "architecture": task.architecture, "method": task.method},
                "state_dict": method.state_dict()},
               Path(result.artifact_dir) / CHECKPOINT)

"""One stage run, put together from the parts in ``harness.train``.

The engine runs wherever the executor puts it (the driver process, a worker process, a Ray
actor), so everything it needs arrives in a picklable ``StageTask`` and everything it produces
leaves as a ``StageResult`` plus files in the task's artifact folder. It never talks to MLflow.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from . import plugins as plugin_mod
from . import storage
from .api import DataBundle, Method, StageInfo, StageResult, load_matching
from .errors import UserError
from .meters import PeakMemory, choose_threads, macs_per_sample
from .placement import GPU_ENV
from .train.build import StageData, build_method, build_model, build_stage_data, split_options
from .train.checkpoint import (CHECKPOINT, CHECKPOINT_FORMAT, ModelSource, ResumeState,
                               load_method, read_model_state, save_final)
from .train.loop import EpochLoop, EvaluatorSlot, StageFailed, summary_of
from .train.observe import OBSERVERS, notify
from .train.streams import StreamSet, resolve_streams
from .train.updates import Updates, make_optimizer

__all__ = ["StageTask", "run_stage", "resolve_device", "choose_amp", "AMP_BATCH_MACS",
           "build_data", "build_model", "make_optimizer", "load_method", "read_model_state",
           "split_options", "CHECKPOINT", "CHECKPOINT_FORMAT", "ModelSource", "ResumeState",
           "StageFailed", "make_loop", "restore", "save_resume", "finish", "train_loop",
           "start_stage", "guarded", "end_stage"]


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


def build_data(plugins, spec: dict[str, Any], root: str, download: bool) -> DataBundle:
    """One data set from a plugin spec, with the core's data options applied."""
    return build_stage_data(plugins, spec, root, download).main


def run_stage(task: StageTask, plugins=None, *, data: StageData | DataBundle | None = None,
              on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> StageResult:
    """Train one stage run. Never raises for a failure of the run itself: it is in the result.

    ``data`` may be handed over when the caller already built it (the driver does, to fingerprint
    it); ``on_epoch`` sees each epoch's metrics as they come (progress display, live tracking).
    """
    plugins = plugins or plugin_mod.load(task.plugin_modules)
    info, result = start_stage(task, plugins)
    guarded(result, lambda: _train(task, plugins, data, info, result, on_epoch))
    return end_stage(plugins, info, result)


def start_stage(task: StageTask, plugins) -> tuple[StageInfo, StageResult]:
    """A stage run's start: its artifact folder, a result that says FAILED until it finished,
    and the ``harness_stage_started`` hook."""
    info = StageInfo(name=task.name, identity=task.identity, stage=task.stage, config=task.config)
    artifact_dir = Path(task.artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    result = StageResult(status="FAILED", history=[], artifact_dir=str(artifact_dir))
    guarded(result, lambda: plugins.pm.hook.harness_stage_started(info=info), status=None)
    return info, result


def guarded(result: StageResult, work: Callable[[], None], status: str | None = "FINISHED") -> bool:
    """Run ``work``; a failure of the run itself (a NaN loss, a plugin that raised) goes into
    ``result`` with its traceback, bad input (``UserError``) is raised. Whether it succeeded."""
    if result.error is not None:  # failed already (a hook that raised): nothing more to run
        return False
    try:
        work()
    except StageFailed as exc:
        result.error = str(exc)
    except UserError:
        raise
    except Exception as exc:  # a plugin raised: record it with the traceback
        full = storage.recognise(exc, result.artifact_dir or ".")
        if full is not None:  # every run after it would fail the same way: stop the invocation
            raise full from exc
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc()
    else:
        if status is not None:
            result.status = status
        return True
    return False


def end_stage(plugins, info: StageInfo, result: StageResult) -> StageResult:
    """A stage run's end: its traceback as a file, and the ``harness_stage_finished`` hook."""
    if result.traceback:
        (Path(result.artifact_dir) / "traceback.txt").write_text(result.traceback)
    plugins.pm.hook.harness_stage_finished(info=info, result=result)
    return result


def evaluator_slots(plugins, specs: list[dict[str, Any]]) -> list[EvaluatorSlot]:
    slots = []
    for spec in specs:
        name, opts = split_options(spec)
        every = opts.pop("every", None)
        roles = opts.pop("on", None) or []
        evaluator = plugins.get("evaluators", name).obj(**opts)
        slots.append(EvaluatorSlot(name, evaluator, every if every is not None else evaluator.every,
                                   [roles] if isinstance(roles, str) else list(roles)))
    return slots


def _setup(task: StageTask, plugins, data, device: torch.device, result: StageResult):
    """The stage's objects: data on the device, the method (from upstream weights if asked)."""
    run = task.run
    if data is None:
        data = build_stage_data(plugins, task.dataset, task.data_root, bool(run.get("download")))
    data = StageData.of(data)
    on_device = data.to(device)
    main = data.main
    torch.manual_seed(task.seed)
    model = build_model(plugins, task.architecture, main.input_shape, main.num_classes).to(device)
    loaded: list[str] = []
    if task.init_from is not None:
        loaded, _ = load_matching(model, read_model_state(task.init_from))
    refs = {name: load_method(plugins, source, device) for name, source in task.refs.items()}
    if OBSERVERS:
        for name, source in task.refs.items():
            notify("reference_loaded", source, refs[name])
    method = build_method(plugins, task.method, task.architecture, data=on_device,
                          input_shape=main.input_shape, num_classes=main.num_classes,
                          stage=task.stage, seed=task.seed, epochs=int(run["epochs"]),
                          device=device, upstream=refs, run=run, model=model)
    result.params["init_loaded_tensors"] = len(loaded)
    return on_device, method


def _autocast(task: StageTask, device, method, macs: int, result: StageResult):
    amp_dtype = choose_amp(task.run.get("amp", "auto"), device, method, macs)
    result.params["amp"] = str(amp_dtype).removeprefix("torch.") if amp_dtype is not None else "off"
    if device.type == "cuda":
        # every batch of a stage run has the same shape (but the last), so cuDNN's search for
        # the fastest convolution algorithm is paid once and then reused
        torch.backends.cudnn.benchmark = True
    # a no-op context when off: entering a disabled torch.autocast still costs microseconds,
    # a measurable share of a step on the MI network
    if amp_dtype is None:
        return contextlib.nullcontext, False
    return partial(torch.autocast, device.type, dtype=amp_dtype), True


def make_loop(task: StageTask, plugins, data, device, result: StageResult) -> EpochLoop:
    run = task.run
    data, method = _setup(task, plugins, data, device, result)
    main, batch_size = data.main, int(run["batch_size"])
    macs = macs_per_sample(method.model, main.input_shape) * batch_size
    threads = choose_threads(run["threads"], macs, task.max_threads)
    torch.set_num_threads(threads)
    autocast, amp = _autocast(task, device, method, macs, result)
    streams = StreamSet(resolve_streams(method.streams(), data.roles, batch_size),
                        method.primary_stream, task.seed, device)
    updates = Updates(method, run, int(run["epochs"]), device, amp)
    result.params.update({
        "threads": threads, "device": str(device), "macs_per_batch": macs,
        "model_params": sum(p.numel() for p in method.model.parameters()),
        "trained_params": sum(p.numel() for p in {id(p): p for ps in updates.params.values()
                                                  for p in ps}.values()),
        "train_samples": len(main.train), "test_samples": len(main.test),
        "data_fingerprint": task.config.get("data_fingerprint", ""),
    })
    if GPU_ENV in os.environ:  # the GPU a parallel executor pinned this worker to
        result.params["cuda_visible_devices"] = os.environ[GPU_ENV]
    if len(streams.streams) > 1 or len(updates.optimizers) > 1:
        result.params["streams"] = ",".join(f"{s.name}:{s.batch_size}" for s in streams.streams)
        result.params["optimizers"] = ",".join(updates.optimizers)
    return EpochLoop(method=method, updates=updates, streams=streams,
                     evaluators=evaluator_slots(plugins, task.evaluate), data=data,
                     epochs=int(run["epochs"]), device=device, autocast=autocast,
                     artifact_dir=Path(result.artifact_dir),
                     eval_batch_size=int(run["eval_batch_size"]))


def restore(task: StageTask, loop: EpochLoop, result: StageResult, on_epoch) -> int:
    """Put a saved state in place when ``--resume`` asks and one was saved for this number of
    epochs; the epochs already done (0: none saved). The caller's view of the history starts
    where the run's does: ``on_epoch`` sees the saved epochs again."""
    if not (task.resume_dir and task.resume):
        return 0
    saved = ResumeState(Path(task.resume_dir)).load(loop.epochs)
    if saved is None:
        return 0
    start, loop.train_seconds = saved.restore(loop.method, loop.updates, loop.streams,
                                              loop.evaluators, result)
    result.params["resumed_from_epoch"] = start
    if on_epoch is not None:
        for row in result.history:
            on_epoch(int(row["epoch"]), row)
    return start


def save_resume(task: StageTask, loop: EpochLoop, result: StageResult, epoch: int) -> None:
    """The state ``--resume`` continues from after ``epoch`` (0-based) epochs were done."""
    ResumeState(Path(task.resume_dir)).save(epoch + 1, loop.epochs, loop.method, loop.updates,
                                            loop.streams, loop.evaluators, result.history,
                                            loop.train_seconds)


def finish(task: StageTask, loop: EpochLoop, result: StageResult, memory: dict) -> None:
    """A trained stage run's summary metrics and its final checkpoint."""
    result.summary = summary_of(result.history, loop.train_seconds, loop.streams.primary.n,
                                loop.epochs)
    result.summary.update(memory)
    main = loop.data.main
    save_final(Path(result.artifact_dir) / CHECKPOINT,
               {"stage": task.stage, "seed": task.seed, "epochs": loop.epochs,
                "input_shape": list(main.input_shape), "num_classes": main.num_classes,
                "architecture": task.architecture, "method": task.method}, loop.method)


def _train(task: StageTask, plugins, data, info: StageInfo, result: StageResult,
           on_epoch) -> None:
    device = resolve_device(task.run["device"])
    loop = make_loop(task, plugins, data, device, result)
    start = restore(task, loop, result, on_epoch)
    train_loop(task, plugins, loop, info, result, on_epoch, start)


def train_loop(task: StageTask, plugins, loop: EpochLoop, info: StageInfo, result: StageResult,
               on_epoch, start: int) -> None:
    """Train a built (and perhaps restored) stage run from epoch ``start`` to its end."""
    epochs = loop.epochs
    last_save = [time.monotonic()]
    epoch_hook = plugins.pm.hook.harness_epoch_finished

    def after_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if (task.resume_dir and epoch < epochs - 1
                and time.monotonic() - last_save[0] >= task.checkpoint_every):
            save_resume(task, loop, result, epoch)
            last_save[0] = time.monotonic()
        epoch_hook(info=info, epoch=epoch + 1, metrics=metrics)
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)

    meter = PeakMemory(loop.device).start()
    try:
        loop.run(start, result, after_epoch)
    finally:
        memory = meter.stop()
    finish(task, loop, result, memory)

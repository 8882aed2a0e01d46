"""The contracts a method plugin must honour, each as a check that trains it on the kit's data.

scikit-learn's ``check_estimator`` is the model: one function per contract, chosen by what the
plugin declares (streams over an unlabelled split, several optimizers, ``amp_safe``, references
from other stages), each failing with a message that says what to fix. They train through the
real engine (``harness.engine.run_stage``), so a method passes exactly when the harness can rely
on it: the identity of a stage run assumes determinism, ``--resume`` assumes its state is in
the checkpoint, frozen references must stay frozen, and so on.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import engine
from ..api import DataBundle, Method, Split
from ..engine import StageTask, run_stage
from ..errors import UserError
from ..option_types import UNCHECKED, annotation_of, describe, matches
from ..plugins import Entry, check_options
from ..stacked_run import GroupTask, run_group
from ..suite import RUN_DEFAULTS, SuiteDefaults
from ..train.build import StageData, build_method
from ..train.checkpoint import ModelSource, load_method
from ..train.terms import TERMS_HINT, probe_loss, terms_problem
from ..train.observe import observing
from .needs import Asked, ref_specs, refs_message
from .tiny import KIT_DATA, KIT_NET, kit_plugins, tiny_data

__all__ = ["CheckFailed", "MethodUnderTest", "METHOD_CHECKS"]

KIT_METHOD = "kit_method_under_test"


class CheckFailed(AssertionError):
    """A plugin broke a contract; the message says which and what to do."""


@dataclass
class MethodUnderTest:
    """A method class with its options, and what the checks learn about it once built."""

    cls: type
    options: dict[str, Any] = field(default_factory=dict)
    #: upstream references the method needs: ref name -> the method spec of its stage
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str | None = None  # the registered name, if it is installed
    run: dict[str, Any] = field(default_factory=dict)  # run settings beside the kit's

    def __post_init__(self):
        self.plugins = kit_plugins({"methods": {KIT_METHOD: self.cls}})
        self.baseline = SuiteDefaults.of(self.plugins).baseline  # what a missing ref could be
        self.refs = ref_specs(self.refs, self.baseline or "METHOD")
        self.roles, self.refs_asked, self.build_problem = ["target"], [], None
        probe = self._probe()
        if probe is None:  # the checks say why (check_method_builds), rather than collection
            self.unlabelled, self.optimizers, self.amp_safe = False, [], False
            return
        streams = probe.streams()
        self.roles = sorted({s.role for s in streams.values() if s.role} | set(self.roles))
        self.unlabelled = any(s.split == "unlabelled" for s in streams.values())
        self.optimizers = list(probe.optimizers())
        self.amp_safe = bool(probe.amp_safe)

    def _probe(self):
        """The method built once on the kit's data, every data role it reads supplied; None
        (and ``build_problem`` says why) when it cannot be built with these options and refs."""
        for _ in range(8):  # each try supplies the roles the last one found missing
            data = self.data(self.roles)
            data.roles = Asked(data.roles)
            upstream = Asked()
            try:
                return self.build(data, upstream=upstream)
            except Exception as exc:  # noqa: BLE001  said by check_method_builds
                roles = [r for r in data.roles.missing if isinstance(r, str) and r not in self.roles]
                if roles:  # a data role it reads: the kit's data, as for every role; try again
                    self.roles += roles
                    continue
                self.refs_asked = [r for r in upstream.missing if isinstance(r, str)]
                if self.refs_asked:
                    self.build_problem = refs_message(self.cls.__name__, self.refs_asked,
                                                      self.baseline)
                else:
                    self.build_problem = (f"{self.label} could not be built on the kit's data "
                                          f"with options {self.options}: "
                                          f"{type(exc).__name__}: {exc}")
                return None
        self.build_problem = f"{self.label} asks for ever more data roles: {self.roles}"
        return None

    @property
    def label(self) -> str:
        return self.name or self.cls.__name__

    def data(self, roles=None) -> StageData:
        """The kit's images for every role; the target role also has an unlabelled split."""
        bundles = {}
        for role in roles or self.roles:
            b = tiny_data()
            extra = Split(b.test.x.flip(-1), None)  # inputs of the task, without labels
            bundles[role] = DataBundle(b.train, b.test, b.num_classes, f"{KIT_DATA}-{role}",
                                       extra={"unlabelled": extra})
        return StageData(bundles)

    def spec(self) -> dict[str, Any]:
        return {"name": KIT_METHOD, **self.options}

    def build(self, data: StageData, options: dict[str, Any] | None = None, upstream=None):
        """The method built on ``data``, with ``options`` instead of its own if given; its
        references are added to ``upstream`` (a fresh dict by default)."""
        main = data.main
        upstream = {} if upstream is None else upstream
        upstream.update({r: self._ref_method(s, data) for r, s in self.refs.items()})
        spec = self.spec() if options is None else {"name": KIT_METHOD, **options}
        return build_method(self.plugins, spec, {"name": KIT_NET}, data=data,
                            input_shape=main.input_shape, num_classes=main.num_classes,
                            stage="kit", seed=0, epochs=2, device=torch.device("cpu"),
                            upstream=upstream)

    def _ref_method(self, spec, data):
        main = data.main
        return build_method(self.plugins, spec, {"name": KIT_NET}, data=data,
                            input_shape=main.input_shape, num_classes=main.num_classes,
                            stage="ref", seed=1, epochs=1, device=torch.device("cpu"))

    def task(self, folder: Path, epochs: int = 2, **run) -> StageTask:
        settings = {**RUN_DEFAULTS, "optimizer": "adam", "lr": 1e-2, "batch_size": 32,
                    "epochs": epochs, "threads": 1, "device": "cpu", **self.run, **run}
        refs = self.ref_sources()
        return StageTask(name="kit", identity="kit", stage="kit", seed=11, dataset={},
                         architecture={"name": KIT_NET}, method=self.spec(), run=settings,
                         evaluate=[], config={}, artifact_dir=str(folder / "art"),
                         data_root=str(folder), refs=refs, resume_dir=str(folder / "resume"),
                         checkpoint_every=0.0)

    def ref_sources(self) -> dict[str, ModelSource]:
        """The references' checkpoints, trained once per method under test (before any check
        watches the engine, so that what a check sees is the method's own training)."""
        if getattr(self, "_ref_sources", None) is None:
            folder = Path(tempfile.mkdtemp(prefix="harness-kit-refs-"))
            weakref.finalize(self, shutil.rmtree, folder, True)
            self._ref_sources = {r: self._train_ref(folder / r, s) for r, s in self.refs.items()}
        return self._ref_sources

    def _train_ref(self, folder: Path, spec) -> ModelSource:
        settings = {**RUN_DEFAULTS, "optimizer": "adam", "lr": 1e-2, "batch_size": 32,
                    "epochs": 1, "threads": 1, "device": "cpu"}
        task = StageTask(name="ref", identity="ref", stage="ref", seed=5, dataset={},
                         architecture={"name": KIT_NET}, method=dict(spec), run=settings,
                         evaluate=[], config={}, artifact_dir=str(folder), data_root=str(folder))
        result = run_stage(task, self.plugins, data=self.data())
        if not result.ok:
            raise CheckFailed(f"the reference {spec} did not train: {result.error}")
        return ModelSource(str(folder / engine.CHECKPOINT))

    def check_loss_returns_terms(self) -> None:
        """The preflight's call of ``loss`` (``harness.train.terms``), once per method under
        test, so that every check that trains says what ``harness validate`` says."""
        if getattr(self, "_terms_problem", False) is False:
            data = self.data()
            self._terms_problem = probe_loss(self.build(data), data.roles,
                                             int(self.run.get("batch_size", 32)))
        if self._terms_problem:
            raise CheckFailed(f"{self._terms_problem} ({TERMS_HINT})")

    def train(self, folder: Path, epochs: int = 2, on_epoch=None, resume=False, **run):
        self.check_loss_returns_terms()
        task = self.task(folder, epochs, **run)
        task.resume = resume
        result = run_stage(task, self.plugins, data=self.data(), on_epoch=on_epoch)
        if not result.ok and not resume:
            raise CheckFailed(f"{self.label} did not train on the kit's data: {result.error}")
        return result


@contextmanager
def _folder():
    with tempfile.TemporaryDirectory(prefix="harness-kit-") as d:
        yield Path(d)


def _state(result) -> dict[str, Any]:
    return torch.load(Path(result.artifact_dir) / engine.CHECKPOINT, weights_only=True)["state_dict"]


def _equal(x, y) -> bool:
    """Bitwise equality of tensors, also inside the dicts and lists of extra state."""
    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and torch.equal(x, y)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_equal(a, b) for a, b in zip(x, y))
    return x == y


def _same_state(a: dict, b: dict) -> list[str]:
    """Names whose values differ (extra state compared by value)."""
    diff = [k for k in a.keys() | b.keys() if k not in a or k not in b]
    diff += [k for k in a.keys() & b.keys() if not _equal(a[k], b[k])]
    return sorted(diff)


def _losses(result) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k.startswith("loss")} for row in result.history]


# -- the checks ------------------------------------------------------------------------------
def check_method_builds(m: MethodUnderTest) -> None:
    """The method builds on the kit's data with the options and references given: the only
    check of one that does not (the others would all fail the same way)."""
    if m.build_problem:
        raise CheckFailed(m.build_problem)


def check_options_are_checked(m: MethodUnderTest) -> None:
    """A misspelled option is refused before anything runs, with the option it meant, and so
    is a value of the wrong type, for every option."""
    entry = Entry("methods", m.label, m.cls, "kit", "0")
    check_options(entry, m.options, skip=2)
    for key in list(m.options) or ["weight"]:
        wrong = {**m.options, key + "_typo": m.options.get(key, 1)}
        try:
            check_options(entry, wrong, skip=2)
        except UserError as err:
            if m.options and key not in (err.hint or ""):
                raise CheckFailed(f"the misspelled option {key}_typo is refused without naming "
                                  f"{key!r} as a suggestion: {err.hint}") from None
            continue
        raise CheckFailed(f"{m.label} accepts the unknown option {key}_typo: give __init__ "
                          "keyword-only options instead of **kwargs, so that typos are caught")
    _check_wrong_types(m, entry)


#: values one of which is of another type than any option takes
_WRONG_VALUES = ("wrong", [0.5], {"wrong": 1})


def _options_of(cls) -> list:
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, model, ctx
    return [p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_wrong_types(m: MethodUnderTest, entry: Entry) -> None:
    """Each option given a value of another type than its annotation (or, unannotated, its
    default) is refused as bad input: by the suite reader from the annotation, or by a
    ``UserError`` from ``__init__``; anything else would fail half-way through a grid."""
    data = m.data()
    for param in _options_of(m.cls):
        ann = annotation_of(param, m.cls.__init__)
        default = param.default
        guide = ann if ann is not UNCHECKED else (
            UNCHECKED if default is param.empty or default is None else type(default))
        wrong = next((v for v in _WRONG_VALUES if not matches(guide, v)), None)
        if guide is UNCHECKED or wrong is None:
            continue  # takes anything: nothing is of the wrong type
        options = {**m.options, param.name: wrong}
        try:
            check_options(entry, options, skip=2)
            m.build(data, options)
        except UserError:
            continue
        except Exception as exc:  # noqa: BLE001  what a suite's wrong value would end in
            how = f"fails with {type(exc).__name__}: {exc}"
        else:
            how = "is accepted"
        example = describe(guide) if ann is UNCHECKED else describe(ann)
        raise CheckFailed(f"option {param.name!r} given {wrong!r} ({type(wrong).__name__}) "
                          f"{how}: annotate it in __init__ (it takes {example}) so that a suite's "
                          "wrong value is refused before a run, or raise UserError there")


def _term_problem(name: str, terms) -> str | None:
    """What is wrong with the terms a method gave update ``name``, if anything."""
    problem = terms_problem(terms, f"the terms of update {name!r}")
    if problem:
        return f"{problem} ({TERMS_HINT})"
    for k, v in terms.items():
        if not isinstance(v, torch.Tensor) or v.dim() != 0:
            return f"term {k!r} of update {name!r} is not a scalar tensor"
        if not v.requires_grad:
            return (f"term {k!r} of update {name!r} does not require grad: it cannot train "
                    "anything (log it from an evaluator instead)")
        if not torch.isfinite(v.detach()):
            return f"term {k!r} of update {name!r} is {float(v)} on the kit's data"
    return None


class _Watch:
    """What the engine told the kit in one training (``harness.train.observe``)."""

    def __init__(self):
        self.updates: list[tuple[str, tuple[str, ...]]] = []
        self.problem: str | None = None
        self.built: list[tuple[Any, Method, dict[str, torch.Tensor]]] = []
        self.refs: dict[str, tuple[Method, dict[str, torch.Tensor]]] = {}

    def updates_built(self, updates, method) -> None:
        self.built.append((updates, method, {n: p.detach().clone()
                                             for n, p in method.named_parameters()}))

    def update(self, updates, name, terms) -> None:
        self.problem = self.problem or _term_problem(name, terms)
        self.updates.append((name, tuple(terms) if isinstance(terms, dict) else ()))

    def reference_loaded(self, source, method) -> None:
        self.refs[source.checkpoint] = (method, {k: v.clone() for k, v in method.state_dict().items()})


def _watched(m: MethodUnderTest) -> _Watch:
    """One epoch of training, watched; a training the kit saw no update of fails the check
    rather than passing it on nothing."""
    m.ref_sources()
    with _folder() as folder, observing(_Watch()) as watch:
        try:
            m.train(folder, epochs=1)
        except CheckFailed:
            if watch.problem:  # what made the run fail, said as the kit says it
                raise CheckFailed(watch.problem) from None
            raise
    if not watch.updates:
        raise CheckFailed("the kit saw no update in an epoch of training: the engine never "
                          "stepped the method")
    return watch


def check_loss_terms(m: MethodUnderTest) -> None:
    """Every update gets named, finite, scalar terms that require grad, with the same names in
    every step (the per-epoch log and the report rely on stable names)."""
    watch = _watched(m)
    if watch.problem:
        raise CheckFailed(watch.problem)
    per_step = {}
    for name, keys in watch.updates:
        if per_step.setdefault(name, keys) != keys:
            raise CheckFailed(f"update {name!r} changed its term names between steps: "
                              f"{per_step[name]} then {keys}")


def check_trains_its_parameters(m: MethodUnderTest) -> None:
    """After an epoch every parameter of an optimizer that stepped moved, and no parameter
    outside every optimizer received a gradient (a frozen part trained by mistake). An
    optimizer the method did not update in that epoch (a later phase of an alternating
    schedule, such as CETL's stages) is not held to it."""
    watch = _watched(m)
    if len(watch.built) != 1:
        raise CheckFailed(f"the kit saw {len(watch.built)} sets of optimizers built for one run")
    updates, method, before = watch.built[0]
    stepped = {name for name, _ in watch.updates}
    moving = {id(p) for n, ps in updates.params.items() if n in stepped for p in ps}
    still = [n for n, p in method.named_parameters()
             if id(p) in moving and torch.equal(before[n], p.detach())]
    if still:
        raise CheckFailed(f"parameters in an optimizer did not change in an epoch: {still[:5]} "
                          "(leave them out of optimizers(), or check that the loss reaches them)")
    trained = {id(p) for ps in updates.params.values() for p in ps}
    leaked = [n for n, p in method.named_parameters() if id(p) not in trained and p.grad is not None]
    if leaked:
        raise CheckFailed(f"parameters outside every optimizer received gradients: {leaked[:5]} "
                          "(detach what must stay fixed, or set requires_grad_(False))")


def check_references_stay_frozen(m: MethodUnderTest) -> None:
    """The stages a method reads through ``refs:`` are bitwise the same after it trained."""
    watch = _watched(m)
    if len(watch.refs) != len(m.refs):
        raise CheckFailed(f"the method names {len(m.refs)} reference(s) but the kit saw "
                          f"{len(watch.refs)} loaded")
    for path, (method, before) in watch.refs.items():
        changed = _same_state(before, method.state_dict())
        if changed:
            raise CheckFailed(f"the frozen reference from {Path(path).parent.name} changed: "
                              f"{changed[:5]}")


def check_determinism(m: MethodUnderTest) -> None:
    """The same seed gives the same losses and weights (a stage run's identity assumes it)."""
    with _folder() as a, _folder() as b:
        ra, rb = m.train(a), m.train(b)
        if _losses(ra) != _losses(rb):
            raise CheckFailed("two runs with the same seed gave different losses: draw random "
                              "numbers from torch's generators (seeded by the engine), not from "
                              "an unseeded source")
        diff = _same_state(_state(ra), _state(rb))
        if diff:
            raise CheckFailed(f"two runs with the same seed ended with different weights: {diff[:5]}")


class _Stop(BaseException):
    """Raised from the epoch callback to cut a run short, as a kill would; a BaseException so
    that the engine's failure handling (which catches Exception) does not record it."""


def check_resume_equivalence(m: MethodUnderTest) -> None:
    """2 epochs straight equal 1 epoch, a save, a restore in a new method and 1 more epoch:
    all state that changes in training is in ``state_dict()`` (buffers, ``get_extra_state``)."""

    def stop(epoch, metrics):
        if epoch == 1:
            raise _Stop

    with _folder() as a, _folder() as b:
        straight = m.train(a)
        try:
            m.train(b, on_epoch=stop)
        except _Stop:  # the interruption this check makes on purpose
            pass
        resumed = m.train(b, resume=True)
        if not resumed.ok:
            raise CheckFailed(f"the resumed run failed: {resumed.error}")
        if _losses(resumed) != _losses(straight):
            raise CheckFailed("a resumed run's losses differ from an uninterrupted run's: keep "
                              "Python state that changes in training in get_extra_state() and draw "
                              "random numbers from ctx.generator(name)")
        diff = _same_state(_state(straight), _state(resumed))
        if diff:
            raise CheckFailed(f"a resumed run ends with other weights or state: {diff[:5]}")


def check_checkpoint_round_trip(m: MethodUnderTest) -> None:
    """The final checkpoint loads with ``torch.load(weights_only=True)`` and rebuilds a method
    whose outputs are those of the trained one (what ``from:`` and ``refs:`` rely on)."""
    with _folder() as folder:
        result = m.train(folder, epochs=1)
        path = Path(result.artifact_dir) / engine.CHECKPOINT
        try:
            torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001  whatever the unpickler refuses
            raise CheckFailed(f"the checkpoint does not load with weights_only=True: {exc}; "
                              "get_extra_state() should return plain values and tensors") from None
        source = ModelSource(str(path), m.ref_sources())  # rebuilt as downstream stages do
        rebuilt = load_method(m.plugins, source, torch.device("cpu"))
        fresh = load_method(m.plugins, source, torch.device("cpu"))
        x = tiny_data().test.x
        with torch.no_grad():
            if not torch.equal(rebuilt(x), fresh(x)):
                raise CheckFailed("two methods rebuilt from one checkpoint answer differently")


def check_unlabelled_streams_need_no_labels(m: MethodUnderTest) -> None:
    """A stream over the unlabelled split trains without ever reading a label."""
    with _folder() as folder:
        m.train(folder, epochs=1)


def check_bfloat16_autocast(m: MethodUnderTest) -> None:
    """``amp_safe = True`` promises the step runs under bfloat16 autocast with finite losses."""
    m.check_loss_returns_terms()  # not an autocast problem: say what it is
    with _folder() as folder:
        task = m.task(folder, epochs=1, amp=True)
        result = run_stage(task, m.plugins, data=m.data())
        if not result.ok:
            raise CheckFailed(f"under bfloat16 autocast the step failed ({result.error}); set "
                              "amp_safe = False or compute that term outside autocast")


def check_stacked_equals_alone(m: MethodUnderTest) -> None:
    """``stackable = True`` promises that replicas trained as one stacked network end with the
    loss terms and parameters they have trained alone (to rounding: batched kernels sum in
    another order): three seeds, two of them on one data set and one on another, two epochs."""
    with _folder() as folder:
        data = [m.data()] * 2 + [m.data()]

        def tasks(where: str) -> list[StageTask]:
            out = [m.task(folder / where / str(i)) for i in range(3)]
            for i, t in enumerate(out):
                t.seed = 11 + i
            return out

        alone = [run_stage(t, m.plugins, data=d) for t, d in zip(tasks("alone"), data)]
        stacked = run_group(GroupTask(tasks("stacked")), m.plugins, data=data).results
        for a, s in zip(alone, stacked):
            if not a.ok or not s.ok:
                raise CheckFailed(f"trained {'alone' if not a.ok else 'stacked'} it failed: "
                                  f"{a.error or s.error} (random numbers belong in draw(), "
                                  "read in loss() through self.draws())")
            if s.params.get("stack_refused"):
                raise CheckFailed(f"it declares stackable = True but cannot be stacked: "
                                  f"{s.params['stack_refused']}")
            diff = _close_state(_state(a), _state(s)) + [
                k for ra, rs in zip(_losses(a), _losses(s)) for k in ra
                if not _close(ra[k], rs.get(k))]
            if diff:
                raise CheckFailed(f"stacked, a replica ends unlike itself trained alone in "
                                  f"{sorted(set(diff))[:5]}: read every parameter through the "
                                  "modules at each call (not a tensor kept from __init__), keep "
                                  "no Python state that differs between replicas, and draw "
                                  "random numbers in draw()")


def _close(a, b, tol: float = 1e-5) -> bool:
    return b is not None and abs(a - b) <= tol * max(1.0, abs(a))


def _close_state(a: dict, b: dict) -> list[str]:
    """Names of the tensors that differ by more than rounding (extra state compared exactly).

    The absolute tolerance is 1e-5, not less: Adam divides each update by the gradient's own
    scale, so on a weight whose gradient is near zero a rounding difference of the gradient
    moves the weight by up to a fraction of the learning rate (1.6e-6 seen on SRIP's
    weights after two epochs); a replica that trains on another's numbers is off by far more."""
    diff = [k for k in a.keys() | b.keys() if k not in a or k not in b]
    for k in a.keys() & b.keys():
        x, y = a[k], b[k]
        same = (torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-5)
                if isinstance(x, torch.Tensor) and x.is_floating_point() else _equal(x, y))
        if not same:
            diff.append(k)
    return diff


#: (check, whether it applies to a method under test)
METHOD_CHECKS: list[tuple[Callable[[MethodUnderTest], None], Callable[[MethodUnderTest], bool]]] = [
    (check_options_are_checked, lambda m: True),
    (check_loss_terms, lambda m: True),
    (check_trains_its_parameters, lambda m: True),
    (check_references_stay_frozen, lambda m: bool(m.refs)),
    (check_determinism, lambda m: True),
    (check_resume_equivalence, lambda m: True),
    (check_checkpoint_round_trip, lambda m: True),
    (check_unlabelled_streams_need_no_labels, lambda m: m.unlabelled),
    (check_bfloat16_autocast, lambda m: m.amp_safe),
    (check_stacked_equals_alone, lambda m: bool(getattr(m.cls, "stackable", False))),
]

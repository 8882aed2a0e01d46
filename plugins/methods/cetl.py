"""Coupled end-to-end transfer learning with generalized Fisher information (paper 003, CETL).

Three networks: S, a source network trained upstream on the source task and frozen (a stage
named under ``refs: {source: STAGE}``); T2, the target network (this stage's architecture, the
network evaluators measure); T1, a decoder with the reversed layers of T2 and weights of its own
(``plugins.methods.cetl_parts``). Losses on target images x (Eqs. 2, 4, 5):

- L_r^s = ||T1(A(S(x))) - x||^2             (term ``recon_s``; A: the adapter where sizes differ)
- L_r^t = ||T1(T2(x)) - T1(A(S(x)))||^2      (term ``recon_t``; the second term detached)
- L_c^t = CE(T2(x), y) on labelled data      (term ``ce``)

``schedule: algorithm1`` (default) runs Algorithm 1 as rounds of three stages, each
``stage_epochs`` epochs of the target data, one optimizer per stage (engine updates ``stage1``,
``stage2``, ``stage3``):

1. T1 (and A) on L_r^s, + DWA2 (T1 held at its post-stage-2 weights by GFI2) after round one;
   at its end GFI1 = the GFI of L_r^s on T1 (against L_r^t);
2. T2 on L_r^t and T1 on L_r^t + DWA1 (one update of both; DWA1 depends on T1 only); at its end
   GFI2 (L_r^t on T1, against L_r^s) and GFI3 (L_r^t on T2, against L_c^t);
3. T2 on L_c^t + DWA3.

Rounds repeat until each loss's round mean changes by less than ``tol`` (relative) from the
previous round, or ``rounds`` (default: as many as the run's epochs hold). The epochs left after
convergence make no update. The round and stage of each epoch are logged (``cetl_round``,
``cetl_stage``; 0 = no update) and the convergence state is in the checkpoint
(``get_extra_state``); the stage follows from the epoch, and GFI and anchors are buffers, so
``--resume`` lands inside the right stage.

``schedule: e2e`` minimises the coupled loss (Eq. 6) l1 L_r^s + l2 L_c^t + l3 L_r^t in one update
of T1, A and T2 per step (``weights: [l1, l2, l3]``).

Variants (Table 2), option ``variant``: ``f`` T1 trained in round one's stage 1 only, then fixed
(stage 2 updates T2 alone); ``u`` the same, but stage 2 updates T1 too; ``e`` all three stages
every round, no Fisher term; ``fi`` DWA with the plain Fisher F; ``gfi`` DWA with GFI (the full
method). In ``f`` and ``u`` the stage-1 epochs of later rounds make no update, so every variant
gives T2 the same updates.

Modes: ``transfer`` and ``distill`` read one labelled target data set (distillation: S is the
teacher, T2 a much smaller student, the same data); ``adapt`` has no target labels: the target
role must be wholly unlabelled (``labels: 0``), reconstruction reads its ``unlabelled`` split and
stage 3 (and L_c^t's Fisher) the labelled ``source`` role instead (Sec. 3.4.3, scenario 2).

Readings (the paper does not give them), each an option: ``dwa_weight`` (lambda; ``auto``: the
raw Fisher's maximum, which the normalisation of F divided out, so the DWA is on the scale of the
previous task's loss, see ``plugins.methods.gfi``; or a number), ``reduction`` (``sum``: Eq. 2's per-sample squared norm),
``fisher_batches`` (K = 16 per-batch Fisher samples for RF, at least 2) of ``fisher_batch`` (16) samples,
drawn afresh at each stage end from a generator seeded by ``ctx.seed_for`` of (round, stage), ``rf``
(``quantile`` with ``bins: 4``, 2 to K, or ``gaussian``), ``source_layer`` (``auto``: ``penultimate`` in
transfer, as the paper feeds AlexNet's features before the last FC; ``output`` in distill and
adapt, the soft targets), ``target_layer`` (T2's last weight layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from harness.api import (Method, Stream, UserError, check_choice, check_non_negative,
                         fisher_samples, hookimpl, normalize_max)

from .cetl_parts import Coupled, Decoder, SourceFeatures, make_adapter, recon_loss
from .gfi import DWA, RF_ESTIMATORS, generalized_fisher, relative_fisher

__all__ = ["CETL", "SourceOnly", "MODES", "VARIANTS", "SCHEDULES", "stage_of"]

MODES = ("transfer", "distill", "adapt")
VARIANTS = ("f", "u", "e", "fi", "gfi")
SCHEDULES = ("algorithm1", "e2e")
FISHER_VARIANTS = ("fi", "gfi")


def stage_of(epoch: int, stage_epochs: tuple[int, int, int]) -> tuple[int, int]:
    """(round, stage) of a 0-based epoch: rounds of stage_epochs[0] + [1] + [2] epochs."""
    length = sum(stage_epochs)
    r, pos = divmod(epoch, length)
    stage = 1 if pos < stage_epochs[0] else 2 if pos < stage_epochs[0] + stage_epochs[1] else 3
    return r, stage


def _positive_int(value, key: str, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key} must be a positive whole number, got {value!r}", key=key, hint=hint)
    return value


def _three(value, key: str, check) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise UserError(f"{key} must be a list of three values, got {value!r}", key=key,
                        hint=f"e.g. {key}: [1, 1, 1]")
    return tuple(check(v, key) for v in value)


class CETL(Method):
    """CETL's three networks and Algorithm 1 (or the coupled loss); see the module docstring."""

    def __init__(self, model, ctx, *, mode: str = "transfer", variant: str = "gfi",
                 schedule: str = "algorithm1", source: str = "source", source_layer: str = "auto",
                 target_layer: str | None = None, stage_epochs=(1, 1, 1), rounds: int | None = None,
                 tol: float = 0.01, dwa_weight="auto", u: float = 0.5, p: float = 0.9,
                 rf: str = "quantile", bins: int = 4, fisher_batches: int = 16,
                 fisher_batch: int = 16, reduction: str = "sum", weights=(1.0, 1.0, 1.0),
                 source_role: str = "source"):
        super().__init__(model, ctx)
        self._options(mode, variant, schedule, stage_epochs, rounds, tol, dwa_weight, u, p, rf,
                      bins, fisher_batches, fisher_batch, reduction, weights, source_role)
        if source not in ctx.upstream:
            raise UserError(f"cetl needs the frozen source network S under refs: {{{source}: "
                            "STAGE}", key="refs", hint="e.g. refs: {source: source}")
        if source_layer == "auto":
            source_layer = "penultimate" if mode == "transfer" else "output"
        self.source = SourceFeatures(ctx.upstream[source].model, source_layer)
        self.decoder = Decoder(model, ctx.input_shape, target_layer)
        with torch.no_grad():
            probe = torch.zeros(1, *ctx.input_shape, device=ctx.device)
            feature_shape = tuple(self.source(probe).shape[1:])
        self.adapter = make_adapter(feature_shape, self.decoder.code_shape)
        # T1 o T2 references both networks; not a submodule, so no parameter is listed twice
        object.__setattr__(self, "coupled", Coupled(model, self.decoder))
        t1, t2 = dict(self.decoder.named_parameters()), dict(model.named_parameters())
        self.dwa1, self.dwa2, self.dwa3 = DWA(t1), DWA(t1), DWA(t2)
        self._check_data(ctx)
        self.round, self.stage, self.converged = 0, 0, False
        self.history: list[list[float]] = []  # per finished round: the three stages' loss means
        self._sums, self._counts = [0.0, 0.0, 0.0], [0, 0, 0]
        self._pending: list[list[torch.Tensor]] = [[], [], []]

    # -- options and data -----------------------------------------------------------------------
    def _options(self, mode, variant, schedule, stage_epochs, rounds, tol, dwa_weight, u, p, rf,
                 bins, fisher_batches, fisher_batch, reduction, weights, source_role) -> None:
        self.mode = check_choice(mode, "mode", MODES, hint="transfer, distill or adapt")
        self.variant = check_choice(variant, "variant", VARIANTS,
                                    hint="Table 2: f, u, e, fi, gfi (the full method)")
        self.schedule = check_choice(schedule, "schedule", SCHEDULES,
                                     hint="algorithm1 (three stages) or e2e (Eq. 6 in one update)")
        self.rf = check_choice(rf, "rf", RF_ESTIMATORS, hint="quantile or gaussian")
        self.reduction = check_choice(reduction, "reduction", ("sum", "mean"),
                                      hint="sum (per-sample squared norm) or mean (per element)")
        self.stage_epochs = _three(stage_epochs, "stage_epochs", _positive_int)
        self.rounds = None if rounds is None else _positive_int(rounds, "rounds")
        self.tol = check_non_negative(tol, "tol")
        self.dwa_weight = None if dwa_weight == "auto" else check_non_negative(dwa_weight,
                                                                                  "dwa_weight")
        self.weights = _three(weights, "weights", check_non_negative)
        for key, value in (("u", u), ("p", p)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise UserError(f"{key} must be a number in [0, 1], got {value!r}", key=key,
                                hint="the paper's u = 0.5, p = 0.9")
        self.u, self.p = float(u), float(p)
        self.bins = _positive_int(bins, "bins")
        self.fisher_batches = _positive_int(fisher_batches, "fisher_batches")
        self.fisher_batch = _positive_int(fisher_batch, "fisher_batch")
        if self.variant == "gfi":
            self._check_rf_sampling()
        self.source_role = source_role
        if self.schedule == "e2e" and self.variant != "gfi":
            raise UserError("variant applies to schedule algorithm1 only", key="variant",
                            hint="leave variant out with schedule: e2e")

    def _check_rf_sampling(self) -> None:
        """RF is a mutual information between K per-batch Fisher samples; with one sample, one
        bin or more bins than samples it is 0 or 1 everywhere, and GFI's mask becomes a coin
        flip: refused instead of training on it silently."""
        if self.fisher_batches < 2:
            raise UserError(f"fisher_batches must be at least 2 for variant gfi, got "
                            f"{self.fisher_batches}", key="fisher_batches",
                            hint="RF compares per-batch Fisher samples: the paper's setting is 16")
        if self.rf == "quantile" and not 2 <= self.bins <= self.fisher_batches:
            raise UserError(f"bins must be between 2 and fisher_batches ({self.fisher_batches}), "
                            f"got {self.bins}", key="bins",
                            hint="each quantile bin needs samples: bins: 4 with 16 fisher_batches")

    def _check_data(self, ctx) -> None:
        if not ctx.data:  # rebuilt from a checkpoint as a reference: it trains no more
            return
        if self.mode != "adapt":
            return
        target = ctx.data.get("target")
        if target is None or self.source_role not in ctx.data:
            raise UserError(f"mode adapt needs data roles `target` and `{self.source_role}`",
                            key="dataset", hint="dataset: {source: ..., target: {name: ..., "
                                                "labels: 0}}")
        if len(target.train) or "unlabelled" not in target.extra:
            raise UserError("mode adapt trains without target labels, but the target role has "
                            f"{len(target.train)} labelled training samples", key="dataset",
                            hint="give the target `labels: 0` (every training sample unlabelled)")

    def streams(self):
        if self.mode == "adapt":
            return {"target": Stream(role="target", split="unlabelled"),
                    "labelled": Stream(role=self.source_role)}
        return {"target": Stream(role="target")}

    primary_stream = "target"

    def optimizers(self):
        t1 = list(self.decoder.parameters())
        t2 = list(self.model.parameters())
        if self.schedule == "e2e":
            return {"coupled": t1 + list(self.adapter.parameters()) + t2}
        return {"stage1": t1 + list(self.adapter.parameters()),
                "stage2": t2 if self.variant == "f" else t1 + t2,
                "stage3": t2}

    def networks(self):
        return {"model": self.model, "decoder": self.decoder}

    # -- losses ---------------------------------------------------------------------------------
    def _source_code(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.source(x))

    @torch.no_grad()
    def _recons1(self, x: torch.Tensor) -> torch.Tensor:
        """L_r^t's target T1(A(S(x))), detached: in Algorithm 1 "recons1", the reconstruction
        of stage 1, i.e. T1 as stage 1 left it (the anchor of DWA1, set on entering stage 2),
        so stage 2 does not chase a target its own T1 updates move; in e2e the current T1."""
        code = self._source_code(x)
        if self.schedule == "e2e":
            return self.decoder(code)
        return functional_call(self.decoder, self.dwa1.anchors(), (code,))

    def _recon_t(self, x: torch.Tensor) -> torch.Tensor:
        return recon_loss(self.coupled(x), self._recons1(x), self.reduction)

    def _labelled(self, batches):
        return batches["labelled" if self.mode == "adapt" else "target"]

    def _uses_fisher(self) -> bool:
        return self.schedule == "algorithm1" and self.variant in FISHER_VARIANTS

    def step(self, batches):
        if self.schedule == "e2e":
            return self._step_e2e(batches)
        stage = self.stage
        if stage == 0:
            return
        x = batches["target"].x
        if stage == 1:
            loss = recon_loss(self.decoder(self._source_code(x)), x, self.reduction)
            terms = {"recon_s": loss}
            if self._uses_fisher() and bool(self.dwa2.active):
                terms["dwa2"] = self.dwa2.penalty(dict(self.decoder.named_parameters()),
                                                  self.dwa_weight)
        elif stage == 2:
            loss = self._recon_t(x)
            terms = {"recon_t": loss}
            if self._uses_fisher() and bool(self.dwa1.active):
                terms["dwa1"] = self.dwa1.penalty(dict(self.decoder.named_parameters()),
                                                  self.dwa_weight)
        else:
            lab = self._labelled(batches)
            loss = F.cross_entropy(self.model(lab.x), lab.y)
            terms = {"ce": loss}
            if self._uses_fisher() and bool(self.dwa3.active):
                terms["dwa3"] = self.dwa3.penalty(dict(self.model.named_parameters()),
                                                  self.dwa_weight)
        self._pending[stage - 1].append(loss.detach())
        self.update(f"stage{stage}", terms)

    def _step_e2e(self, batches) -> None:
        x = batches["target"].x
        lab = self._labelled(batches)
        l1, l2, l3 = self.weights
        self.update("coupled", {
            "recon_s": l1 * recon_loss(self.decoder(self._source_code(x)), x, self.reduction),
            "ce": l2 * F.cross_entropy(self.model(lab.x), lab.y),
            "recon_t": l3 * self._recon_t(x)})

    # -- rounds, stages and the Fisher between them ---------------------------------------------
    def _flush(self) -> None:
        for i, pending in enumerate(self._pending):
            if pending:
                self._sums[i] += float(torch.stack(pending).sum())
                self._counts[i] += len(pending)
        self._pending = [[], [], []]

    def _round_cap(self) -> int:
        length = sum(self.stage_epochs)
        fits = max(1, -(-self.ctx.epochs // length))
        return fits if self.rounds is None else min(self.rounds, fits)

    def _finish_round(self) -> None:
        means = [s / c if c else float("nan") for s, c in zip(self._sums, self._counts)]
        self.history.append(means)
        self._sums, self._counts = [0.0, 0.0, 0.0], [0, 0, 0]
        if len(self.history) >= 2:
            before, now = self.history[-2], self.history[-1]
            ran = [i for i in range(3) if now[i] == now[i] and before[i] == before[i]]
            self.converged = bool(ran) and all(
                abs(now[i] - before[i]) <= self.tol * max(abs(before[i]), 1e-12) for i in ran)

    def epoch_started(self, epoch: int) -> dict[str, float]:
        if self.schedule == "e2e":
            return {}
        self._flush()
        r, stage = stage_of(epoch, self.stage_epochs)
        entering = epoch == 0 or stage_of(epoch - 1, self.stage_epochs) != (r, stage)
        if entering and stage == 1 and r > 0:
            self._finish_round()
        if self.converged or r >= self._round_cap():
            stage = 0
        elif stage == 1 and r > 0 and self.variant in ("f", "u"):
            stage = 0  # T1 o S was trained in round one; it is fixed from then on
        if entering and stage == 2:
            self.dwa1.anchor_at(dict(self.decoder.named_parameters()))  # recons1's T1
        if entering and stage in (2, 3) and self._uses_fisher():
            self._stage_end_fisher(r, stage)
        self.round, self.stage = r, stage
        out = {"cetl_round": float(r + 1), "cetl_stage": float(stage),
               "cetl_converged": float(self.converged)}
        if self._uses_fisher():
            out.update({f"gfi{i}_kept": d.kept_fraction()
                        for i, d in ((1, self.dwa1), (2, self.dwa2), (3, self.dwa3))})
        return out

    def _fisher_data(self, r: int, stage: int, labelled: bool):
        role = self.source_role if (labelled and self.mode == "adapt") else "target"
        bundle = self.ctx.data[role]
        split = bundle.train if labelled or self.mode != "adapt" else bundle.split("unlabelled")
        n = self.fisher_batches * self.fisher_batch
        g = torch.Generator().manual_seed(self.ctx.seed_for(f"fisher_data/{r}/{stage}"))
        take = torch.randperm(len(split), generator=g)[:n].to(split.x.device)
        if len(take) < self.fisher_batches:
            raise UserError(f"the Fisher needs {self.fisher_batches} samples, the data has "
                            f"{len(take)}", key="fisher_batches", hint="give fewer fisher_batches")
        return split.x[take], (split.y[take] if labelled else None)

    def _task_fisher(self, task: str, x, y) -> dict[str, torch.Tensor]:
        """Per-batch Fisher samples {name: K x shape} of one task's loss, by network."""
        k, chunk = self.fisher_batches, max(1, self.fisher_batch)
        red = self.reduction
        mse = (lambda o, t: (o - t).pow(2).sum()) if red == "sum" else \
            (lambda o, t: (o - t).pow(2).mean())
        if task == "recon_s":
            code = self._source_code(x).detach()
            out = fisher_samples(self.decoder, code, x, batches=k, loss_fn=mse, chunk=chunk)
            return {"t1": out}
        if task == "recon_t":
            target = self._recons1(x)
            out = fisher_samples(self.coupled, x, target, batches=k, loss_fn=mse, chunk=chunk)
            return {"t1": {n[len("decoder."):]: v for n, v in out.items() if n.startswith("decoder.")},
                    "t2": {n[len("t2."):]: v for n, v in out.items() if n.startswith("t2.")}}
        out = fisher_samples(self.model, x, y, batches=k, loss_fn=F.cross_entropy, chunk=chunk)
        return {"t2": out}

    def _gfi(self, own: dict, other: dict, seed: int) -> tuple[dict[str, torch.Tensor], float]:
        """(GFI of the task ``own`` against ``other``, the raw Fisher's maximum)."""
        raw = {n: v.mean(0) for n, v in own.items()}
        top = max(float(f.max()) for f in raw.values())
        rf = relative_fisher(own, other, estimator=self.rf, bins=self.bins) \
            if self.variant == "gfi" else None
        return generalized_fisher(normalize_max(raw), rf, u=self.u, p=self.p, seed=seed), top

    @torch.no_grad()
    def _stage_end_fisher(self, r: int, stage: int) -> None:
        """Entering stage 2: GFI1 (L_r^s on T1, against L_r^t). Entering stage 3: GFI2 (L_r^t
        on T1, against L_r^s) and GFI3 (L_r^t on T2, against L_c^t). Anchors: the weights now."""
        was = self.training
        self.eval()
        try:
            x, _ = self._fisher_data(r, stage, labelled=False)
            with torch.enable_grad():
                rs, rt = self._task_fisher("recon_s", x, None), self._task_fisher("recon_t", x, None)
            t1 = dict(self.decoder.named_parameters())
            if stage == 2:
                gfi1, top1 = self._gfi(rs["t1"], rt["t1"], self.ctx.seed_for(f"gfi1/{r}"))
                self.dwa1.set(gfi1, t1, top1)
                return
            xl, yl = self._fisher_data(r, stage, labelled=True)
            with torch.enable_grad():
                ce = self._task_fisher("ce", xl, yl)
            gfi2, top2 = self._gfi(rt["t1"], rs["t1"], self.ctx.seed_for(f"gfi2/{r}"))
            gfi3, top3 = self._gfi(rt["t2"], ce["t2"], self.ctx.seed_for(f"gfi3/{r}"))
            self.dwa2.set(gfi2, t1, top2)
            self.dwa3.set(gfi3, dict(self.model.named_parameters()), top3)
        finally:
            self.train(was)

    # -- checkpointed state ---------------------------------------------------------------------
    def get_extra_state(self):
        self._flush()
        return {"round": self.round, "stage": self.stage, "converged": self.converged,
                "history": [list(h) for h in self.history], "sums": list(self._sums),
                "counts": list(self._counts)}

    def set_extra_state(self, state) -> None:
        self.round, self.stage = int(state["round"]), int(state["stage"])
        self.converged = bool(state["converged"])
        self.history = [list(h) for h in state["history"]]
        self._sums, self._counts = list(state["sums"]), list(state["counts"])
        self._pending = [[], [], []]


class SourceOnly(Method):
    """Cross-entropy on another data role's labelled training split (default ``source``): the
    source-only row of domain adaptation, measured on the stage's target role like every row."""

    def __init__(self, model, ctx, *, role: str = "source"):
        super().__init__(model, ctx)
        if ctx.data and role not in ctx.data:
            raise UserError(f"source_only trains on data role {role!r}, which the stage lacks",
                            key="role", hint="dataset: {source: ..., target: ...}")
        self.role = role

    def streams(self):
        return {"labelled": Stream(role=self.role)}

    def loss(self, batch):
        return {"ce": F.cross_entropy(self.model(batch.x), batch.y)}


@hookimpl
def harness_register_methods(register):
    register("cetl", CETL, "coupled end-to-end transfer of paper 003: frozen source S, decoder "
                           "T1 (the target's reverse), target T2, Algorithm 1 with GFI")
    register("source_only", SourceOnly, "cross-entropy on another data role (the source-only "
                                        "row of domain adaptation)")

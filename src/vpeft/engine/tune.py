"""Hyper-parameter search of one (suite, method, task) with Optuna: tuned on val200, never on test.

VTAB-1k's protocol for choosing hyper-parameters (VPT, NOAH): every trial trains on `train800` and is
scored on `val200` (the `val` protocol); the best setting is then retrained on `train800val200` and
evaluated once on `test` by the ordinary final run (`with_tuned_settings` lays it over the run's
settings). This module only ever builds runs under a protocol whose splits are not `test`
(`check_search_protocol`), so the test split is not even opened while tuning.

A search space is a mapping of the run's sections to dimensions (config `tuning.space`, extended per
method by `tune:` in config/methods/<m>.yaml):

    {"training": {"lr": {"low": 1e-4, "high": 1e-1, "log": true, "points": 4}, ...},
     "hparams": {"rank": [2, 4, 8, 16]}}

A list is a set of choices; a mapping is a range (`log` spacing by default, `int: true` for integers)
that the TPE sampler ("optuna") samples continuously and the grid sampler ("grid") cuts into `points`
values. Trials report the val200 top-1 every `report_every` epochs so that hopeless ones are pruned
(Optuna's PercentilePruner: below the lower quartile of earlier trials at the same epoch). A trial's
score is the val200 top-1 of its *final* model, as the final run's is on test.

The study lives in a journal file (`<study_dir>/study.journal`), named by a digest of everything that
defines it (run settings, space, sampler, seed): a rerun after a kill loads it and runs only the
trials still missing from the budget; a trial that was running when the process died is marked
failed and enqueued again with the same parameters, and resumes from its own per-epoch checkpoint
(its folder is named by its parameters).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from ..provenance import provenance
from .train import TrainingError, run_training

log = logging.getLogger("vpeft.tune")

TUNED_SCHEMA = "vpeft.tuned/1"
SAMPLERS = ("grid", "optuna")
SECTIONS = ("training", "hparams")  # where a dimension's value goes in the run's settings
FINISHED = ("COMPLETE", "PRUNED")   # trials that count against the budget
JOURNAL = "study.journal"


class TuningError(ValueError):
    """A search cannot run as configured; the message names the setting."""


@dataclass(frozen=True)
class Dimension:
    """One searched setting: `section.key` (e.g. training.lr, hparams.rank)."""

    section: str
    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = True
    integer: bool = False
    points: int = 3

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def grid(self) -> list:
        """The values the grid sampler tries."""
        if self.choices is not None:
            return list(self.choices)
        n = max(1, self.points)
        if n == 1:
            raw = [self.low]
        elif self.log:
            raw = [self.low * (self.high / self.low) ** (i / (n - 1)) for i in range(n)]
        else:
            raw = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        if self.integer:
            return sorted({int(round(v)) for v in raw})
        # 3 significant digits: grids of readable numbers (1e-3, 3.16e-3, ...), kept inside the range
        return [min(max(float(f"{v:.3g}"), self.low), self.high) for v in raw]

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


def parse_space(space: dict) -> list[Dimension]:
    """The search space of config `tuning.space` / a method's `tune:` as dimensions, checked."""
    dims = []
    for section, entries in (space or {}).items():
        if section not in SECTIONS:
            raise TuningError(f"search space: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        for key, spec in (entries or {}).items():
            where = f"search space {section}.{key}"
            if spec is None:  # `key: null` removes a dimension inherited from the defaults
                continue
            if isinstance(spec, list):
                if not spec:
                    raise TuningError(f"{where}: an empty list of choices")
                dims.append(Dimension(section, key, choices=tuple(spec)))
                continue
            if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
                raise TuningError(f"{where}: expected a list of choices or {{low, high[, log, int, points]}}")
            low, high, log_scale = spec["low"], spec["high"], bool(spec.get("log", True))
            if not low < high or (log_scale and low <= 0):
                raise TuningError(f"{where}: need low < high (and low > 0 on a log scale), got {low}, {high}")
            dims.append(Dimension(section, key, low=low, high=high, log=log_scale,
                                  integer=bool(spec.get("int", False)), points=int(spec.get("points", 3))))
    if not dims:
        raise TuningError("search space is empty")
    return dims


def check_search_protocol(run: dict) -> None:
    """Trials must neither train nor score on the test split."""
    protocol = run.get("protocol") or {}
    splits = {protocol.get("train_split"), protocol.get("eval_split")}
    for layout in (protocol.get("layouts") or {}).values():
        splits |= {layout.get("train_split"), layout.get("eval_split")}
    if "test" in splits or None in {protocol.get("train_split"), protocol.get("eval_split")}:
        raise TuningError(f"a search must use a protocol without the test split (the `val` protocol), "
                          f"got {protocol}")


def apply_params(run: dict, params: dict) -> dict:
    """The run's settings with `{"training.lr": ..., "hparams.rank": ...}` laid over them."""
    out = copy.deepcopy(run)
    for name, value in params.items():
        section, key = name.split(".", 1)
        target = "method_hparams" if section == "hparams" else section
        out[target] = {**out.get(target, {}), key: value}
    return out


def with_tuned_settings(values: dict, tuned_path: str | Path) -> dict:
    """The final run's settings with the search's best setting (`tuned.json`) laid over them."""
    tuned = json.loads(Path(tuned_path).read_text())
    if not isinstance(tuned, dict) or tuned.get("schema") != TUNED_SCHEMA:
        raise TuningError(f"{tuned_path}: not a search result (schema {TUNED_SCHEMA})")
    return {**values, "training": {**values.get("training", {}), **tuned["training"]},
            "method_hparams": {**values.get("method_hparams", {}), **tuned["hparams"]}}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _sampler(kind: str, dims: list[Dimension], seed: int, budget: int):
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler({d.name: d.grid() for d in dims}, seed=seed)
    if kind == "optuna":
        # a third of the budget (2 to 10 trials) explores at random before TPE models the scores
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, budget // 3)))
    raise TuningError(f"unknown sampler {kind!r}; valid: {', '.join(SAMPLERS)} (or off)")


def _pruner(enabled: bool, epochs: int):
    import optuna

    if not enabled:
        return optuna.pruners.NopPruner()
    # "hopeless": below the lower quartile of the earlier trials at the same epoch, once two trials
    # have finished and after the first third of the schedule (early epochs say little).
    return optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=max(0, epochs // 3 - 1))


def _recover_interrupted(study) -> int:
    """Trials left RUNNING by a killed process: mark them failed and enqueue their parameters again."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.info("trial %d was interrupted: marked failed, its parameters enqueued again", trial.number)
    return len(stale)


def run_search(run: dict, space: dict, settings: dict, out_path: str | Path, study_dir: str | Path, *,
               threads: int = 1, base_dir: str | Path = ".") -> dict:
    """Run (or resume) the search and write `out_path` (tuned.json). Returns its content.

    `run`: the resolved run under the `val` protocol; `settings`: {"sampler": "grid"|"optuna",
    "trials": N, "pruning": bool, "seed": int, "report_every": int}.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    check_search_protocol(run)
    dims = parse_space(space)
    kind, budget = settings["sampler"], int(settings["trials"])
    seed = int(settings.get("seed", run["seed"]))
    pruning, report_every = bool(settings.get("pruning", True)), max(1, int(settings.get("report_every", 1)))
    epochs = int(run["training"]["epochs"])
    optuna.logging.disable_default_handler()  # our log file, not the console
    optuna.logging.enable_propagation()

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    identity = {"run": run, "space": [d.__dict__ for d in dims], "sampler": kind, "seed": seed,
                "pruning": pruning, "report_every": report_every}
    study_name = f"{run['suite']}.{run['method']}.{run['task']}.{_digest(identity)[:16]}"
    storage = JournalStorage(JournalFileBackend(str(study_dir / JOURNAL)))
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                sampler=_sampler(kind, dims, seed, budget), pruner=_pruner(pruning, epochs),
                                load_if_exists=True)
    _recover_interrupted(study)

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def objective(trial) -> float:
        params = {d.name: d.suggest(trial) for d in dims}
        folder = study_dir / "trials" / _digest(params)[:12]
        trial.set_user_attr("folder", str(folder))
        log.info("trial %d: %s", trial.number, params)

        def report(epoch: int, score) -> None:
            if epoch % report_every and epoch != epochs:
                return
            value = score()
            trial.report(value, epoch)
            log.info("trial %d epoch %d/%d: val top-1 %.4f", trial.number, epoch, epochs, value)
            if epoch != epochs and trial.should_prune():
                raise optuna.TrialPruned(f"val top-1 {value:.4f} at epoch {epoch}")

        try:
            metrics = run_training(apply_params(run, params), folder / "metrics.json", threads=threads,
                                   base_dir=base_dir, on_epoch_end=report)
        except optuna.TrialPruned:
            log.info("trial %d pruned", trial.number)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except TrainingError as err:  # e.g. a NaN loss at a too-high lr: a bad point, not a broken search
            trial.set_user_attr("diverged", str(err))
            shutil.rmtree(folder, ignore_errors=True)
            raise optuna.TrialPruned(f"diverged: {err}") from None
        value = float(metrics["metric"]["value"])
        log.info("trial %d: final val top-1 %.4f", trial.number, value)
        return value

    while (missing := budget - finished()) > 0:
        before = len(study.trials)
        study.optimize(objective, n_trials=missing, catch=())
        if len(study.trials) == before or kind == "grid" and _grid_exhausted(study, dims):
            break

    result = _record(study, run, dims, settings, kind, budget, seed, study_dir, study_name)
    atomic_write_json(out_path, result)
    log.info("best of %d trials: %s (val top-1 %.4f)", result["counts"]["finished"], result["best"]["params"],
             result["best"]["value"])
    return result


def _grid_exhausted(study, dims: list[Dimension]) -> bool:
    size = math.prod(len(d.grid()) for d in dims)
    seen = {tuple(sorted(t.params.items())) for t in study.trials if t.state.name in FINISHED}
    return len(seen) >= size


def _record(study, run, dims, settings, kind, budget, seed, study_dir, study_name) -> dict:
    trials = []
    for t in study.trials:
        trials.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "started": t.datetime_start.isoformat() if t.datetime_start else None,
            "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_start and t.datetime_complete else None,
            **({"diverged": t.user_attrs["diverged"]} if "diverged" in t.user_attrs else {}),
        })
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    if not complete:
        raise TuningError(f"{run['suite']}/{run['method']}/{run['task']}: no trial completed "
                          f"({len(trials)} pruned or failed); widen the space or raise the budget")
    # ties: the earliest trial wins, so the choice does not depend on anything but the scores
    best = max(complete, key=lambda t: (t["value"], -t["number"]))
    values = [t["value"] for t in complete]
    chosen = {"training": {}, "hparams": {}}
    for name, value in best["params"].items():
        section, key = name.split(".", 1)
        chosen[section][key] = value
    return {
        "schema": TUNED_SCHEMA,
        **{k: run[k] for k in ("suite", "method", "task", "seed")},
        "protocol": {k: run["protocol"].get(k) for k in ("name", "train_split", "eval_split")},
        "sampler": kind, "budget": budget, "search_seed": seed, "pruning": bool(settings.get("pruning", True)),
        "space": {d.name: (list(d.choices) if d.choices is not None else
                           {"low": d.low, "high": d.high, "log": d.log, "int": d.integer, "grid": d.grid()})
                  for d in dims},
        "study": {"storage": str(Path(study_dir) / JOURNAL), "name": study_name},
        "best": {"trial": best["number"], "value": best["value"], "params": best["params"]},
        "training": chosen["training"], "hparams": chosen["hparams"],
        "spread": {"min": min(values), "max": max(values), "range": max(values) - min(values)},
        "counts": {"finished": sum(t["state"] in FINISHED for t in trials), "complete": len(complete),
                   "pruned": sum(t["state"] == "PRUNED" for t in trials),
                   "failed": sum(t["state"] == "FAIL" for t in trials)},
        "base_training": {d.key: run["training"].get(d.key) for d in dims if d.section == "training"},
        "base_hparams": {d.key: run.get("method_hparams", {}).get(d.key) for d in dims if d.section == "hparams"},
        "trials": trials,
        "run": run,  # the resolved settings every trial starts from (val protocol, first seed)
        "provenance": _provenance(),
    }


def _provenance() -> dict:
    from importlib.metadata import version

    record = provenance()
    return {**record, "packages": {**record["packages"], "optuna": version("optuna")}}

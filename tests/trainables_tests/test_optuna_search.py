"""The searcher knows what ASHA did: stopped trials are PRUNED, finished ones scored by their best epoch."""

from __future__ import annotations

from optuna.samplers import RandomSampler
from optuna.trial import TrialState

from medtune.config.spaces import load_space
from trainables.optuna_search import AshaAwareOptunaSearch
from trainables.sampling import DefineByRun

METRIC = "val/balanced_acc"


def _report(searcher: AshaAwareOptunaSearch, trial_id: str, values: list[float], **last: object) -> None:
    """As Ray delivers them: an epoch the scheduler stops the trial at (ASHA's rung, max_t) reaches the
    searcher only with the completion; a trial that returned by itself (its patience) had it reported too."""
    assert searcher.suggest(trial_id) is not None
    shown = values if last.get("early_stopped") else values[:-1]
    for epoch, value in enumerate(shown, start=1):
        searcher.on_trial_result(trial_id, {METRIC: value, "training_iteration": epoch})
    searcher.on_trial_complete(trial_id, {METRIC: values[-1], "training_iteration": len(values), **last})


def test_asha_stops_are_pruned_and_finished_trials_keep_their_best_epoch() -> None:
    space = load_space("whole_cls")
    searcher = AshaAwareOptunaSearch(
        space=DefineByRun(space), metric=METRIC, mode="max", sampler=RandomSampler(seed=0), max_epochs=4
    )
    _report(searcher, "stopped", [0.4, 0.5])  # ASHA ended it at epoch 2 of 4
    _report(searcher, "full", [0.5, 0.8, 0.7, 0.6])  # ran all 4 epochs; its best epoch was the 2nd
    _report(searcher, "last", [0.5, 0.6, 0.7, 0.9])  # its best epoch was its last
    _report(searcher, "patience", [0.3, 0.35], early_stopped=1.0)  # its own patience ended it
    trials = searcher._ot_study.get_trials(deepcopy=False)
    stopped, full, last, patience = trials
    # The truncated trial is lower fidelity, not a final score; its epochs, the rung's included, stay as
    # intermediate values.
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.4, 2: 0.5}
    # A finished trial is told the value the leaderboard ranks by: its best epoch, not its last ...
    assert full.state == TrialState.COMPLETE and full.value == 0.8
    # ... even when that is its last, which Ray hands the searcher only on completion.
    assert last.value == 0.9 and last.intermediate_values == {1: 0.5, 2: 0.6, 3: 0.7, 4: 0.9}
    assert patience.state == TrialState.COMPLETE and patience.value == 0.35

"""hparams_search=: Optuna's sweeper over train.py, its study read back with Optuna, failed trials, continuing."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from engine.command_line import check_search
from engine.errors import ConfigError
from helpers import QUICK, failed_with, train


def study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits_gmconv", storage=f"sqlite:///{sweep}/optuna.db")


@pytest.mark.slow
def test_a_search_records_every_trial_goes_on_past_a_failed_one_and_continues_where_it_stopped(tmp_path):
    sweep = tmp_path / "search"
    search = ["-m", "hparams_search=digits_gmconv", "optim.lr=choice(-1,0.05,0.1)", *QUICK]  # lr=-1 fails
    proc = train(*search, "hydra.sweeper.n_trials=4", f"hydra.sweep.dir={sweep}")
    out = failed_with(proc, "job(s) of the sweep failed", "optim.lr=-1.0 is invalid")
    trials = study(sweep).trials
    states = [t.state for t in trials]
    assert len(trials) == 4 and optuna.trial.TrialState.FAIL in states, out[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == states.count(optuna.trial.TrialState.COMPLETE) > 0
    for trial in trials:  # each completed trial's value is its run's best top-1, with the params it ran with
        if trial.state is optuna.trial.TrialState.COMPLETE:
            (run,) = [
                json.loads(p.read_text())
                for p in sweep.glob("*/results.json")
                if json.loads(p.read_text())["config"]["optim"]["weight_decay"] == trial.params["optim.weight_decay"]
            ]
            assert trial.value == run["best_top1"] and trial.params["optim.lr"] == run["config"]["optim"]["lr"]
    finished = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    train(*search, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep}")  # the same command, one more trial
    assert len(study(sweep).trials) == 5  # the first trial drawn again: its finished run, not trained again
    assert sorted(p.parent.name for p in sweep.glob("*/results.json")) == finished


@pytest.mark.parametrize(
    "overrides, refused",
    [
        (["data.batch_size=0"], "data.batch_size=0 is invalid"),  # not searched: every trial would have it
        (["optim.lr=-1"], "optim.lr=-1.0 is invalid"),  # searched, but a typed value is fixed for every trial
        (["optim.momentum=0.95", "optim=adamw"], None),  # valid for the search's base config
        ([], None),
    ],
)
def test_a_search_that_every_trial_would_refuse_stops_before_the_first(overrides, refused):
    argv = ["train.py", "hparams_search=digits_gmconv", *overrides]
    if refused is None:
        check_search(argv)
    else:
        with pytest.raises(ConfigError, match=f"every trial of the search would be refused.*{refused}"):
            check_search(argv)

"""The composed config: every group option composes, and bad settings fail at start-up."""

from __future__ import annotations

import random
import re

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from engine.command_line import check_sweep_jobs, composition_error
from engine.config import batches_in, resume_changes, settings_without_effect, validate
from engine.errors import ConfigError, IgnoredSetting
from helpers import CONFIGS, compose_train, load, ok, run_in_process, train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_default_is_resnet20_gmconv_on_digits():
    cfg = compose_train()
    assert (cfg.model.name, cfg.conv.name, cfg.data.name) == ("resnet20", "gmconv", "digits")
    assert cfg.conv.type == "gmconv"
    validate(cfg)


DEFAULT_OPTIONS = {"model": "resnet20", "conv": "gmconv", "data": "digits", "optim": "sgd", "sched": "cosine"}
NAMED_OTHERWISE = {"model": {"timm": "resnet18d"}}  # timm's default model


@pytest.mark.parametrize("group", ["model", "conv", "data", "optim", "sched"])
def test_every_group_option_composes_validates_and_is_the_option_it_names(group):
    default = compose_train()
    for option in options(group):
        cfg = compose_train(f"{group}={option}")
        validate(cfg)
        name = getattr(cfg[group].name, "value", cfg[group].name)
        assert name == NAMED_OTHERWISE.get(group, {}).get(option, option), (group, option)
        assert (cfg[group] == default[group]) == (option == DEFAULT_OPTIONS[group]), option  # it changes the group


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose(option):
    validate(compose_train(f"experiment={option}"))


def test_conv_variants_map_onto_gmconv_options():
    assert compose_train("conv=gmconv_layer").conv.sigma_granularity == "layer"
    assert compose_train("conv=gmconv_dynamic").conv.dynamic is True
    assert compose_train("conv=gmconv_enlarged").conv.enlarge_by == 2
    assert compose_train("conv=gmconv_fixed").conv.learnable_sigma is False
    assert compose_train("conv=standard").conv.type == "standard"


def test_help_lists_only_real_choices():
    """The schema is not a group option: no conv_schema/model_schema/... among the choices."""
    cfg = compose_train(hydra=True)
    for group in ("model", "conv", "data", "optim", "sched"):
        with pytest.raises(ConfigCompositionException):
            compose_train(f"{group}={group}_schema")
    assert "trainer" not in OmegaConf.to_container(cfg.hydra.runtime.choices)


def test_misspelt_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="epoch"):
        compose_train("trainer.epoch=3")


@pytest.mark.parametrize(
    "override, key", [("+trainer.epoch=1", "trainer.epoch"), ("+conv.sigma_int=3", "conv.sigma_int")]
)
def test_keys_added_with_plus_are_refused(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + " is not a setting"):
        validate(compose_train(override))


@pytest.mark.parametrize(
    "override, choice",
    [
        ("conv=gmcnv", "gmconv_layer"),
        ("data=cifar11", "cifar10"),
        ("optim=adamx", "adamw"),
        ("model=resnet999", "resnet20"),
    ],
)
def test_unknown_group_option_lists_choices(override, choice):
    with pytest.raises(ConfigCompositionException, match=choice):
        compose_train(override)


def test_enum_values_are_checked():
    with pytest.raises(ConfigCompositionException, match="fp8|bf16"):
        compose_train("trainer.amp=fp8")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.epochs=0"], "trainer.epochs"),
        (["optim.lr=-0.1"], "optim.lr"),
        (["data.batch_size=0"], "data.batch_size"),
        (["data.batch_size=-1"], "data.batch_size"),
        (["optim.lr=0"], "optim.lr"),
        (["trainer.label_smoothing=1.5"], "trainer.label_smoothing"),
        (["eval_only=true"], "ckpt"),
        (["ckpt=x.pt"], "ckpt"),
        (["eval_only=true", "ckpt=x.pt", "resume=auto"], "resume"),
        (["optim.name=nosuchopt"], "optim.name"),
        (["conv.sigma_min=0"], "sigma_min"),
        (["conv.sigma_granularity=pixel"], "sigma_granularity"),
        (["model.small_input=maybe"], "model.small_input"),
        # settings that the chosen options would silently ignore
        (["conv=standard", "conv.sigma_init=3"], "conv.sigma_init"),
        (["data.num_classes=5"], "data.num_classes"),
        (["data.train_size=100"], "data.train_size"),
        (["sched=multistep", "sched.milestones=[5,2]"], "sched.milestones"),
        (["sched.milestones=[5]"], "sched.milestones"),
        (["optim=adamw", "optim.nesterov=true"], "optim.nesterov"),
        (["conv=standard", "optim.sigma_lr_scale=10"], "optim.sigma_lr_scale"),
        (["conv=gmconv_fixed", "optim.sigma_lr_scale=10"], "optim.sigma_lr_scale"),
        (["optim.sigma_lr_scale=-1"], "optim.sigma_lr_scale"),
        (["trainer.compile_mode=reduce_overhead"], "trainer.compile_mode"),
    ],
)
def test_bad_or_unused_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate(compose_train(*overrides))


def test_resume_applies_schedule_and_optimizer_changes_but_refuses_another_experiment():
    saved = OmegaConf.to_container(compose_train(), resolve=True, enum_to_str=True)
    assert resume_changes(saved, compose_train()) == []
    assert resume_changes(saved, compose_train("trainer.epochs=20", "optim.lr=0.5")) == [
        "optim.lr 0.1 → 0.5",
        "trainer.epochs 10 → 20",
    ]
    for override in ("conv=standard", "model=resnet32", "data.batch_size=32", "seed=1", "optim=adamw"):
        with pytest.raises(ValueError, match="cannot change on resume"):
            resume_changes(saved, compose_train(override))


@pytest.mark.slow
def test_help_explains_the_program_its_groups_and_the_most_used_settings():
    out = ok(train("--help")).stdout
    assert "Train an image classifier with or without GMConv" in out and "docs/TRAINING.md" in out
    for group in ("model", "conv", "data", "optim", "sched", "experiment"):
        assert f"\n  {group} " in out, group  # a line on what the group is
        assert f"\n{group}: " in out, group  # and its options
    for setting in ("trainer.epochs=", "data.root=", "optim.lr=", "resume=<run folder>", "eval_only=true ckpt=", "-m "):
        assert setting in out, setting
    assert "== Config ==" not in out  # the composed config is --cfg job's
    assert "Most used settings (examples of values; the defaults follow the data's recipe" in out  # not defaults


@pytest.mark.parametrize(
    "overrides, warning",
    [
        (
            ["sched=multistep", "sched.milestones=[82,123]", "trainer.epochs=1"],
            "epoch 82, 123 are not before trainer.epochs=1",
        ),
        (
            ["sched=step", "sched.decay_epochs=30"],
            "sched.decay_epochs=30.0 with trainer.epochs=10: the lr never decays",
        ),
        (["sched.warmup_epochs=5", "trainer.epochs=3"], "the run ends before its warmup does"),
        (["sched=multistep", "sched.milestones=[5,9]"], None),
    ],
)
def test_schedule_settings_that_cannot_take_effect_are_warned_about(overrides, warning):
    lines = settings_without_effect(compose_train(*overrides))
    assert (lines == []) if warning is None else any(warning in line for line in lines), lines


def test_docs_recipes_is_what_the_configs_compose_to():
    """docs/RECIPES.md is generated from the configs: it cannot drift from them."""
    from analysis.recipes_table import table

    assert (CONFIGS.parent / "docs" / "RECIPES.md").read_text() == table(), (
        "run python -m scripts.docs.recipes_table --out docs/RECIPES.md"
    )


def test_no_value_tuned_on_the_digits_reaches_another_dataset():
    from analysis.recipes_table import composed, options

    for data in ("cifar10", "cifar100", "imagenet", "imagefolder"):
        for model in options("model"):
            cfg = composed(data, model)
            where = f"data={data} model={model}"
            assert cfg.optim.name == "sgd" and cfg.optim.lr not in (0.05, 0.2), where  # VGG, ResNet-110, AlexNet
            assert not (cfg.optim.weight_decay == 5e-4 and cfg.trainer.epochs == 10), where  # the digits demo
            assert not cfg.model.kwargs.get("zero_init_residual") and cfg.recipe.name == data, where


def test_what_an_experiment_and_the_command_line_change_of_the_recipe_is_listed():
    from engine.recipes import changes_from_recipe, recipe_line

    recipe = compose_train("data=cifar10", "model=resnet110")
    run = compose_train("experiment=cifar10_resnet110", "trainer.epochs=20", "data.num_workers=0")
    assert changes_from_recipe(run, recipe) == [
        "sched.warmup_epochs 0.0 → 1.0",
        "sched.warmup_lr 1e-05 → 0.01",
        "trainer.epochs 164 → 20",
    ]  # data.num_workers is not the recipe's
    assert recipe_line(run).startswith("recipe: cifar10/resnet110 — He et al. 2016: SGD lr 0.1")
    assert "optimizer for alexnet: lr 0.01" in recipe_line(compose_train("data=imagenet", "model=alexnet"))


@pytest.mark.parametrize(
    "value, ok",
    [
        ("4", True),
        ("0.25", True),
        ("1.0", True),
        ("null", True),
        ("0", False),
        ("1.5", False),
        ("-2", False),
        ("true", False),
        ("abc", False),
    ],
)
def test_a_batch_limit_is_a_count_or_a_fraction_of_the_epoch(value, ok):
    for key in ("trainer.limit_train_batches", "trainer.limit_val_batches"):
        cfg = compose_train(f"{key}={value}")
        if ok:
            validate(cfg)
        else:
            with pytest.raises(
                ValueError,
                match=f"{key}=.* is invalid: expected a positive number of batches, a "
                "fraction of the epoch in \\(0, 1\\], or null",
            ):
                validate(cfg)
    assert [batches_in(limit, 23) for limit in (None, 4, 40, 0.5, 0.01, 1.0)] == [23, 4, 23, 11, 1, 23]


@pytest.mark.slow
def test_fractions_of_the_epoch_train_and_evaluate_that_share(tmp_path):
    results = run_in_process(
        tmp_path,
        "trainer.epochs=1",
        "trainer.limit_train_batches=0.5",
        "trainer.limit_val_batches=0.34",
        "trainer.progress=false",
    )
    assert load(tmp_path / "checkpoints" / "last.pt")["step"] == 11  # 23 batches of 64 digits: half is 11
    assert results["eval_samples"] == 2 * 64  # 6 validation batches: a third is 2


@pytest.mark.slow
def test_debug_fast_is_one_short_epoch_apart_from_real_runs(tmp_path):
    cfg = compose_train("debug=fast", "model=resnet56", hydra=True)
    assert (cfg.trainer.epochs, cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (1, 4, 2)
    assert OmegaConf.to_container(cfg.hydra.run)["dir"].startswith("outputs/debug/${data.name}/")
    results = run_in_process(tmp_path, "debug=fast", "trainer.progress=false")
    assert results["status"] == "completed" and results["epochs"] == 1


# (options that make the setting unread, the setting): each is refused in a single run and ignored by a sweep's job
IGNORED = [
    (["optim=adamw"], "optim.momentum=0.95"),
    (["optim=adamw"], "optim.nesterov=true"),
    (["conv=standard"], "trainer.log_masks=true"),
    (["conv=standard"], "optim.sigma_lr_scale=5"),
    (["conv=gmconv"], "optim.offset_lr_scale=0.5"),
    (["conv=standard"], "conv.sigma_init=3.5"),
    (["sched=cosine"], "sched.milestones=[3,6]"),
    (["sched=cosine"], "sched.power=2.0"),
    ([], "trainer.compile_mode=max_autotune"),
    ([], "trainer.nonfinite_limit=5"),
    ([], "trainer.bce_target_threshold=0.2"),
    ([], "trainer.ema_warmup=true"),
    (["data=digits"], "data.clutter=3"),
    (["data=digits"], "data.root=/datasets"),
    (["data.augment=false"], "data.color_jitter=0.4"),
    ([], "data.mix_prob=0.5"),
]


def _combined(cases: list[tuple[list[str], str]]) -> list[str]:
    return [o for options, _ in cases for o in options] + [setting for _, setting in cases]


@pytest.mark.parametrize("options,setting", IGNORED, ids=[setting for _, setting in IGNORED])
def test_a_setting_the_options_ignore_is_refused_in_a_single_run(options, setting):
    with pytest.raises(IgnoredSetting, match=re.escape(setting.partition("=")[0])):
        validate(compose_train(*options, setting))


def test_a_sweep_job_runs_without_the_settings_its_options_ignore_over_generated_combinations():
    """Any combination of such settings (40 drawn with a fixed seed, the compatible ones tried): the job's config
    keeps none of them (each back at its default, so the job is a valid single run), one line names each, and
    the rest is unchanged."""
    rng, tried = random.Random(0), 0
    for _ in range(40):
        cases = rng.sample(IGNORED, rng.randint(1, 4))
        keys = {setting.partition("=")[0] for _, setting in cases}
        chosen = {o for options, _ in cases for o in options}
        if len(keys) < len(cases) or len({o.partition("=")[0] for o in chosen}) < len(chosen):
            continue  # two cases set one key, or need different options of one group
        tried += 1
        default = compose_train(*[o for options, _ in cases for o in options])
        cfg = compose_train(*_combined(cases))
        lines = validate(cfg, sweep_job=True)
        assert sorted(line.split(" ", 1)[0] for line in lines) == sorted(keys), lines
        validate(cfg)
        assert OmegaConf.to_container(cfg) == OmegaConf.to_container(default)
    assert tried >= 20


def test_a_sweep_with_jobs_that_would_be_refused_starts_none_and_names_each():
    argv = ["train.py", "-m", "conv=standard,gmconv", "optim.lr=0.05,-1", "trainer.log_masks=true", "hydra.sweep.dir=x"]
    with pytest.raises(ConfigError) as refused:
        check_sweep_jobs(argv)
    lines = str(refused.value).splitlines()
    assert lines[0] == "2 of the sweep's 4 jobs would be refused, so none was started:"
    assert lines[1:] == [
        f"  job {n} (conv={conv} optim.lr=-1 trainer.log_masks=True): optim.lr=-1.0 is invalid: expected a positive "
        "number"
        for n, conv in ((1, "standard"), (3, "gmconv"))
    ]
    check_sweep_jobs(["train.py", "-m", "optim=sgd,adamw", "optim.momentum=0.95", "conv=standard,gmconv"])
    check_sweep_jobs(["train.py", "optim.lr=-1"])  # not a sweep: the run refuses it itself


def test_a_hydra_plugin_behind_an_extra_names_the_extra():
    err = MissingConfigException("missing", missing_cfg_file="hydra/sweeper/optuna", options=["basic"])
    assert composition_error(err) == (
        'hydra/sweeper=optuna needs Optuna\'s sweeper (hparams_search=): pip install -e ".[search]"'
    )
    err = MissingConfigException("missing", missing_cfg_file="hydra/sweeper/nope", options=["basic"])
    assert composition_error(err) == "hydra/sweeper=nope is not an option of hydra/sweeper; choose one of basic"


def test_the_optimized_metric_is_a_number_of_results_json():
    validate(compose_train("optimized_metric=ema_top1", "trainer.ema_decay=0.99"))
    with pytest.raises(ConfigError, match="optimized_metric=accuracy is not a number of results.json; choose one of"):
        validate(compose_train("optimized_metric=accuracy"))
    with pytest.raises(ConfigError, match="optimized_metric=ema_top1 needs an EMA"):
        validate(compose_train("optimized_metric=ema_top1"))

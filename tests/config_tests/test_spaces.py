"""Search-space schema: every shipped file validates; bad files fail with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from medtune.config.spaces import available, grid_points, load_space
from medtune.config.validate import SpaceError
from trainables.sampling import DefineByRun

GOOD = """
task: segmentation
metric: val/iou
mode: max
fixed: {data.image_size: 32}
params:
  model.name: {choice: [unet, deeplabv3_mobilenet_v3_large]}
  model.width: {int: [4, 8], when: {model.name: unet}}
  loss.name: {choice: [bce]}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
budget: {num_samples: 2, max_epochs: 2}
smoke:
  budget: {num_samples: 1}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_space_validates(name: str, smoke: bool) -> None:
    space = load_space(name, smoke=smoke)
    assert space.params and space.budget["num_samples"] >= 1


def test_smoke_block_overrides_budget(tmp_path: Path) -> None:
    assert load_space(write(tmp_path, GOOD), smoke=True).budget["num_samples"] == 1
    assert load_space(write(tmp_path, GOOD)).budget["num_samples"] == 2


@pytest.mark.parametrize(
    "old, new, expected",
    [
        (
            "{loguniform: [1.0e-4, 1.0e-2]}",
            "{loguniform: [1.0e-2, 1.0e-4]}",
            "key 'params.train.lr.loguniform': low 0.01 > high",
        ),
        ("{loguniform: [1.0e-4, 1.0e-2]}", "{gaussian: [0, 1]}", "key 'params.train.lr': expected exactly one of"),
        ("{loguniform: [1.0e-4, 1.0e-2]}", "{loguniform: [0, 1]}", "loguniform needs low > 0"),
        (
            "{int: [4, 8], when: {model.name: unet}}",
            "{int: [4, 8]}",
            "deeplabv3_mobilenet_v3_large' takes no argument 'width'",
        ),
        ("train.lr:", "train.learning_rate:", "key 'train.learning_rate': unknown argument 'learning_rate'"),
        ("task: segmentation", "task: segmentaton", "key 'task': expected one of"),
        ("mode: max", "mode: maximise", "key 'mode': expected max or min"),
        (
            "budget: {num_samples: 2, max_epochs: 2}",
            "budget: {num_samples: 0}",
            "key 'budget.num_samples': expected a positive integer",
        ),
        ("loss.name: {choice: [bce]}", "loss.name: {choice: [bce, nope]}", "unknown loss 'nope'; valid: bce"),
        (
            "model.width: {int: [4, 8], when: {model.name: unet}}",
            "model.width: {int: [4, 8], when: {train.lr: 1}}",
            "must be fixed or a parameter listed before",
        ),
        ("fixed: {data.image_size: 32}", "fixed: {data.image_size: 32}\ncolour: red", "unknown key 'colour'"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(SpaceError) as err:
        load_space(path)
    # One line that starts with the file and says what was expected.
    assert str(err.value).startswith(path) and expected in str(err.value) and "\n" not in str(err.value)


def test_unknown_space_lists_valid_names() -> None:
    with pytest.raises(SpaceError, match="unknown search space 'nope'; valid: .*segmentation"):
        load_space("nope")


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="not valid YAML") as err:
        load_space(write(tmp_path, "task: [unclosed"))
    assert "\n" not in str(err.value)


class FakeTrial:
    """Records suggestions the way optuna.Trial would, always picking the first choice / low end."""

    def __init__(self, pick: int = 0) -> None:
        self.pick, self.params = pick, {}

    def suggest_categorical(self, name, choices):
        self.params[name] = choices[self.pick % len(choices)]
        return self.params[name]

    def suggest_float(self, name, low, high, log=False):
        self.params[name] = low
        return low

    def suggest_int(self, name, low, high):
        self.params[name] = low
        return low


def test_conditional_parameter_exists_only_under_its_choice(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, GOOD))
    unet, deeplab = FakeTrial(0), FakeTrial(1)
    assert DefineByRun(space)(unet) == {"data.image_size": 32}
    DefineByRun(space)(deeplab)
    # model.width is sampled for unet only; TPE never sees a phantom width for deeplab.
    assert unet.params["model.width"] == 4 and "model.width" not in deeplab.params


def test_config_file_is_a_one_trial_space(tmp_path: Path) -> None:
    from medtune.config.spaces import load_config

    path = tmp_path / "best.yaml"
    path.write_text(
        "space: whole_cls\nconfig: {model.name: resnet18, loss.name: ce, data.image_size: 32, train.lr: 0.001}\nbudget: {max_epochs: 20}\n"
    )
    space = load_config(path)
    # Everything is fixed, one sample, the longer epoch budget, the space's objective.
    assert space.params == () and space.budget["num_samples"] == 1 and space.budget["max_epochs"] == 20
    assert space.metric == "val/balanced_acc" and space.fixed["train.lr"] == 0.001
    path.write_text("space: whole_cls\nconfig: {model.name: resnet18, train.learning_rate: 0.1}\n")
    with pytest.raises(SpaceError, match="unknown argument 'learning_rate'"):
        load_config(path)


def test_grid_size_and_overrides_leave_the_loaded_space_unchanged() -> None:
    from medtune.config.options import LaunchOptions
    from medtune.prepare.inputs import load_and_override

    grid = load_space("seg_loss_grid")
    size = len(grid_points(grid))
    # A grid's sample count is its number of combinations, each run once.
    assert grid.budget["num_samples"] == size > 1
    overridden = load_and_override(LaunchOptions(space="seg_loss_grid", num_samples=size, max_epochs=3))
    assert overridden.budget == {**grid.budget, "max_epochs": 3}
    # The override made a new space and a new budget dict: the loaded space keeps the file's epochs.
    assert grid.budget["max_epochs"] == 10 and overridden.budget is not grid.budget
    with pytest.raises(SpaceError, match=f"--num-samples: .*seg_loss_grid.yaml is a grid of {size} combinations"):
        load_and_override(LaunchOptions(space="seg_loss_grid", num_samples=size + 1))
    # A sampled space takes any count.
    assert load_and_override(LaunchOptions(space="whole_cls", num_samples=5)).budget["num_samples"] == 5


MASKED = """
task: masked_classification
metric: val/balanced_acc
mode: max
fixed: {data.image_size: 32, model.name: resnet18, loss.name: ce}
params:
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
budget: {num_samples: 2, max_epochs: 2}
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "key 'data.mask_mode' is required for task masked_classification"),
        ("  data.mask_mode: {choice: [soft, none]}\n", "key 'data.mask_mode': 'none' is not valid"),
    ],
)
def test_masked_space_needs_a_real_mask_mode(tmp_path: Path, extra: str, expected: str) -> None:
    # Without a mask mode (or with none) the "masked" classifier would see whole images.
    with pytest.raises(SpaceError, match=expected) as err:
        load_space(write(tmp_path, MASKED.replace("params:\n", "params:\n" + extra)))
    assert "\n" not in str(err.value)


def test_masked_space_with_mask_modes_loads(tmp_path: Path) -> None:
    text = MASKED.replace("params:\n", "params:\n  data.mask_mode: {choice: [soft, hard, crop]}\n")
    assert load_space(write(tmp_path, text)).possible_values("data.mask_mode") == ("soft", "hard", "crop")


def test_shipped_masked_space_fixes_the_hard_arm() -> None:
    space = load_space("masked_cls")
    # The mode is the experiment's arm, not searched on a val split that still carries the shortcut.
    assert space.fixed["data.mask_mode"] == "hard" and "data.mask_mode" not in [p.name for p in space.params]
    assert "--set data.mask_mode=soft" in space.description


@pytest.mark.parametrize(
    ("items", "fixed"),
    [
        (["data.mask_mode=soft"], {"data.mask_mode": "soft"}),
        (["data.mask_mode=crop", "data.crop_margin=0.2"], {"data.mask_mode": "crop", "data.crop_margin": 0.2}),
        (["data.crop_margin=0"], {"data.mask_mode": "hard", "data.crop_margin": 0}),
    ],
)
def test_other_mask_arms_are_their_own_launches(items: list[str], fixed: dict) -> None:
    from medtune.config.overrides import apply_overrides

    space = apply_overrides(load_space("masked_cls"), items)
    # Each --set value is fixed (a conditional crop_margin too) and no longer searched.
    assert {key: space.fixed[key] for key in fixed} == fixed
    assert not {p.name for p in space.params} & set(fixed)


def test_a_mask_arm_that_shows_the_whole_image_is_refused() -> None:
    from medtune.config.overrides import apply_overrides

    with pytest.raises(SpaceError, match="^--set data.mask_mode: 'none' is not valid for task masked_classification"):
        apply_overrides(load_space("masked_cls"), ["data.mask_mode=none"])


def test_masked_config_file_needs_its_mask_mode(tmp_path: Path) -> None:
    from medtune.config.spaces import load_config

    path = tmp_path / "best.yaml"
    path.write_text("space: masked_cls\nconfig: {model.name: resnet18, loss.name: ce, data.image_size: 32}\n")
    # Without it the "masked" classifier would train on whole images (the data module's default).
    with pytest.raises(SpaceError, match="key 'data.mask_mode' is required for task masked_classification"):
        load_config(path)
    path.write_text(path.read_text().replace("data.image_size: 32", "data.image_size: 32, data.mask_mode: soft"))
    assert load_config(path).fixed["data.mask_mode"] == "soft"


VAL_METRIC = "expected a validation metric val/<name> (e.g. val/iou)"


@pytest.mark.parametrize(
    ("metric", "mode", "expected"),
    [
        ("test/iou", "max", f"key 'metric': {VAL_METRIC}, got 'test/iou'"),
        ("train/loss", "min", f"key 'metric': {VAL_METRIC}, got 'train/loss'"),
        ("iou", "max", f"key 'metric': {VAL_METRIC}, got 'iou'"),
        ("val/", "max", f"key 'metric': {VAL_METRIC}, got 'val/'"),
        ("val/loss", "max", "key 'mode': val/loss is better when lower, so mode must be min, got max"),
        ("val/fail_rate", "max", "key 'mode': val/fail_rate is better when lower, so mode must be min, got max"),
        ("val/iou", "min", "key 'mode': val/iou is better when higher, so mode must be max, got min"),
        ("val/iou", "maximise", "key 'mode': expected max or min, got 'maximise'"),
    ],
)
def test_objective_must_be_a_validation_metric_in_its_direction(
    tmp_path: Path, metric: str, mode: str, expected: str
) -> None:
    text = GOOD.replace("metric: val/iou\nmode: max", f"metric: {metric}\nmode: {mode}")
    with pytest.raises(SpaceError) as err:
        load_space(write(tmp_path, text))
    # One line naming the file and the key.
    assert str(err.value) == f"{tmp_path / 'space.yaml'}: {expected}"


@pytest.mark.parametrize(("metric", "mode"), [("val/loss", "min"), ("val/fail_rate", "min"), ("val/image_iou", "max")])
def test_objective_in_its_direction_loads(tmp_path: Path, metric: str, mode: str) -> None:
    text = GOOD.replace("metric: val/iou\nmode: max", f"metric: {metric}\nmode: {mode}")
    assert load_space(write(tmp_path, text)).mode == mode

"""A config error is named by the flag that set its field: the longest field path that holds it wins."""

from __future__ import annotations

from fleetloop.commands.config_flags import flag_error
from hal.config import ConfigError

FLAGS = {"sampler.ratios": "--sample-ratios", "sampler.ratios.online": "--online-share", "learner.seed": "--seed"}


def test_the_flag_of_the_field_or_of_the_field_above_it_prefixes_the_error() -> None:
    assert str(flag_error(ConfigError("learner.seed", "bad"), FLAGS)) == "--seed: learner.seed: bad"
    below = ConfigError("sampler.ratios.demo", "ratio must be a number")
    assert str(flag_error(below, FLAGS)) == "--sample-ratios: sampler.ratios.demo: ratio must be a number"
    indexed = ConfigError("sampler.ratios[0]", "bad")
    assert str(flag_error(indexed, FLAGS)) == "--sample-ratios: sampler.ratios[0]: bad"
    assert str(flag_error(ConfigError("sampler.ratios.online", "x"), FLAGS)).startswith("--online-share: ")


def test_an_error_no_flag_sets_is_left_as_it_is() -> None:
    unset = ConfigError("learner.seeds", "bad")  # a longer name is no field below learner.seed
    assert flag_error(unset, FLAGS) is unset
    assert str(flag_error(ConfigError("sampler", "bad"), FLAGS)) == "sampler: bad"

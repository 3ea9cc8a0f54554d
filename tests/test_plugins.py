"""A family and a metric of one's own, named by dotted path like any `_target_`: no registry to edit."""

import pytest

from mllmft import api
from mllmft.backbones import FAMILIES
from mllmft.errors import ConfigError
from mllmft.run import run

OWN_FAMILY = "model.family=tests.helpers.plugins.MY_LLAVA"


@pytest.fixture(autouse=True)
def _built_in_families_only_afterwards():
    """The family these tests register is gone after each, whatever runs next in this process."""
    before = dict(FAMILIES)
    yield
    FAMILIES.clear()
    FAMILIES.update(before)


def test_a_family_of_ones_own_trains_tests_and_is_registered_by_its_name(compose):
    results = run(compose(OWN_FAMILY, "+data.target.metric=tests.helpers.plugins.FirstWordMatch"))
    assert results["run"]["family"] == "my_llava" and FAMILIES["my_llava"].name == "my_llava"
    assert results["metrics"]["digits"]["name"] == "tests.helpers.plugins.FirstWordMatch"
    assert 0 <= results["scores"]["final"]["digits"] <= 100 and results["global_steps"] == 2


def test_a_family_of_ones_own_refuses_what_it_declares(compose):
    with pytest.raises(ConfigError, match="strategy=hft does not work with the .*MY_LLAVA family: this family's"):
        api.build(compose(OWN_FAMILY, "strategy=hft"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.family=tests.helpers.plugins.NOPE"], r"model.family='tests.helpers.plugins.NOPE' does not import"),
        (["model.family=tests.helpers.plugins.NOT_A_FAMILY"], "is a int, not a mllmft.backbones.Family"),
        (["model.family=llama"], "unknown model family 'llama'"),
        (
            ["+data.target.metric=tests.helpers.plugins.MY_LLAVA"],
            "is not a subclass of mllmft.metrics.GeneratedAnswers",
        ),
        (["+data.target.metric=no_such_metric"], "unknown metric 'no_such_metric'"),
    ],
)
def test_a_wrong_dotted_path_is_one_line(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        api.build(compose(*overrides))

"""Hook signatures are pinned, and every hook is documented in docs/hooks.md with an example."""

import re
from pathlib import Path

import pytest

from rs_plugins import hookspecs
from rs_plugins.manager import make_plugin_manager

PINNED = [
    ("rs_noise_samplers", (), False),
    ("rs_training_losses", (), False),
    ("rs_mixers", (), False),
    ("rs_certifiers", (), False),
    ("rs_denoisers", (), False),
    ("rs_load_model", ("request",), True),
    ("rs_load_data", ("request",), True),
]


@pytest.mark.parametrize("hook, argnames, firstresult", PINNED)
def test_hook_signatures_are_pinned(hook, argnames, firstresult):
    pm, _ = make_plugin_manager(entry_points=False)
    caller = getattr(pm.hook, hook)
    assert caller.spec.argnames == argnames  # renaming an argument breaks every plugin that uses it
    assert bool(caller.spec.opts.get("firstresult")) == firstresult


def test_every_hook_is_pinned_documented_and_has_an_example():
    hooks = {name for name in vars(hookspecs) if name.startswith("rs_")}
    assert hooks == {hook for hook, _, _ in PINNED}
    text = (Path(__file__).parents[1] / "docs" / "hooks.md").read_text()
    assert set(re.findall(r"^## (rs_\w+)\(", text, re.MULTILINE)) == hooks
    for hook in hooks:
        assert "Example::" in getattr(hookspecs, hook).__doc__

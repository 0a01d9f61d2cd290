"""The zoo as a model source: ``--model zoo:NAME`` resolves through ``rs_load_model`` like any other form, after
installed plugins (which may answer their own ``zoo:`` names with ``rs_plugins.sources.zoo.load_entry``)."""

from __future__ import annotations

import rs_plugins
from rs_plugins.sources import zoo


@rs_plugins.hookimpl(trylast=True)
def rs_load_model(request):
    if not request.source.startswith(zoo.PREFIX):
        return None
    return zoo.load_entry(zoo.entry(request.source.removeprefix(zoo.PREFIX), kind="classifier"), request)

"""Built-in model and data sources; they run last, so an installed plugin can take over any form."""

from __future__ import annotations

import rs_plugins
from rs_plugins.sources import data, hubs, models


@rs_plugins.hookimpl(trylast=True)
def rs_load_model(request):
    hub = hubs.load_hub_model(request.source, checkpoint=request.checkpoint, kwargs=request.kwargs,
                              trust=request.trust)  # fmt: skip
    return hub if hub is not None else models.load_model(request)


@rs_plugins.hookimpl(trylast=True)
def rs_load_data(request):
    return data.load_data(request)

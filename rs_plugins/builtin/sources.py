"""Built-in model and data sources; they run last, so an installed plugin can take over any form."""

from __future__ import annotations

import rs_plugins
from rs_plugins.sources import data, models


@rs_plugins.hookimpl(trylast=True)
def rs_load_model(request):
    return models.load_model(request)


@rs_plugins.hookimpl(trylast=True)
def rs_load_data(request):
    return data.load_data(request)

"""Where models and data come from: the built-in model and data sources behind ``--model`` and ``--data``."""

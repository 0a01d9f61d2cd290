"""The ``rs-plugins attack`` command's engine: adversaries per (image, eps), their summary, the cross-check."""

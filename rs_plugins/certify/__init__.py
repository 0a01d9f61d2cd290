"""Certify and predict: the Monte Carlo engine, its statistics, dataset runs, execution options and sharding."""

"""Benchmarks that print figures: inference latency (:mod:`dr.bench.latency`, ``python -m dr bench``)
and training step time (:mod:`dr.bench.train_step`, ``python -m dr bench-train``)."""

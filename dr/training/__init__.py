"""Training and evaluation: the options (:mod:`~dr.training.config`), the loop of Eq. 10
(:mod:`~dr.training.train`), evaluation and metrics (:mod:`~dr.training.evaluate`,
:mod:`~dr.training.metrics`) and checkpoints and run folders (:mod:`~dr.training.checkpoint`)."""

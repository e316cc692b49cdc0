"""Looking inside trained networks: which route each image takes (:mod:`~dr.explore.analysis`),
trained run folders (:mod:`~dr.explore.runs`), the figures (:mod:`~dr.explore.visualise`,
:mod:`~dr.explore.figures`) and the interactive explorers (:mod:`~dr.explore.widgets`)."""

"""Diffusion models for reconstruction: ``densify`` (conditional) and ``assimilate``
(unconditional prior + score-based data assimilation). Both train through the one training
engine (:mod:`geoft.training.engine`) with the settings of
:class:`geoft.diffusion.config.DiffusionTraining`."""

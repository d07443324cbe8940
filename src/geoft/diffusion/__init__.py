"""Diffusion models for reconstruction: ``densify`` (conditional) and ``assimilate``
(unconditional prior + score-based data assimilation)."""

"""The stage kit: what every stage command shares, one concern a module.

:mod:`.cli` (the command, its options, logging and progress), :mod:`.launch` (processes and torchrun),
:mod:`.layout` (the artifact paths and which stage makes each), :mod:`.records` (metrics and run files),
:mod:`.config` (the params.yaml schema), :mod:`.resume_key` (what keys a saved training state) and
:mod:`.inputs` (the prepared data, loaders and checkpoints a stage reads).
"""

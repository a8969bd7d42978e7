"""Leaf utilities shared by every package: the CLI contract (argument types, one-line errors) and file readers/writers.

Imports nothing from the project, so that tre, evaluation, figures and workflow can all use it."""

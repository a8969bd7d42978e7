"""Leaf utilities shared by every package: the CLI contract (argument types, one-line errors), file readers/writers,
and child process groups (`processes`: stop a group, wait lock-free, a free port).

Imports nothing from the project, so that tre, evaluation, figures and workflow can all use it."""

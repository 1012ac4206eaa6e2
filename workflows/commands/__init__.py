"""Subcommands of the ``twolevel`` command line, one module each (see ``workflows.cli``)."""

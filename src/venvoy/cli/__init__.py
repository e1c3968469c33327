"""The ``venvoy`` command line (:mod:`venvoy.cli.main`): thin, over :mod:`venvoy.api`."""

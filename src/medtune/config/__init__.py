"""Stage 1, configuration: what the user asked for.

In: launch options, a search-space YAML (``./search_spaces/`` of the project folder, then the spaces
the package ships), ``--set`` overrides. Out: a validated ``SearchSpace`` and ``LaunchOptions``.
Imports only building blocks (names, metrics, data, tasks); every later stage may import it.
"""

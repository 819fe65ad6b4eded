"""Pre-flight: every name a job uses, checked against the engine's lists before generating.

``resolver`` (``Preflight``: one job's names, kind by kind) over ``lookup`` (the engine's lists, the registry,
downloads, conversions and rescans), ``matching`` (pure name matching) and ``models_report`` (the output's
``models``). Importing this package imports none of its modules.
"""

"""The serving machinery, the same whatever the model (a swapped model changes ``models/`` only).

Start at ``service/service.py`` and follow a request; docs/architecture.md says
which module does what.
"""

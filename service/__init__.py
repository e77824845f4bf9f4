"""The serving machinery, the same whatever the model (a swapped model changes ``models/`` only).

Start at ``service/service.py`` and follow a request; README.md, "How a request flows", says
which module does what.
"""

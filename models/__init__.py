"""The example model: its contract (``contract.py``), its training (``train.py``) and its data.

What a template user replaces to serve another model; ``service/`` derives everything else.
"""

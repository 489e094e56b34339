"""Losses as pure functions whose docstrings state tensor shapes and cite the paper for each hyperparameter.

Modules: ``contrastive`` (InfoNCE with a queue, NT-Xent, kNN-MoCo), ``regression`` (BYOL/SoCo), ``detcon``.
"""

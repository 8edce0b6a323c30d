"""Task-neutral pieces every layer may use: checkpoints, errors, image reading and preparation, batching and normalisation, plotting and report helpers.

Nothing in here imports anything else of imrec but :mod:`imrec.config`.
"""

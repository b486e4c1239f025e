"""``hardneg bench``: speed and memory of each backend against naive code and the matrix-product floor.

Modules
-------
naive_torch, naive_jax, naive_tf
    The released arithmetic transliterated into each framework (raw ``exp``, masks, full (2B x 2B)
    matrices), compiled the way that framework's users would, plus ``floor``: the three
    (2B x d)(d x 2B)-class matrix products any implementation of the loss needs.
impls
    The registry of benchmarked implementations (backends, naive baselines, floors, third-party NT-Xent).
worker
    One measurement in one process: warm-up, repetitions, peak memory.
harness
    Runs workers in subprocesses, subtracts the small-batch memory, finds the largest batch in a budget.
plots, cli
    PNG figures and the command line.

Nothing here imports a framework at import time; each module imports only the framework it measures.
"""

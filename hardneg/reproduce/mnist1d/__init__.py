"""``hardneg reproduce --task mnist1d``: the same comparison on MNIST-1D, a task with headroom.

MNIST-1D (Greydanus & Kobak 2024, "Scaling down deep learning with MNIST-1D", ICML) is generated
procedurally by the ``mnist1d`` package (no download): 40-sample 1-D signals of ten digit templates,
padded, scaled, translated, sheared and noised. A logistic regression on the raw signal reaches about 32 %
on the held-out split, so learned features have room to differ (the 8x8 digits are saturated at 97 %).

A small 1-D CNN is pre-trained without labels in PyTorch with NT-Xent, the debiased loss, the hard-negative
loss over a sweep of beta and the released code's "down" beta annealing; the frozen features are measured
like the digits task's (linear probe, kNN, alignment, uniformity), against three reference rows: the raw
signal, the encoder at random initialisation and the same encoder trained with labels (the supervised
ceiling). Every method of a seed starts from the same weights and sees the same augmented batches.

Modules
-------
data        the pinned ``make_dataset`` arguments and the 8000 / 2000 split
augment     the two random views of a signal (crop-and-resize with shift, amplitude scaling, noise), NumPy
encoder     the 1-D CNN: NumPy initialisation, NumPy forward (the definition), torch forward
recipe      methods (incl. the annealed row), presets, the batch stream
train_torch the PyTorch training loops (contrastive and supervised)
experiment  every method and seed, the reference rows, the JSON record (rendered by ``..report``)
"""

"""``hardneg reproduce``: NT-Xent vs debiased vs hard-negative contrastive pre-training on bundled data.

A small, honest experiment that runs in minutes on a laptop CPU: a small MLP encoder is pre-trained without
labels on scikit-learn's bundled 8x8 handwritten digits (no download), with two random augmentations per image,
once per method and seed; the frozen features are then evaluated on a held-out split by a linear probe and by
kNN accuracy, and the embeddings by the alignment and uniformity metrics of Wang & Isola (2020).

Every method sees the same initial weights, the same data order and the same augmented views (all generated in
NumPy from the seed), so methods differ only in the loss. The same recipe runs in PyTorch, JAX or TensorFlow,
each calling its backend's ``hcl_loss``; the framework is imported only when its backend is chosen.

Modules
-------
data        the digits and the fixed train / held-out split
augment     the two random views (shift, crop, noise), in NumPy
encoder     the MLP architecture, its NumPy initialisation and NumPy forward pass
recipe      the methods, the fixed hyper-parameters, the batch stream every backend trains on
train_torch, train_jax, train_tf   the training loop in each framework
evaluate    linear probe, kNN, alignment, uniformity
experiment  runs every method and seed and collects the results
progress    the progress bar
report      markdown table, JSON and PNG figures
cli         ``hardneg reproduce [--backend torch|jax|tf] [--quick] [--seeds N] [--out DIR]``
"""

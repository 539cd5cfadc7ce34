"""The `involution compare` app: data, training, report and the command's handlers.

It trains registry models (`involution.models`) on CIFAR-10 with the Keras
example's recipe and writes a self-contained report. Its dependencies
(Matplotlib, Pillow, tqdm) are the `compare` extra; the library never
imports this package.
"""

"""The Triton kernels (PyTorch binding: `involution.backends.torch_triton`)."""

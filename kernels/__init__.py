"""genorigin.kernels: the loss and Adam step, as a NumPy/torch reference and as CUDA kernels."""

from genorigin.kernels.reference import adam_step, loss_and_grad

__all__ = ["adam_step", "loss_and_grad"]

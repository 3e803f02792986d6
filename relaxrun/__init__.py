"""relaxrun: discrete-latent VAEs on MNIST with verified relaxations and gradient estimators."""

__version__ = "0.1.0"
